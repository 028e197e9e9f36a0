"""WebSocket masking in C for wsproto (under trio-websocket), when available.

Clients must XOR-mask every frame they send (RFC 6455, section 5.3). wsproto does
it in Python, which costs more per 64 KiB frame than the ChaCha20-Poly1305
encryption of the same bytes (about 270 us against 90-165 us here). The
``websockets`` package ships the same operation in C; when it is importable, this
swaps it into wsproto's masker class. The swap is checked against wsproto's own
masker in tests/unit/test_wsmask.py, and if wsproto's internals ever change shape
it does nothing and the pure-Python masker stays.
"""

from __future__ import annotations

from typing import Any


def install() -> bool:
    """Use C masking in wsproto; returns whether it is in place."""
    try:
        from websockets.speedups import apply_mask
        from wsproto import frame_protocol
    except ImportError:
        return False
    original: Any = frame_protocol.XorMaskerSimple
    if getattr(original, "c_masking", False):
        return True
    if not callable(getattr(original, "process", None)):
        return False

    class CMasker(original):  # type: ignore[misc, valid-type]
        c_masking = True

        def process(self, data: bytearray) -> bytearray:
            if not data:
                return bytearray(data)
            out = bytearray(apply_mask(bytes(data), bytes(self._masking_key)))
            # Continue with the next key byte on the next call, as wsproto does.
            turn = len(data) % 4
            self._masking_key = self._masking_key[turn:] + self._masking_key[:turn]
            return out

    frame_protocol.XorMaskerSimple = CMasker
    return True
