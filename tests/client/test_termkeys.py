import pytest
from hypothesis import given
from hypothesis import strategies as st

from pio_remote.client.monitor.terminal import parse_baud
from pio_remote.client.monitor.termkeys import (
    CycleEOL,
    Exit,
    KeyHandler,
    PromptBaud,
    PromptEncoding,
    PromptFilters,
    PromptPort,
    PromptUploadFile,
    Send,
    SendLiteral,
    SetDataBits,
    SetParity,
    SetRtsCts,
    SetStopBits,
    SetXonXoff,
    ShowHelp,
    ShowInfo,
    SuspendPort,
    ToggleBreak,
    ToggleDTR,
    ToggleEcho,
    ToggleRTS,
    UnknownMenuKey,
    banner,
    help_text,
    key_description,
)

MENU = "\x14"  # Ctrl+T
EXIT = "\x03"  # Ctrl+C


def test_plain_text_is_one_send():
    assert KeyHandler().feed("hello") == [Send("hello")]
    assert KeyHandler().feed("") == []


def test_enter_and_backspace_are_normalised():
    h = KeyHandler()
    assert h.feed("a\r") == [Send("a\n")]
    assert h.feed("\x7f") == [Send("\b")]
    raw = KeyHandler(map_cr_to_lf=False, map_del_to_bs=False)
    assert raw.feed("a\r\x7f") == [Send("a\r\x7f")]


def test_exit_char_defaults_to_ctrl_c_and_drops_the_rest():
    h = KeyHandler()
    assert h.feed("ab" + EXIT + "cd") == [Send("ab"), Exit()]


def test_menu_quit_also_drops_the_rest():
    assert KeyHandler().feed("a" + MENU + "qb") == [Send("a"), Exit()]


def test_ctrl_bracket_is_plain_data_with_platformio_defaults():
    # miniterm exits on Ctrl+], PlatformIO on Ctrl+C.
    assert KeyHandler().feed("\x1d") == [Send("\x1d")]


@pytest.mark.parametrize(
    ("key", "action"),
    [
        ("\x08", ShowHelp()),
        ("h", ShowHelp()),
        ("H", ShowHelp()),
        ("?", ShowHelp()),
        ("\x7f", ShowHelp()),  # Backspace on POSIX arrives as DEL
        ("\x09", ShowInfo()),
        ("\x15", PromptUploadFile()),
        ("\x12", ToggleRTS()),
        ("\x04", ToggleDTR()),
        ("\x02", ToggleBreak()),
        ("\x05", ToggleEcho()),
        ("\x06", PromptFilters()),
        ("\x0c", CycleEOL()),
        ("\x01", PromptEncoding()),
        ("p", PromptPort()),
        ("P", PromptPort()),
        ("z", SuspendPort()),
        ("b", PromptBaud()),
        ("B", PromptBaud()),
        ("7", SetDataBits(7)),
        ("8", SetDataBits(8)),
        ("1", SetStopBits(1)),
        ("2", SetStopBits(2)),
        ("3", SetStopBits(1.5)),
        ("n", SetParity("N")),
        ("E", SetParity("E")),
        ("o", SetParity("O")),
        ("s", SetParity("S")),
        ("M", SetParity("M")),
        ("x", SetXonXoff(False)),
        ("X", SetXonXoff(True)),
        ("r", SetRtsCts(False)),
        ("R", SetRtsCts(True)),
        ("q", Exit()),
        ("Q", Exit()),
    ],
)
def test_menu_keys_match_miniterm(key, action):
    h = KeyHandler()
    assert h.feed(MENU + key) == [action]
    assert not h.menu_active


def test_menu_then_menu_or_exit_sends_it_literally():
    h = KeyHandler()
    assert h.feed(MENU + MENU) == [SendLiteral(MENU)]
    assert h.feed(MENU + EXIT) == [SendLiteral(EXIT)]


