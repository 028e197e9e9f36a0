"""`--port-glob` offers only character devices and symlinks to them (issue 8 item 17)."""

from __future__ import annotations

import os

from pio_remote.agent import gate
from pio_remote.agent.config import AgentConfig, Globs
from pio_remote.agent.serial import ports


def test_port_glob_lists_ptys_and_links_to_them_but_not_files_dirs_or_dangling_links(tmp_path):
    master, slave = os.openpty()
    try:
        pty = os.ttyname(slave)
        (tmp_path / "board0").symlink_to(pty)
        (tmp_path / "board0.log").write_text("boot log\n")
        (tmp_path / "dir").mkdir()
        (tmp_path / "gone").symlink_to(tmp_path / "nothing")
        (tmp_path / "null").symlink_to("/dev/null")  # a character device, if an odd port
        listed = {d["port"]: d for d in ports.list_devices([str(tmp_path / "*")])}
        assert str(tmp_path / "board0") in listed
        assert listed[str(tmp_path / "board0")]["description"] == f"pseudo-terminal {pty}"
        for name in ("board0.log", "dir", "gone"):
            assert str(tmp_path / name) not in listed, name
        config = AgentConfig(port_glob=Globs([str(tmp_path / "*")]))
        assert gate.offered_port(config, str(tmp_path / "board0.log")) is None
    finally:
        os.close(master)
        os.close(slave)
