"""docs/testing.md's CI recipe, run as written: its shell block pairs a CI identity, and
its workflow's `run:` steps restore that identity on a fresh runner and test the lab's
board, against a real relay, agent and QEMU board. Only the secrets, the relay URL and
the invite are filled in, as a user fills them in."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import PY, ROOT, World
from test_remote_test import FAKE_PIO

from pio_remote.vboard import FIRMWARE_V1, BoardFarm

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm missing"),
]

DOC = ROOT / "docs" / "testing.md"
BIN = Path(sys.executable).parent  # where pip put `pio-remote`, as on the runner's PATH


def recipe() -> tuple[str, str]:
    """(the once-only shell block, the workflow) of the doc's CI section."""
    section = DOC.read_text().split("## In CI (GitHub Actions)\n", 1)[1].split("\n## ", 1)[0]
    (once,) = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    (workflow,) = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    return once, workflow


def run_steps(workflow: str) -> list[str]:
    """Each step's `run:` script, single-line or a `|` block, in order."""
    lines = workflow.splitlines()
    steps = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(?:- )?run: (.*)$", line)
        if not m:
            continue
        if m.group(2).strip() != "|":
            steps.append(m.group(2))
            continue
        indent = len(m.group(1))
        body = []
        for following in lines[i + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        steps.append(textwrap.dedent("\n".join(body)))
    return steps


def job_env(workflow: str) -> dict[str, str]:
    block = workflow.split("    env:\n", 1)[1].split("    steps:\n", 1)[0]
    return dict(re.findall(r"^\s+(\w+): (.*)$", block, re.MULTILINE))


def fill(text: str, secrets: dict[str, str]) -> str:
    return re.sub(r"\$\{\{ secrets\.(\w+) \}\}", lambda m: secrets[m.group(1)], text)


def bash(script: str, cwd: Path, env: dict[str, str], stdin: str = "") -> None:
    """As GitHub runs a `run:` step: `bash -e`, from the checkout."""
    result = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{script}\nexit {result.returncode}\n{result.stderr}"


def test_the_ci_recipe_runs_as_written(world: World, tmp_path):
    once, workflow = recipe()
    vb = tmp_path / "vb"
    lab = world.machine("lab", "alice")
    (lab.home / "agent.toml").write_text(
        f'[[uploader]]\nports = "{vb}/board*"\n'
        f'command = "{PY} -m pio_remote.vboard upload $UPLOAD_PORT $SOURCE"\n'
    )
    with BoardFarm(vb, count=1, firmware=FIRMWARE_V1):
        world.start_agent(lab, "lab-pi", "--port-glob", f"{vb}/board*")

        # Once, on a laptop: a CI home paired with the agent, and its secret.
        laptop = tmp_path / "laptop"
        laptop.mkdir()
        invite = lab.cli("agent", "invite", "-n", "lab-pi").stdout.strip()
        assert "wss://relay.example.com:8765" in once and "INVITE" in once
        script = once.replace("wss://relay.example.com:8765", world.relay.url)
        script = re.sub(r"\bINVITE\b", invite, script)
        base = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path / "laptop-home")}
        bash(script, laptop, base, stdin=world.account("alice") + "\n")
        identity = (laptop / "ci-identity.txt").read_text().strip()
        assert world.account("alice") not in identity  # the token is not in the secret

        # The job, on a fresh runner: the checkout is a PlatformIO project with one suite.
        runner = tmp_path / "runner"
        (runner / "test" / "test_math").mkdir(parents=True)
        (runner / "platformio.ini").write_text("[env:dev]\nplatform = ststm32\nboard = x\n")
        bindir = tmp_path / "bin"  # PlatformIO stands in: no PyPI here
        bindir.mkdir()
        fake = FAKE_PIO.format(
            py=PY, log=str(tmp_path / "pio.log"), images={"test_math": str(FIRMWARE_V1)}
        )
        (bindir / "pio").write_text(fake)
        (bindir / "pio").chmod(0o755)
        secrets = {
            "PIO_REMOTE_RELAY": world.relay.url,
            "PIO_REMOTE_AUTH_TOKEN": world.account("alice"),
            "PIO_REMOTE_IDENTITY": identity,
        }
        env = {k: fill(v, secrets) for k, v in job_env(workflow).items()}
        env |= {"PATH": f"{bindir}:{BIN}:/usr/bin:/bin", "HOME": str(tmp_path / "runner-home")}
        steps = run_steps(workflow)
        assert len(steps) == 3, steps
        install, *rest = steps
        # The install step needs PyPI: here pio-remote is installed and `pio` stands in.
        assert install.split() == ["pip", "install", "platformio", "./tools/pio-remote"]
        for step in rest:
            bash(fill(step, secrets), runner, env)

    reports = runner / "reports"
    (junit,) = reports.glob("*-junit.xml")  # the reporter step's report_paths
    assert 'name="dev:test_math"' in junit.read_text()
    (report,) = reports.glob("*.json")
    suites = json.loads(report.read_text())["test_suites"]
    assert [(s["test_name"], s["status"], s["agent"]) for s in suites] == [
        ("test_math", "PASSED", "lab-pi")
    ]
