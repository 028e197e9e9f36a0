"""`pio-remote test` on QEMU boards through a real relay, agents and client processes.

Each agent serves a virtual board farm and flashes it with an [[uploader]]
entry; the firmware images print Unity reports (pio_remote/vboard/firmware).
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema
from conftest import PY, ROOT, Proc
from junitparser import Error, Failure, JUnitXml, Skipped

from pio_remote.vboard import (
    FIRMWARE_UNITY_FAIL,
    FIRMWARE_UNITY_HANG,
    FIRMWARE_V1,
    FIRMWARE_V2,
    BoardFarm,
)

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm missing"),
]

XSD = ROOT / "tests" / "data" / "jenkins-junit-4.xsd"
JSON_TOP = {
    "version",
    "project_dir",
    "duration",
    "testcase_nums",
    "error_nums",
    "failure_nums",
    "skipped_nums",
    "test_suites",
}
JSON_SUITE = {
    "env_name",
    "test_name",
    "test_dir",
    "status",
    "duration",
    "timestamp",
    "testcase_nums",
    "error_nums",
    "failure_nums",
    "skipped_nums",
    "test_cases",
}
JSON_CASE = {"name", "status", "message", "stdout", "duration", "exception", "source"}
# Ours, added to PlatformIO's suite shape: which board ran it.
JSON_SUITE_EXTRA = {"agent", "port", "test_port"}


class Farmhouse:
    """One relay, one desk (the CI runner), agents each with their own board farm."""

    def __init__(self, world, tmp: Path):
        self.world = world
        self.tmp = tmp
        self.desk = world.machine("desk", "alice")
        self.agents: dict[str, object] = {}

    def agent(
        self, name: str, farm_dir: Path | str, extra_toml: str = "", top_toml: str = "", **env: str
    ) -> None:
        """An agent whose [[uploader]] flashes every board of ``farm_dir`` (a glob)."""
        machine = self.world.machine(name, "alice")
        machine.extra.update(env)
        (machine.home / "agent.toml").write_text(
            top_toml + f'[[uploader]]\nports = "{farm_dir}/board*"\n'
            f'command = "{PY} -m pio_remote.vboard upload $UPLOAD_PORT $SOURCE"\n' + extra_toml
        )
        self.agents[name] = self.world.start_agent(
            machine, name, "--port-glob", f"{farm_dir}/board*"
        )
        self.world.pair(machine, self.desk, name)

    def test(self, *args: str, agents: tuple[str, ...] = ("lab",), timeout: float = 120):
        flags = [x for a in agents for x in ("-a", a)]
        return self.desk.cli(*flags, "test", *args, check=False, timeout=timeout)


@pytest.fixture
def house(world, tmp_path):
    return Farmhouse(world, tmp_path)


def junit_checked(path: Path) -> JUnitXml:
    """Validate against Jenkins' schema, then parse with junitparser.

    PlatformIO puts ``file`` and ``line`` on <testcase>, which that schema
    predates: they are checked to be there, then removed before validating.
    """
    tree = ET.parse(path)
    for case in tree.iter("testcase"):
        assert case.get("file") is not None and case.get("line", "").isdigit(), case.attrib
        del case.attrib["file"], case.attrib["line"]
    xmlschema.XMLSchema(str(XSD)).validate(tree)
    return JUnitXml.fromfile(str(path))


def json_checked(path: Path) -> dict:
    data = json.loads(path.read_text())
    assert set(data) == JSON_TOP
    assert data["version"] == "1.0"
    for suite in data["test_suites"]:
        assert set(suite) == JSON_SUITE | JSON_SUITE_EXTRA
        for case in suite["test_cases"]:
            assert set(case) == JSON_CASE
    return data


def test_one_board_passing_suite_with_an_ignored_test(house, tmp_path, serial_backend):
    with BoardFarm(tmp_path / "vb", count=1, firmware=FIRMWARE_V1) as farm:
        house.agent("lab", tmp_path / "vb")
        out = tmp_path / "reports"
        out.mkdir()
        result = house.test(
            "--firmware",
            str(FIRMWARE_V1),
            "--upload-port",
            farm.port(0),
            "--json-output-path",
            str(out),
            "--junit-output-path",
            str(out / "junit.xml"),
            "-v",
        )
    assert result.returncode == 0, result.stderr + result.stdout
    # -v streams the board's raw lines; the plain report follows (no terminal here).
    assert "pio-remote vboard firmware v1" in result.stdout
    assert "firmware:blink-v1\ttest_skip\tSKIPPED\t" in result.stdout
    assert "not on this board" in result.stdout
    assert "\x1b" not in result.stdout.split("3 Tests")[-1]
    assert "1 board(s), 1 suite(s), 3 case(s): 2 passed, 0 failed, 1 skipped, 0 errored" in (
        result.stdout
    )
    [json_file] = out.glob("pio-test-report-*.json")  # directory mode: PlatformIO's name
    assert json_file.name.startswith(f"pio-test-report-{Path.cwd().name}-")
    data = json_checked(json_file)
    assert (data["testcase_nums"], data["failure_nums"], data["skipped_nums"]) == (3, 0, 1)
    [suite] = data["test_suites"]
    assert (suite["env_name"], suite["test_name"], suite["status"]) == (
        "firmware",
        "blink-v1",
        "PASSED",
    )
    assert suite["port"] == farm.port(0) and suite["agent"] == "lab"
    skip = suite["test_cases"][2]
    assert skip["status"] == "SKIPPED" and skip["message"] == "not on this board"
    assert skip["source"] == {"file": "test/test_main.c", "line": 24}
    xml = junit_checked(out / "junit.xml")
    [ts] = list(xml)
    assert ts.name == "firmware:blink-v1" and ts.tests == 3 and ts.skipped == 1
    props = {p.name: p.value for p in ts.properties()}
    assert props == {"agent": "lab", "port": farm.port(0), "test_port": farm.port(0)}
    cases = {c.name: c for c in ts}
    assert isinstance(cases["test_skip"].result[0], Skipped)


def test_failing_test_exits_1_and_reports_carry_the_full_message(house, tmp_path, serial_backend):
    with BoardFarm(tmp_path / "vb", count=1, firmware=FIRMWARE_V1) as farm:
        house.agent("lab", tmp_path / "vb")
        result = house.test(
            "--firmware",
            str(FIRMWARE_UNITY_FAIL),
            "--upload-port",
            farm.port(0),
            "--json-output-path",
            str(tmp_path / "r.json"),
            "--junit-output-path",
            str(tmp_path / "r.xml"),
            "--json-output",
        )
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout) == json.loads((tmp_path / "r.json").read_text())
    data = json_checked(tmp_path / "r.json")
    [suite] = data["test_suites"]
    assert suite["status"] == "FAILED" and suite["failure_nums"] == 1
    failed = [c for c in suite["test_cases"] if c["status"] == "FAILED"]
    assert [(c["name"], c["message"]) for c in failed] == [("test_sub", "Expected 1 Was 2")]
    xml = junit_checked(tmp_path / "r.xml")
    [ts] = list(xml)
    assert ts.failures == 1
    [failure] = [c.result[0] for c in ts if c.result and isinstance(c.result[0], Failure)]
    assert failure.message == "Expected 1 Was 2"


def test_hanging_board_errors_after_timeout_and_others_are_intact(house, tmp_path, serial_backend):
    with BoardFarm(tmp_path / "vb", count=3, firmware=FIRMWARE_V1) as farm:
        house.agent("lab", tmp_path / "vb")
        # board2 is flashed with the hanging image by hand; the run then skips uploading.
        farm.upload(2, FIRMWARE_UNITY_HANG)
        result = house.test(
            "--firmware",
            str(FIRMWARE_V1),
            "--without-uploading",
            "--timeout",
            "3",
            "--junit-output-path",
            str(tmp_path / "r.xml"),
        )
    assert result.returncode == 1, result.stderr
    xml = junit_checked(tmp_path / "r.xml")
    suites = {ts.name: ts for ts in xml}
    assert set(suites) == {f"firmware:blink-v1@lab:{farm.port(i)}" for i in range(3)}
    hung = suites[f"firmware:blink-v1@lab:{farm.port(2)}"]
    assert hung.errors == 1
    [error] = [c.result[0] for c in hung if c.result and isinstance(c.result[0], Error)]
    assert error.message == "no Unity summary within 3 s"
    assert [c.name for c in hung][0] == "test_add"  # what it printed before hanging
    for i in (0, 1):
        ok = suites[f"firmware:blink-v1@lab:{farm.port(i)}"]
        assert (ok.tests, ok.failures, ok.errors, ok.skipped) == (3, 0, 0, 1)
    assert "3 board(s), 3 suite(s)" in result.stdout


def test_usage_errors_exit_2_before_anything_is_flashed(house, tmp_path):
    result = house.desk.cli("test", "-d", str(tmp_path / "nowhere"), check=False)
    assert result.returncode == 2
    assert "no platformio.ini in" in result.stderr
    assert "Traceback" not in result.stderr
    fw = ["--firmware", str(FIRMWARE_V1)]
    for args, message in [
        ([*fw, "--test-port", "/dev/tty*"], "--test-port takes one port"),
        ([*fw, "-r"], "-r/--force-remote builds on the agent"),
        ([*fw, "--timeout", "0"], "Invalid value for '--timeout'"),
        ([*fw, "--jobs", "0"], "Invalid value for '--jobs'"),
    ]:
        bad = house.desk.cli("test", *args, check=False)
        assert (bad.returncode, message in bad.stderr) == (2, True), bad.stderr
    project = make_test_project(tmp_path / "proj")
    house.desk.extra["PATH"] = "/usr/bin:/bin"  # no PlatformIO Core here
    nopio = house.desk.cli("test", "-d", str(project), check=False)
    assert nopio.returncode == 2
    assert "PlatformIO Core is not installed here" in nopio.stderr
    assert "--without-building" in nopio.stderr


def test_eight_boards_across_two_agents_in_parallel(house, tmp_path):
    with (
        BoardFarm(tmp_path / "vb1", count=4, firmware=FIRMWARE_UNITY_HANG) as one,
        BoardFarm(tmp_path / "vb2", count=4, firmware=FIRMWARE_UNITY_HANG) as two,
    ):
        house.agent("lab", tmp_path / "vb1")
        house.agent("lab2", tmp_path / "vb2")
        # No port given: every port an [[uploader]] claims, on both agents.
        result = house.test(
            "--firmware",
            str(FIRMWARE_V1),
            "--json-output-path",
            str(tmp_path / "r.json"),
            "--jobs",
            "6",
            agents=("lab", "lab2"),
            timeout=240,
        )
        ports = {("lab", one.port(i)) for i in range(4)} | {("lab2", two.port(i)) for i in range(4)}
    assert result.returncode == 0, result.stderr + result.stdout
    data = json_checked(tmp_path / "r.json")
    assert {(s["agent"], s["port"]) for s in data["test_suites"]} == ports
    assert {s["status"] for s in data["test_suites"]} == {"PASSED"}
    assert len({s["test_name"] for s in data["test_suites"]}) == 8  # NAME@AGENT:PORT
    assert (data["testcase_nums"], data["skipped_nums"]) == (24, 8)
    assert "8 board(s), 8 suite(s), 24 case(s): 16 passed, 0 failed, 8 skipped" in result.stdout


def test_a_board_whose_port_disappears_mid_run(house, tmp_path, serial_backend):
    with (
        BoardFarm(tmp_path / "vb-a", count=1, firmware=FIRMWARE_V1) as steady,
        BoardFarm(tmp_path / "vb-b", count=1, firmware=FIRMWARE_UNITY_HANG) as doomed,
    ):
        house.agent("lab", tmp_path / "vb-*")
        client = Proc(
            [PY, "-m", "pio_remote", "-a", "lab", "test", "--firmware", str(FIRMWARE_V1)]
            + ["--without-uploading", "--timeout", "60", "-v"]
            + ["--junit-output-path", str(tmp_path / "r.xml")],
            house.desk.env,
        )
        house.world.procs.append(client)
        client.wait_for(rf"\[lab:{doomed.port(0)}\] test/test_main.c:12:test_add:PASS")
        doomed.stop()  # the board's pty goes away while the agent reads it
        assert client.popen.wait(timeout=30) == 1
    suites = {ts.name: ts for ts in junit_checked(tmp_path / "r.xml")}
    lost = suites[f"firmware:blink-v1@lab:{doomed.port(0)}"]
    [error] = [c.result[0] for c in lost if c.result and isinstance(c.result[0], Error)]
    assert error.message.startswith("test port lost:")
    fine = suites[f"firmware:blink-v1@lab:{steady.port(0)}"]
    assert (fine.tests, fine.failures, fine.errors) == (3, 0, 0)


FAKE_PIO = """\
#!{py}
# Stands in for PlatformIO Core: 'pio test ... --without-uploading --without-testing'
# "builds" a suite by copying the vboard image named after it.
import json, os, shutil, sys
args = sys.argv[1:]
with open({log!r}, "a") as fh:
    fh.write(json.dumps(args) + "\\n")