def test_unknown_menu_key_is_reported_not_sent():
    assert KeyHandler().feed(MENU + "w" + "v") == [UnknownMenuKey("w"), Send("v")]


def test_menu_state_survives_between_feeds():
    h = KeyHandler()
    assert h.feed("a" + MENU) == [Send("a")]
    assert h.menu_active
    assert h.feed("\x04b") == [ToggleDTR(), Send("b")]


def test_sends_around_actions_keep_order():
    h = KeyHandler()
    assert h.feed("ab" + MENU + "\x12cd" + MENU + "b") == [
        Send("ab"),
        ToggleRTS(),
        Send("cd"),
        PromptBaud(),
    ]


def test_custom_chars_as_codes_or_strings():
    h = KeyHandler(exit_char=0x1D, menu_char="\x01")
    assert h.exit_char == "\x1d"
    assert h.feed(EXIT) == [Send(EXIT)]
    assert h.feed("\x01\x05") == [ToggleEcho()]
    assert h.feed("\x1d") == [Exit()]


def test_exit_and_menu_must_differ():
    with pytest.raises(ValueError, match="exit-char"):
        KeyHandler(exit_char=20, menu_char=20)
    with pytest.raises(ValueError):
        KeyHandler(exit_char="ab")


def test_key_description():
    assert key_description("\x03") == "Ctrl+C"
    assert key_description("\x14") == "Ctrl+T"
    assert key_description("q") == "'q'"


def test_help_text_names_configured_keys():
    text = help_text(3, 20)
    assert "Ctrl+C   Exit program (alias Ctrl+T Q)" in text
    assert "Ctrl+T   Menu escape key" in text
    assert "Ctrl+D  DTR" in text and "Ctrl+R  RTS" in text
    assert "change baud rate" in text
    custom = KeyHandler(exit_char=0x1D, menu_char=0x01).help_text()
    assert "Ctrl+]   Exit program (alias Ctrl+A Q)" in custom


def test_help_leaves_out_what_is_not_available_remotely():
    lines = help_text(3, 20).splitlines()
    assert not any(line.lstrip("- ").startswith(("p ", "z ")) for line in lines), lines
    assert "port" not in help_text(3, 20).replace("Port settings", "")


def test_baud_prompt_says_what_is_wrong_without_python_internals():
    assert parse_baud("115200") == 115200
    for typo in ("abc", "115 200", "-9600", "9600.0", ""):
        with pytest.raises(ValueError) as err:
            parse_baud(typo)
        assert "baud rate must be a whole number" in str(err.value)
        assert "int()" not in str(err.value)


def test_banner_matches_platformio():
    assert banner() == "--- Quit: Ctrl+C | Menu: Ctrl+T | Help: Ctrl+T followed by Ctrl+H\n"


def normalise(actions):
    """Merge adjacent Sends so results from different chunkings compare equal."""
    out = []
    for action in actions:
        if isinstance(action, Send) and out and isinstance(out[-1], Send):
            out[-1] = Send(out[-1].text + action.text)
        else:
            out.append(action)
    return out


keys_st = st.text(alphabet=st.sampled_from(["a", "b", "\n", "\r", "\x7f", MENU, "\x04", "q", "z"]))


@given(keys_st, st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_chunking_does_not_change_actions(text, cuts):
    whole = normalise(KeyHandler().feed(text))
    points = sorted({c % (len(text) + 1) for c in cuts})
    h, actions, last = KeyHandler(), [], 0
    for p in [*points, len(text)]:
        actions += h.feed(text[last:p])
        last = p
        if actions and actions[-1] == Exit():
            break
    assert normalise(actions) == whole


@given(st.text(alphabet=st.characters(exclude_characters=MENU + EXIT + "\r\x7f")))
def test_text_without_special_keys_is_sent_unchanged(text):
    assert KeyHandler().feed(text) == ([Send(text)] if text else [])
