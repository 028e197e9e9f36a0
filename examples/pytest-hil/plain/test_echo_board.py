"""A plain suite on the remote_board fixture: pyserial on the board's forwarded port.

pytest examples/pytest-hil/plain --pio-remote-agent lab-pi --pio-remote-port '/dev/ttyACM*'
"""

from pio_remote.pytest_hil.farm import RemoteBoard


def test_the_board_answers(remote_board: RemoteBoard) -> None:
    remote_board.serial.reset_input_buffer()
    remote_board.serial.write(b"are you there?\n")
    assert remote_board.serial.read_until(b"?\n").endswith(b"are you there?\n")


def test_the_board_is_leased_to_this_session(remote_board: RemoteBoard) -> None:
    assert remote_board.lease and remote_board.url.startswith("rfc2217://")
    assert remote_board.agent and remote_board.port
