"""The agent: runs beside the boards and serves paired clients through the relay."""
