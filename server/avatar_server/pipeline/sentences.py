"""Splits streamed reply text into speakable sentences (English and Korean punctuation)."""

from __future__ import annotations

from collections.abc import AsyncIterator

_ENDINGS = ".!?…。！？\n"
_SOFT_BREAKS = ",;:、，"
_ABBREVIATIONS = ("mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "vs.", "etc.", "e.g.", "i.e.", "no.")


def _find_break(text: str, *, first: bool, min_chars: int, max_chars: int) -> int:
    """Index just past the first complete sentence in `text`, or -1 if none is complete yet.

    A sentence ends at closing punctuation followed by whitespace (so "3.5"
    and "e.g." do not split). The first sentence of a reply may also end at a
    comma once long enough, so speech can start sooner; any sentence longer
    than `max_chars` is cut at its last soft break or space.
    """
    for index, char in enumerate(text):
        if char in _ENDINGS and index + 1 < len(text) and text[index + 1].isspace():
            candidate = text[: index + 1].strip()
            if char == "." and candidate.lower().endswith(_ABBREVIATIONS):
                continue
            if len(candidate) >= 2 or char == "\n":
                return index + 1
        if first and char in _SOFT_BREAKS and index >= min_chars and index + 1 < len(text):
            if text[index + 1].isspace():
                return index + 1
    if len(text) > max_chars:
        cut = max(text.rfind(c, 0, max_chars) for c in _SOFT_BREAKS + " ")
        return cut + 1 if cut > 0 else max_chars
    return -1


async def split_sentences(
    deltas: AsyncIterator[str], *, first_min_chars: int = 24, max_chars: int = 220
) -> AsyncIterator[str]:
    """Yields whole sentences as soon as each is complete; the remainder at the end."""
    buffer = ""
    first = True
    async for delta in deltas:
        buffer += delta
        while True:
            cut = _find_break(buffer, first=first, min_chars=first_min_chars, max_chars=max_chars)
            if cut < 0:
                break
            sentence, buffer = buffer[:cut].strip(), buffer[cut:]
            if sentence:
                first = False
                yield sentence
    if buffer.strip():
        yield buffer.strip()
