"""The pytest plugin for boards on pio-remote agents (docs/pytest.md).

It builds on ``pio_remote.sync`` and never imports click or rich.
"""
