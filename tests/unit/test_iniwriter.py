"""The platformio.ini the agent writes for PlatformIO: allow-listed options, expanded here."""

from __future__ import annotations

import string
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pio_remote.agent.jobs.iniexpand import Budget, Expander, IniError, parse_sections
from pio_remote.agent.jobs.iniwriter import ALLOWED, ENV_NAME, allowed, write_agent_ini

DIRS = {"packages_dir": "/agent/.platformio/packages", "build_dir": "/job/.pio/build"}


def write(text: str, allow: bool = False, **kw):
    """Every environment, as a flash or build of each would have it (refusals raise)."""
    if "envs" not in kw:
        sections = parse_sections(text)
        kw["envs"] = [s[4:] for s in sections if s.startswith("env:") and ENV_NAME.match(s[4:])]
    return write_agent_ini(text, allow_client_commands=allow, dirs=DIRS, **kw)


def written_options(text: str) -> dict[str, dict[str, str]]:
    return parse_sections(text)


def bomb(levels: int = 4, fanout: int = 50, option: str = "upload_speed") -> str:
    lines = ["[env:x]", "l0 = 1"]
    for i in range(1, levels + 1):
        lines.append(f"l{i} = " + f"${{env:x.l{i - 1}}}" * fanout)
    lines.append(f"{option} = ${{env:x.l{levels}}}")
    return "\n".join(lines) + "\n"


# ---- attacks: each must be left out or refused -------------------------------------------


def test_default_section_options_never_reach_any_section():
    text = (
        "[DEFAULT]\nbuild_dir = /home/pi/.ssh/x\nextra_scripts = pre:evil.py\n"
        "upload_speed = 1\n[platformio]\n[env:x]\nboard = uno\n"
    )
    out = write(text)
    assert written_options(out.text) == {"env:x": {"board": "uno"}}
    assert "build_dir" not in out.text and "extra_scripts" not in out.text
    assert "[DEFAULT]" in out.left_out


@pytest.mark.parametrize(
    "option",
    ["extra_scripts", "extra_script", "build_dir", "extra_configs", "upload_port", "test_port"],
)
def test_scripts_paths_and_ports_are_left_out(option):
    out = write(f"[platformio]\n{option} = /etc/x\n[env:x]\n{option} = pre:evil.py\nboard = a\n")
    assert option not in out.text
    assert f"[env:x] {option}" in out.left_out
    assert written_options(out.text) == {"env:x": {"board": "a"}}


@pytest.mark.parametrize(
    "lines",
    [
        "build_flags = -DX, !id",
        "build_flags = -DX,!id",
        "build_flags =\n    -DX\n    !id",
        "custom = !id\nbuild_flags = ${env:x.custom}",
        "custom = -DX, !id\nbuild_flags = -DA ${env:x.custom}",
        "[common]\nf = !id\n[env:x]\nbuild_src_flags = ${common.f}",
        "lib_ignore = a, !id",
    ],
)
def test_bang_commands_are_refused_even_after_expansion(lines):
    text = "[env:x]\n" + lines + "\n"
    with pytest.raises(IniError, match=r"holds a !command"):
        write(text)
    if "[common]" not in text:
        assert "!id" in write(text, allow=True).text  # the owner allowed client commands


@pytest.mark.parametrize(
    "value",
    [
        "symlink://lib/plat",
        "file:///home/pi/plat",
        "/home/pi/plat",
        "./plat",
        "../plat",
        "~/plat",
        "https://github.com/x/platform-x.git",
        "git@github.com:x/y.git",
        "atmelavr, ststm32",
        "lib/plat",  # a directory of the synced tree
        "lib",
    ],
)
def test_platform_is_a_registry_package_only(value):
    with pytest.raises(IniError, match="option platform"):
        write(f"[env:x]\nplatform = {value}\n", local_paths={"lib", "lib/plat", "lib/plat/p.py"})


@pytest.mark.parametrize(
    "value", ["https://x/y.git", "symlink://../../etc", "/abs/lib", "file://x", "lib/mine"]
)
def test_lib_deps_are_registry_packages_only(value):
    with pytest.raises(IniError, match="option lib_deps"):
        write(f"[env:x]\nlib_deps =\n  ok/lib @ ^1.0\n  {value}\n", local_paths={"lib"})


@pytest.mark.parametrize("char", ["\r", "\x1b", "\x00", "\x85", "\u2028"])
def test_control_characters_are_refused(char):
    with pytest.raises(IniError, match="option upload_flags holds a control character"):
        write(f"[env:x]\nupload_flags = -a{char}[env:y]\n")


@pytest.mark.parametrize(
    "value", ["$ENV", "${ENV}", "${__import__('os').system('id')}", "${os.environ}"]
)
def test_scons_environment_reads_and_expressions_are_refused(value):
    with pytest.raises(IniError, match=r"build_flags"):
        write(f"[env:x]\nbuild_flags = {value}\n")


