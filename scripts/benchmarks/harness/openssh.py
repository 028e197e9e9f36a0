"""The OpenSSH baseline: a private sshd with throwaway keys on a free 127.0.0.1 port."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.rig import LOCALHOST, STARTUP_TIMEOUT_S, Proc, child_env, free_port

# One ssh invocation used as a probe (login and `true`).
SSH_PROBE_TIMEOUT_S = 15.0
SSHD = "/usr/sbin/sshd"


@dataclass
class Sshd:
    """A private sshd on 127.0.0.1; ``cmd()`` builds an ssh command line that logs in to it."""

    port: int
    key: Path
    cipher: str = "?"

    def options(self) -> list[str]:
        """Key and options for ssh or scp (port and host not included: scp spells -P)."""
        return [
            "-i",
            str(self.key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "IdentitiesOnly=yes",
            "-F",
            "/dev/null",  # no user or system ssh_config: the same options everywhere
        ]

    def cmd(self, *remote: str) -> list[str]:
        """``ssh -p PORT <options> 127.0.0.1 REMOTE...``."""
        return ["ssh", "-p", str(self.port), *self.options(), LOCALHOST, *remote]


SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_ed25519
AuthorizedKeysFile {dir}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PidFile none
PrintMotd no
UseDNS no
"""


def sshd_missing() -> str:
    """Why this machine cannot run the OpenSSH baseline, or "" if it can."""
    for tool in (SSHD, "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return ""


@contextmanager
def sshd(attempts: int = 3) -> Iterator[Sshd | None]:
    """A private foreground sshd with throwaway keys; yields None (and says why) if unusable."""
    why = sshd_missing()
    if why:
        print(f"(OpenSSH baseline unavailable: {why})")
        yield None
        return
    tmp = Path(tempfile.mkdtemp(prefix="pio-bench-sshd-"))
    procs: list[Proc] = []
    try:
        server = _start_sshd(tmp, attempts, procs)
        yield server
    finally:
        for proc in procs:
            proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _start_sshd(tmp: Path, attempts: int, procs: list[Proc]) -> Sshd | None:
    """Keys, config and a running sshd in ``tmp``; started processes go into ``procs``."""
    try:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir
        for name in ("host_ed25519", "client_ed25519"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)],
                check=True,
                timeout=SSH_PROBE_TIMEOUT_S,
                capture_output=True,
            )
        shutil.copy(tmp / "client_ed25519.pub", tmp / "authorized_keys")
        for _ in range(attempts):  # a free port may be taken before sshd binds it
            port = free_port()
            config = tmp / "sshd_config"
            config.write_text(SSHD_CONFIG.format(port=port, dir=tmp))
            proc = Proc([SSHD, "-D", "-e", "-f", str(config)], child_env())  # stderr watched
            procs.append(proc)
            server = Sshd(port, tmp / "client_ed25519")
            if _sshd_ready(proc, server):
                return server
            print(f"(sshd on port {port} failed: {proc.stderr_tail(500).strip()})")
            proc.stop()
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"(OpenSSH baseline unavailable: {exc})")
        return None
    print("(OpenSSH baseline unavailable: sshd did not start)")
    return None


def _sshd_ready(proc: Proc, server: Sshd) -> bool:
    """Wait for sshd to listen, then log in once; also learn the cipher ssh picked."""
    assert proc.err is not None
    if not proc.err.wait_for("Server listening", STARTUP_TIMEOUT_S):
        return False  # it exited, or never listened
    probe = subprocess.run(
        ["ssh", "-v", "-p", str(server.port), *server.options(), LOCALHOST, "true"],
        capture_output=True,
        text=True,
        timeout=SSH_PROBE_TIMEOUT_S,
    )
    if probe.returncode != 0:
        return False
    if m := re.search(r"kex: server->client cipher: (\S+)", probe.stderr):
        server.cipher = m.group(1)
    return True