d, env, suite = (args[args.index(f) + 1] for f in ("-d", "-e", "-f"))
build = os.path.join(d, ".pio", "build", env)
os.makedirs(build, exist_ok=True)
images = {images!r}
shutil.copy(images[suite], os.path.join(build, "firmware.elf"))
print("fake pio built", env, suite)
"""


def make_test_project(root: Path, ini_extra: str = "") -> Path:
    for suite in ("test_math", "test_io", "embedded/test_fail"):
        (root / "test" / suite).mkdir(parents=True)
        (root / "test" / suite / "test_main.c").write_text("void setUp(void) {}\n")
    (root / "test" / "helpers").mkdir()  # not test_*: not a suite
    (root / "platformio.ini").write_text(
        "[env:dev]\nplatform = ststm32\nboard = fake\ntest_ignore = test_io\n" + ini_extra
    )
    return root


def test_suites_are_built_locally_one_at_a_time_and_run(house, tmp_path):
    project = make_test_project(tmp_path / "proj")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "pio.log"
    images = {
        "test_math": str(FIRMWARE_V1),
        "test_io": str(FIRMWARE_V1),
        "embedded/test_fail": str(FIRMWARE_UNITY_FAIL),
    }
    (bindir / "pio").write_text(FAKE_PIO.format(py=PY, log=str(log), images=images))
    (bindir / "pio").chmod(0o755)
    house.desk.extra["PATH"] = f"{bindir}:/usr/bin:/bin"

    listed = house.desk.cli("test", "-d", str(project), "--list-tests")
    assert listed.stdout.splitlines() == ["dev:embedded/test_fail", "dev:test_math"]
    with BoardFarm(tmp_path / "vb", count=1, firmware=FIRMWARE_V1) as farm:
        house.agent("lab", tmp_path / "vb")
        result = house.test(
            "-d", str(project), "--upload-port", farm.port(0),
            "--json-output-path", str(tmp_path / "r.json"),
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[c.index("-f") + 1] for c in calls] == ["embedded/test_fail", "test_math"]
    assert all(c[0] == "test" and "--without-uploading" in c for c in calls)
    data = json_checked(tmp_path / "r.json")
    assert [(s["test_name"], s["status"]) for s in data["test_suites"]] == [
        ("embedded/test_fail", "FAILED"),
        ("test_math", "PASSED"),
    ]
    assert data["test_suites"][1]["test_dir"].endswith("test/test_math")
    # -f narrows further; the ini's test_ignore still applies.
    only = house.desk.cli("test", "-d", str(project), "--list-tests", "-f", "test_*")
    assert only.stdout.splitlines() == ["dev:test_math"]


def test_without_building_names_the_missing_image_and_the_command(house, tmp_path):
    project = make_test_project(tmp_path / "proj")
    result = house.desk.cli(
        "test", "-d", str(project), "--without-building", "-f", "test_math", check=False
    )
    assert result.returncode == 2
    assert "firmware.bin is missing: build it with 'pio test -f test_math" in result.stderr
    both = house.desk.cli("test", "-d", str(project), "--without-building", check=False)
    assert both.returncode == 2 and "choose one suite per environment with -f" in both.stderr


def test_run_upload_over_a_port_glob_flashes_every_board_with_a_line_each(house, tmp_path):
    from test_upload import read_banner

    vb = tmp_path / "vb"
    failing = f'[[uploader]]\nports = "{vb}/board2"\ncommand = "sh -c \'echo no; exit 3\'"\n'
    with BoardFarm(vb, count=3, firmware=FIRMWARE_V1) as farm:
        machine = house.world.machine("lab", "alice")
        (machine.home / "agent.toml").write_text(
            failing + f'[[uploader]]\nports = "{vb}/board*"\n'
            f'command = "{PY} -m pio_remote.vboard upload $UPLOAD_PORT $SOURCE"\n'
        )
        house.world.start_agent(machine, "lab", "--port-glob", f"{vb}/board*")
        house.world.pair(machine, house.desk, "lab")
        result = house.desk.cli(
            "-a", "lab", "run", "-t", "upload", "--firmware", str(FIRMWARE_V2),
            "--upload-port", f"{vb}/board*", check=False,
        )  # fmt: skip
        assert result.returncode == 3, result.stderr
        lines = [ln for ln in result.stdout.splitlines() if not ln.startswith("[")]
        assert lines == [
            f"lab:{farm.port(0)}: uploaded",
            f"lab:{farm.port(1)}: uploaded",
            f"lab:{farm.port(2)}: FAILED (exit 3)",
        ]
        assert f"[lab:{farm.port(2)}] no" in result.stdout  # its uploader's own output
        for i in (0, 1):
            assert b"firmware v2" in read_banner(farm.port(i))
        assert b"firmware v1" in read_banner(farm.port(2))


def test_force_remote_builds_each_suite_on_the_agent(house, tmp_path):
    project = make_test_project(tmp_path / "proj")
    bindir = tmp_path / "agent-bin"
    bindir.mkdir()
    log = tmp_path / "agent-pio.log"
    images = {"test_math": str(FIRMWARE_V1), "embedded/test_fail": str(FIRMWARE_UNITY_FAIL)}
    (bindir / "pio").write_text(FAKE_PIO.format(py=PY, log=str(log), images=images))
    (bindir / "pio").chmod(0o755)
    with BoardFarm(tmp_path / "vb", count=2, firmware=FIRMWARE_V1) as farm:
        # The fake pio logs outside its job: unsandboxed (tests/e2e/test_remote_sandbox.py
        # builds with real PlatformIO in the sandbox).
        top = 'allow_remote_build = true\nremote_build_sandbox = "none"\n'
        house.agent("lab", tmp_path / "vb", top_toml=top, PATH=f"{bindir}:/usr/bin:/bin")
        result = house.test(
            "-r", "-d", str(project), "-v", "--json-output-path", str(tmp_path / "r.json")
        )
        ports = {farm.port(0), farm.port(1)}
    assert result.returncode == 1, result.stderr
    assert "project synced (" in result.stderr
    assert "fake pio built dev test_math" in result.stdout  # the agent's build output, with -v
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    built = [c for c in calls if c[0] == "test"]
    assert [c[c.index("-f") + 1] for c in built] == ["embedded/test_fail", "test_math"]  # once each
    assert all(Path(c[c.index("-d") + 1]) != project for c in built)  # the agent's own copy
    data = json_checked(tmp_path / "r.json")
    got = {(s["test_name"].split("@")[0], s["port"], s["status"]) for s in data["test_suites"]}
    assert got == {("embedded/test_fail", p, "FAILED") for p in ports} | {
        ("test_math", p, "PASSED") for p in ports
    }


def test_results_are_read_from_the_uploaders_test_port_or_test_port(
    house, tmp_path, serial_backend
):
    vb = tmp_path / "vb"
    with BoardFarm(vb, count=3, firmware=FIRMWARE_V1) as farm:
        farm.upload(1, FIRMWARE_UNITY_FAIL)  # what "board0's test port" prints
        # board0 is flashed through its own port but reports on board1's.
        house.agent("lab", vb, f'test_port = "{vb}/board1"\ntest_speed = 9600\n')
        fw = ["--firmware", str(FIRMWARE_V1), "--upload-port", farm.port(0)]
        via_uploader = house.test(*fw, "--json-output")
        override = house.test(*fw, "--test-port", farm.port(2), "--json-output")
    assert via_uploader.returncode == 1, via_uploader.stderr
    [suite] = json.loads(via_uploader.stdout)["test_suites"]
    assert (suite["port"], suite["test_port"], suite["status"]) == (
        farm.port(0),
        farm.port(1),
        "FAILED",
    )
    assert override.returncode == 0, override.stderr
    [suite] = json.loads(override.stdout)["test_suites"]
    assert (suite["test_port"], suite["status"]) == (farm.port(2), "PASSED")


async def test_agent_refuses_bad_test_parameters_with_one_line_each(house, tmp_path):
    from pio_remote.client.api import Client, RemoteError

    house.agent("lab", tmp_path / "vb")
    cases = [
        ("test.run", {"port": str(tmp_path / "vb" / "board0"), "timeout": -1}, "bad_params"),
        ("test.run", {"port": "/dev/sda"}, "unknown_port"),
        ("test.run", {"port": 5}, "bad_params"),
        ("test.run", {"port": "/dev/sda", "upload": {"rm": "-rf"}}, "bad_params"),
        ("test.run", {"port": "/dev/sda", "upload": {"verbose": "yes"}}, "bad_params"),
        ("test.run", {"port": "/dev/sda", "upload": {"port": "/dev/sdb"}}, "bad_params"),
        ("test.build", {"project": "0" * 32, "env": "dev", "suite": "../../etc"}, "bad_params"),
        ("test.build", {"project": "0" * 32, "env": "a b", "suite": "test_x"}, "bad_params"),
        ("test.boards", {"upload_port": ["*"]}, "bad_params"),
        ("device.lock", {"port": "/dev/sda"}, "unknown_port"),
        ("device.lock", {"port": str(tmp_path / "vb" / "board0"), "ttl": -5}, "bad_params"),
        ("device.unlock", {"port": "/dev/sda"}, "not_leased"),
        ("agent.update", {"dry_run": "yes"}, "bad_params"),
    ]
    async with (
        Client.connect(
            house.world.relay.url, house.world.tokens["alice"], home_path=house.desk.home
        ) as client,
        client.session("lab") as agent,
    ):
        for method, params, code in cases:
            try:
                await agent.call(method, **params)
            except RemoteError as exc:
                assert exc.code == code, (method, params, exc.code, str(exc))
                assert "\n" not in str(exc) and "Traceback" not in str(exc)
            else:
                raise AssertionError(f"{method} {params} was accepted")
        assert await agent.call("agent.info")  # the session still serves