def test_sysenv_is_never_resolved_on_the_agent():
    with pytest.raises(IniError, match=r"sysenv.HOME.*which the agent does not resolve"):
        write("[env:x]\nupload_speed = ${sysenv.HOME}\n")


@pytest.mark.parametrize("value", ["/etc", "../../x", "~/x", "C:x"])
def test_source_filters_and_scripts_stay_inside_the_project(value):
    with pytest.raises(IniError, match="not a path inside the project"):
        write(f"[env:x]\nbuild_src_filter = +<*> -<{value}>\n")
    with pytest.raises(IniError, match="not a path inside the project"):
        write(f"[env:x]\nextra_scripts = pre:{value}\n", allow=True)


def test_commands_and_uploader_arguments_only_with_the_owners_consent():
    text = (
        "[env:x]\nupload_protocol = custom\nupload_command = flash $SOURCE\n"
        "upload_flags = -U eeprom:r:/home/pi/.ssh/authorized_keys:r\n"
    )
    out = write(text)
    assert "upload_command" not in out.text and "upload_flags" not in out.text
    assert out.client_command("x") == "flash $SOURCE"  # known, so it can be refused
    assert out.values["x"]["upload_flags"].startswith("-U")  # for an owner's $UPLOAD_FLAGS
    owner_allows = write(text, allow=True)
    assert "upload_command = flash $SOURCE" in owner_allows.text


def test_a_whole_project_leaves_out_only_the_environment_it_refuses():
    text = "[env:good]\nboard = a\n[env:bad]\nplatform = symlink://lib/plat\n"
    out = write_agent_ini(text, allow_client_commands=False)
    assert written_options(out.text) == {"env:good": {"board": "a"}}
    assert any(item.startswith("[env:bad] (option platform:") for item in out.left_out)
    with pytest.raises(IniError, match="option platform"):
        write_agent_ini(text, allow_client_commands=False, envs=["bad"])


def test_odd_option_and_section_names_are_left_out():
    text = "[env:x]\nboard_build.a:b = c\n[env:a]b]\nboard = x\n[env:..]\nboard = y\n"
    out = write_agent_ini(text, allow_client_commands=False)
    assert written_options(out.text) == {"env:x": {"board_build.a": "b = c"}}
    with pytest.raises(IniError, match=r"defines no \[env:\.\.\]"):
        write("[env:..]\nboard = y\n", envs=[".."])


# ---- the interpolation budget ------------------------------------------------------------


def test_interpolation_bomb_is_refused_within_milliseconds():
    text = bomb()
    assert len(text) < 2600
    start = time.monotonic()
    with pytest.raises(IniError, match=r"references expand to more than 65536 characters"):
        write(text)
    assert time.monotonic() - start < 0.5


def test_wide_bomb_hits_the_total_budget():
    # Many values each under the per-value limit, together over the total.
    text = "[env:x]\nl0 = " + "A" * 1000 + "\nl1 = " + "${env:x.l0}" * 60 + "\n"
    text += "".join(f"board_build.o{i} = ${{env:x.l1}}\n" for i in range(200))
    with pytest.raises(IniError, match="in all"):
        write(text)


@pytest.mark.parametrize(
    "text",
    [
        "[env:x]\nupload_speed = ${this.upload_speed}\n",
        "[env:x]\na = ${env:x.b}\nb = ${env:x.a}\nupload_speed = ${env:x.a}\n",
    ],
)
def test_reference_loops_hit_the_depth_limit(text):
    with pytest.raises(IniError, match="nested more than 8 deep"):
        write(text)


def test_extends_loop_is_refused():
    with pytest.raises(IniError, match="extends: a loop"):
        write("[env:x]\nextends = env:y\n[env:y]\nextends = env:x\n")


def test_references_expand_like_platformio():
    text = (
        "[platformio]\nbuild_dir = /home/pi/.ssh\n[common]\nspeed = 921600\n"
        "[env]\nframework = arduino\n[env:base]\nboard = esp32dev\n"
        "[env:x]\nextends = env:base, common\nupload_speed = ${common.speed}\n"
        "build_flags = -DENV=${this.__env__} -DB=${this.board} -DO=${env:other.board}\n"
        "  -I${platformio.packages_dir}/x -L${platformio.build_dir}\n"
        "upload_resetmethod = ${env.framework}\n[env:other]\nboard = uno\n"
    )
    out = write(text, envs=["x"])
    assert written_options(out.text) == {
        "env:x": {
            "upload_speed": "921600",
            "build_flags": "-DENV=x -DB=esp32dev -DO=uno\n"
            "-I/agent/.platformio/packages/x -L/job/.pio/build",
            "board": "esp32dev",
            "framework": "arduino",
            "upload_resetmethod": "arduino",
        }
    }
    assert "/home/pi/.ssh" not in out.text


