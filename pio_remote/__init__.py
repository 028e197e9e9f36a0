"""pio-remote: end-to-end encrypted remote access to embedded boards.

Keep this module free of imports: the relay imports ``pio_remote.wire.envelope``
and must not pull in Noise or pyserial with it.
"""

__version__ = "0.1.0"
