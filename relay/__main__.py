"""``python -m relay``: the relay CLI on its own (``pio-remote relay`` mounts the same group)."""

from relay.cli import relay_group

if __name__ == "__main__":
    relay_group(prog_name="python -m relay")
