"""``python -m pio_remote.relay``: the relay CLI alone (``pio-remote relay`` mounts it too)."""

from pio_remote.cli.relay_cmds import relay_group

if __name__ == "__main__":
    relay_group(prog_name="python -m pio_remote.relay")