def test_unknown_references_and_directories_are_refused():
    with pytest.raises(IniError, match=r"\$\{common.nope\} names no option"):
        write("[common]\n[env:x]\nupload_speed = ${common.nope}\n")
    with pytest.raises(IniError, match=r"\$\{platformio.secret_dir\} names no option"):
        write("[platformio]\nsecret_dir = /x\n[env:x]\nupload_flags = ${platformio.secret_dir}\n")


def test_scons_variables_and_nodes_pass_through():
    out = write("[env:x]\nupload_flags = -P $UPLOAD_PORT -b ${UPLOAD_SPEED} ${SOURCE.dir} $$x\n")
    assert out.values["x"]["upload_flags"] == "-P $UPLOAD_PORT -b ${UPLOAD_SPEED} ${SOURCE.dir} $$x"


# ---- properties --------------------------------------------------------------------------

_TOKEN = st.text(string.ascii_letters + string.digits + "_-.", min_size=1, max_size=12)
_PACKAGE = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,10}", fullmatch=True)
_VALUES = {
    "platform": st.builds(lambda a, b: f"{a}@{b}", _PACKAGE, _TOKEN),
    "board": _TOKEN,
    "upload_speed": st.integers(1, 10**7).map(str),
    "upload_protocol": _TOKEN,
    "build_flags": st.lists(_TOKEN.map(lambda t: f"-D{t}"), min_size=1, max_size=5).map("\n".join),
    "board_upload.maximum_size": st.integers(0, 10**9).map(str),
    "test_ignore": st.lists(_TOKEN, min_size=1, max_size=3).map(", ".join),
}


@given(st.dictionaries(st.sampled_from(sorted(_VALUES)), st.none(), min_size=1), st.data())
def test_allowed_options_round_trip(options, data):
    values = {k: data.draw(_VALUES[k]) for k in options}
    body = "".join(
        f"{k} =\n" + "".join(f"    {line}\n" for line in v.split("\n")) for k, v in values.items()
    )
    out = write("[env:e]\n" + body + "extra_scripts = x.py\n")
    assert written_options(out.text) == {"env:e": values}
    assert out.values["e"] == values | {"extra_scripts": "x.py"}  # read, not written


_INI_CHARS = st.sampled_from(
    list("[]=:;#$!{}.,/ \n\t\r")
    + ["env:", "DEFAULT", "extends", "${", "\x1b"]
    + ["extra_scripts", "build_flags", "platform", "board", "this.", "x", "a"]
)


@settings(max_examples=300)
@given(st.lists(_INI_CHARS, max_size=80).map("".join))
def test_whatever_the_client_sends_the_file_holds_only_checked_options(text):
    try:
        out = write(text)
    except IniError:
        return
    for section, options in written_options(out.text).items():
        assert section.startswith("env:")
        for option, value in options.items():
            assert allowed(option) is not None and not ALLOWED.get(option, allowed(option)).commands
            assert "${" not in value.replace("${UPLOAD", "").replace("${SOURCE", "")
            assert not any(
                item.strip().startswith("!") for item in value.replace(",", "\n").split("\n")
            )


@given(st.integers(1, 6), st.integers(1, 60), st.integers(1, 200))
def test_expansion_stays_within_its_budget(levels, fanout, seed_len):
    lines = ["[env:x]", "l0 = " + "A" * seed_len]
    for i in range(1, levels + 1):
        lines.append(f"l{i} = " + f"${{env:x.l{i - 1}}}" * fanout)
    sections = parse_sections("\n".join(lines) + "\n")
    budget = Budget(max_value_chars=4096, max_total_chars=16384)
    expander = Expander(sections, budget)
    try:
        value = expander.get("x", f"l{levels}")
    except IniError as exc:
        assert "expand to more than" in str(exc)
        return
    assert value == "A" * seed_len * fanout**levels
    assert len(value) <= 4096 and expander.spent <= 16384


def test_extends_fan_out_is_bounded():
    text = "".join(
        f"[s{i}]\nextends = " + ", ".join(f"s{i + 1}" for _ in range(50)) + "\n" for i in range(6)
    )
    start = time.monotonic()
    with pytest.raises(IniError, match="too many sections to follow"):
        write(text + "[env:x]\nextends = s0\n")
    assert time.monotonic() - start < 2


def test_a_file_larger_than_any_real_project_is_not_read():
    text = "[env:x]\nboard = a\n" + "; padding\n" * 30_000
    with pytest.raises(IniError, match="300018 characters, more than the 262144 the agent reads"):
        write(text)


def test_many_unreferenced_sections_are_left_out_quickly():
    text = "[env:x]\nboard = a\n" + "".join(f"[s{i}]\no = ${{s{i + 1}.o}}\n" for i in range(9000))
    start = time.monotonic()
    out = write(text[:262_000].rsplit("\n[", 1)[0] + "\n")
    assert time.monotonic() - start < 10  # about 1 s here; not quadratic in sections
    assert written_options(out.text) == {"env:x": {"board": "a"}}
