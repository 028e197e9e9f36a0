"""docs/testing.md's "Trying it on a virtual board": each `pio-remote test` line of its
block runs against a QEMU board through a real relay and agent, and ends as its comment
says (exit code, and what the report shows)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PY, ROOT, World

from pio_remote.vboard import FIRMWARE_V1, BoardFarm

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm missing"),
]

BIN = Path(sys.executable).parent


def block() -> list[str]:
    doc = (ROOT / "docs" / "testing.md").read_text()
    section = doc.split("### Trying it on a virtual board")[1]
    text = re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1)
    return text.splitlines()


def test_the_bundled_test_images_end_as_the_doc_says(world: World, tmp_path):
    lines = block()
    assert lines[0].startswith("python -m pio_remote.vboard start --dir /tmp/vb &")
    setup = [line for line in lines if re.match(r"^[A-Z]+=", line)]
    runs = [line for line in lines if line.startswith("pio-remote ")]
    names = {re.search(r"\$F/(\S+\.elf)", line).group(1) for line in runs}
    assert names == {"blink-v1.elf", "unity-fail.elf", "unity-hang.elf"}  # each one shown
    vb = tmp_path / "vb"
    lab = world.machine("lab", "alice")
    (lab.home / "agent.toml").write_text(
        f'[[uploader]]\nports = "{vb}/*"\n'
        f'command = "{PY} -m pio_remote.vboard upload $UPLOAD_PORT $SOURCE"\n'
    )
    with BoardFarm(vb, count=1, firmware=FIRMWARE_V1):  # the block's first line
        world.start_agent(lab, "lab-pi", "--port-glob", f"{vb}/*")
        env = {**lab.env, "PATH": f"{BIN}:/usr/bin:/bin"}
        for line in runs:
            command, _, said = line.partition("#")
            m = re.match(r"\s*exit (\d+): (.*)$", said)
            assert m, f"no outcome stated: {line}"
            script = "\n".join([*setup, command.replace("/tmp/vb", str(vb))])
            result = subprocess.run(
                ["bash", "-c", script],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            shown = (result.stdout + result.stderr).replace("\t", " ")
            assert result.returncode == int(m.group(1)), (line, shown)
            for claim in m.group(2).split(", "):
                assert claim in shown, (claim, shown)
