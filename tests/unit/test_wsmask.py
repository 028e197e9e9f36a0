"""The C masker gives exactly wsproto's bytes, across any split of the payload."""

from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import frame_protocol

from pio_remote import wsmask

# wsproto's own masker, even if pio_remote.link already swapped in the C one.
PYTHON_MASKER = frame_protocol.XorMaskerSimple
while getattr(PYTHON_MASKER, "c_masking", False):
    PYTHON_MASKER = PYTHON_MASKER.__mro__[1]


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=4, max_size=4), st.lists(st.binary(max_size=300), max_size=6))
def test_c_masker_matches_wsproto(key, chunks):
    assert wsmask.install()
    fast = frame_protocol.XorMaskerSimple(bytearray(key))
    slow = PYTHON_MASKER(bytearray(key))
    assert getattr(fast, "c_masking", False)
    for chunk in chunks:
        assert fast.process(bytearray(chunk)) == slow.process(bytearray(chunk))
