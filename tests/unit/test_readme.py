"""The README's two commands are the ones that CI and users actually run."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_starts_with_two_commands():
    install_and_run, install_and_test = _commands()
    assert install_and_run.endswith("pio-remote quickstart")
    assert install_and_test.endswith("python -m pytest -q -n 3")


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _commands()[1] in ci
