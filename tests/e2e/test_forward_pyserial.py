"""pyserial's own tests (test_advanced, test_high_load, test_readline) through `device forward`.

They are taken at test time from pyserial's source distribution (its ``test/``
directory), downloaded once into a cache directory, never copied into this
repository. The port under test is ``rfc2217://`` to a forward of a pure echo pty.

A failure that pyserial's own ``examples/rfc2217_server.py`` shows as well is in
pyserial's client, not in the forward: such tests go into CLIENT_FAILURES with
the reason, and are still run and reported. Today the list is empty. (The
example server itself cannot serve a pty: it sets DTR at each connect and the
pty answers ENOTTY, so every test fails there before it starts; it was compared
on the same tests with the forward's echo device.)
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import PY
from monitorkit import make_lab

PYSERIAL = "pyserial==3.5"
SDIST = "pyserial-3.5.tar.gz"
MODULES = ("test_advanced", "test_high_load", "test_readline")
# test id -> why it fails with pyserial's own server too (none today).
CLIENT_FAILURES: dict[str, str] = {}

# Runs the modules' unittest cases with PORT set to the URL; prints {test id: outcome}.
RUNNER = """
import importlib, json, sys, unittest
test_dir, url, *names = sys.argv[1:]
sys.path.insert(0, test_dir)
outcomes = {}
class Result(unittest.TextTestResult):
    def addSuccess(self, test):
        super().addSuccess(test); outcomes[test.id()] = "ok"
    def addFailure(self, test, err):
        super().addFailure(test, err); outcomes[test.id()] = "failed"
    def addError(self, test, err):
        super().addError(test, err); outcomes[test.id()] = "error"
    def addSkip(self, test, reason):
        super().addSkip(test, reason); outcomes[test.id()] = "skipped"
for name in names:
    module = importlib.import_module(name)
    module.PORT = url
    suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    unittest.TextTestRunner(verbosity=2, resultclass=Result).run(suite)
print(json.dumps(outcomes))
"""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pio-remote-tests"


def pyserial_tests(dest: Path) -> Path:
    """pyserial's test/ directory, from its sdist (downloaded once); skips if unobtainable."""
    cache = cache_dir()
    sdist = cache / SDIST
    if not sdist.exists():
        cache.mkdir(parents=True, exist_ok=True)
        got = subprocess.run(
            [PY, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", PYSERIAL]
            + ["-d", str(cache), "-q"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if got.returncode != 0 or not sdist.exists():
            pytest.skip(f"cannot download {PYSERIAL}'s sdist: {got.stderr.strip()[-300:]}")
    with tarfile.open(sdist) as tar:
        names = tuple(f"test/{name}.py" for name in MODULES)
        wanted = [member for member in tar.getmembers() if member.name.endswith(names)]
        tar.extractall(dest, members=wanted, filter="data")
    return next(dest.glob("pyserial-*/test"))


def test_pyserials_own_tests_pass_through_the_forward(tmp_path):
    test_dir = pyserial_tests(tmp_path / "sdist")
    world, lab = make_lab(tmp_path / "lab", pair=False)
    try:
        link = lab.device("echo", "suite-echo")
        fwd = lab.forward(link)
        run = subprocess.run(
            [PY, "-c", RUNNER, str(test_dir), fwd.url, *MODULES],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert fwd.popen.poll() is None, fwd.lines
    finally:
        lab.stop_devices_and_monitors()
        world.close()
    outcomes = json.loads(run.stdout.splitlines()[-1])
    assert len(outcomes) >= 17, run.stderr[-3000:]  # 10 + 2 + 5 in pyserial 3.5
    failed = {test for test, outcome in outcomes.items() if outcome in ("failed", "error")}
    assert failed == set(CLIENT_FAILURES), run.stderr[-6000:]
    assert not any("Traceback" in line for line in fwd.lines), fwd.lines
