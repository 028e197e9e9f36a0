"""The package layout is the architecture (docs/architecture.md), and import-linter keeps
it so: the contracts in pyproject.toml hold on the tree, and break on a bad import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
pytestmark = pytest.mark.skipif(
    LINT is None, reason="import-linter is not installed (pip install -e '.[test]')"
)


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the pio_remote under ``root``, with the project's contracts."""
    assert LINT is not None
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [LINT, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_every_layer_contract():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("wire/envelope.py", "import pio_remote.net.link", "wire is pure"),
        ("net/tunnel.py", "import pio_remote.home", "net imports only wire"),
        ("relay/router.py", "import pio_remote.wire.session", "the relay stays blind"),
        ("agent/pending.py", "import pio_remote.client.pins", "client and agent never import"),
        ("home.py", "import pio_remote.net.link", "the shared top-level modules"),
        ("client/reports.py", "import rich.text", "only cli imports click or rich"),
        ("sync.py", "import pio_remote.agent.leases", "the pytest plugin and sync"),
    ],
)
def test_one_bad_import_breaks_its_contract(tmp_path, module, bad_import, contract):
    """The same check on a copy of the package with one import added: it must fail."""
    shutil.copytree(ROOT / "pio_remote", tmp_path / "pio_remote")
    target = tmp_path / "pio_remote" / module
    target.write_text(target.read_text() + f"\n{bad_import}  # noqa\n")
    result = lint(tmp_path)
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if " BROKEN" in line]
    assert len(broken) == 1 and broken[0].startswith(contract), result.stdout
    assert "pio_remote." + module.removesuffix(".py").replace("/", ".") in result.stdout
