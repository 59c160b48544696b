"""Incremental detokenization (UTF-8 safety) and stop strings."""

from __future__ import annotations

from neocloud.serving.textgen.detok import MAX_HELD_TOKENS, IncrementalDecoder, StopFilter


class ByteTokenizer:
    """Each token is one byte: the worst case for characters split across tokens."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_multibyte_characters_are_never_split() -> None:
    text = "añ🙂日本 ok"
    dec = IncrementalDecoder(ByteTokenizer())
    pieces = [dec.push(b) for b in text.encode()]
    pieces.append(dec.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "🙂" in pieces  # the 4-byte emoji came out whole, in one delta


def test_invalid_bytes_are_released_after_a_bound() -> None:
    dec = IncrementalDecoder(ByteTokenizer())
    out = [dec.push(0xFF) for _ in range(MAX_HELD_TOKENS + 1)]
    assert any(out), "invalid bytes must not be held forever"


def test_stop_filter_cuts_and_holds_prefixes() -> None:
    f = StopFilter(["END", "\n\n"])
    assert f.feed("hello E") == ("hello ", False)  # "E" may start "END": held back
    assert f.feed("N") == ("", False)
    assert f.feed("Dless") == ("", True)
    g = StopFilter(["END"])
    assert g.feed("an E") == ("an ", False)
    assert g.feed("lephant") == ("Elephant", False)
    assert g.flush() == ""
    h = StopFilter(["xyz"])
    assert h.feed("ab x") == ("ab ", False)
    assert h.flush() == "x"
    assert StopFilter([]).feed("anything") == ("anything", False)
