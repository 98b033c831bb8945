"""Where speakable text breaks into sentences: one rule for the pipeline and every speech provider.

`SentenceSplitter` takes text as it streams in and hands back each sentence once it is complete;
`split_sentences` applies the same rule to a whole text; `split_to_fit` cuts a text into pieces
small enough for one provider call. A sentence ends at . ! ? … (runs such as "?!" or "..." and
closing quotes included) followed by a space or the end of the text, at full-width 。！？, at a
line break, or at a period between Korean words written without a space ("요.반갑"). These do
not end one: decimals ("3.5"), titles ("Dr.", "Mr."), "e.g.", "i.e.", "vs.", initials and
upper-case acronyms ("J.", "U.S."), "No." before a number, and "etc.", "p.m." or an ellipsis
followed by a lower-case word. A sentence longer than `max_chars` is cut at its last comma (or
similar) or space that fits.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_ENDS = ".!?…。！？"
_FULL_WIDTH_ENDS = "。！？"
_CLOSERS = "\"')]}”’»」』》"
_OPENERS = "\"'([{“‘«「『《"
_SOFT_BREAKS = ",;:、，"
_NEVER_END = frozenset(
    ["mr", "mrs", "ms", "dr", "prof", "st", "mt", "rev", "gen", "capt", "lt", "col", "sgt", "hon",
     "fr", "e.g", "i.e", "cf", "vs", "approx", "ca"]
)
_BEFORE_NUMBERS = frozenset(["no", "nos", "p", "pp", "vol", "fig", "art", "ch", "sec"])
_MAYBE_END = frozenset(["etc", "inc", "ltd", "co", "corp", "jr", "sr"])
_DOTTED = re.compile(r"^(?:[A-Za-z]\.)*[A-Za-z]$")  # "U.S", "p.m", "J" (the final "." excluded)
_WORD = re.compile(r"\S+")
_TRAILING = ",;:!?…。！？、，"
_HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff]")

FIRST_MIN_CHARS = 24  # a reply's first sentence may end at a comma this long: speech starts sooner
MAX_CHARS = 220  # longest sentence the pipeline hands to a speech provider


class SentenceSplitter:
    """Streams text in, complete sentences out (see the module docstring for the rule).

    With `first_min_chars`, the first sentence may also end at a comma (or similar) followed by
    a space once it is that long, so that speech can start before the model finishes it.
    """

    def __init__(self, *, first_min_chars: int | None = None, max_chars: int = MAX_CHARS) -> None:
        if max_chars < 1:
            raise ValueError("max_chars must be at least 1")
        self._first_min_chars = first_min_chars
        self._max_chars = max_chars
        self._buffer = ""
        self._first = True

    @property
    def pending(self) -> str:
        """Text received that is not yet part of a complete sentence."""
        return self._buffer

    def push(self, text: str) -> list[str]:
        """Adds text; returns the sentences it completed, in order."""
        self._buffer = (self._buffer + text).lstrip()
        return self._take(final=False)

    def flush(self) -> list[str]:
        """The text is complete: returns its remaining sentences (the last may lack an ending)."""
        sentences = self._take(final=True)
        if rest := self._buffer.strip():
            sentences.append(rest)
        self._buffer = ""
        return sentences

    def clear(self) -> str:
        """Drops the incomplete sentence (an interrupted reply); returns what was dropped."""
        dropped, self._buffer = self._buffer, ""
        return dropped

    def _take(self, *, final: bool) -> list[str]:
        sentences = []
        while self._buffer:
            soft = self._first_min_chars if self._first else None
            cut = _find_break(self._buffer, soft, self._max_chars, final=final)
            if cut is None:
                break
            sentence, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:].lstrip()
            if sentence:
                self._first = False
                sentences.append(sentence)
        return sentences


def split_sentences(text: str, *, max_chars: int = MAX_CHARS) -> list[str]:
    """The sentences of a whole text, as `SentenceSplitter` gives them."""
    splitter = SentenceSplitter(max_chars=max_chars)
    return splitter.push(text) + splitter.flush()


def split_to_fit(text: str, limit: int, measure: Callable[[str], int] = len) -> list[str]:
    """`text` as few pieces as possible, each measuring at most `limit` (characters by default;
    pass e.g. a UTF-8 byte count for a provider with a byte limit): the whole text if it fits,
    else its sentences packed together, a sentence still too long cut at a comma or a space."""
    text = text.strip()
    if not text or measure(text) <= limit:
        return [text] if text else []
    pieces: list[str] = []
    for sentence in split_sentences(text, max_chars=limit):
        while measure(sentence) > limit:
            cut = _cut(sentence, _longest_prefix(sentence, limit, measure))
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if sentence:
            pieces.append(sentence)
    packed: list[str] = []
    for piece in pieces:
        if packed and measure(joined := f"{packed[-1]} {piece}") <= limit:
            packed[-1] = joined
        else:
            packed.append(piece)
    return packed


def spoken_words(text: str) -> list[tuple[int, int, str]]:
    """The words of `text` as captions show them: (start, end, word) per run of non-space
    characters, without surrounding quotes and trailing punctuation ("today." -> "today",
    '"Stop,' -> "Stop"); inner dots stay ("3.5", "U.S.", "e.g.")."""
    words = []
    for match in _WORD.finditer(text):
        word = match.group().lstrip(_OPENERS).rstrip(_CLOSERS + _TRAILING)
        acronym = "." in word[:-1] and _DOTTED.match(word[:-1])
        if not acronym:
            word = word.rstrip(".")
        if word:
            words.append((match.start(), match.end(), word))
    return words


def _find_break(
    text: str, first_min_chars: int | None, max_chars: int, *, final: bool
) -> int | None:
    """Index just past the first sentence of `text`; None when there is none yet (or, unless
    `final`, when the text still to come decides). Depends only on text already there, so any
    chunking of a stream gives the sentences of the whole text."""
    for index in range(min(len(text), max_chars)):
        char = text[index]
        if char in _ENDS or char == "\n":
            if index and text[index - 1] in _ENDS:
                continue  # inside a run such as "?!" or "...": decided at its first mark
            end = _sentence_end(text, index, final=final)
            if end is None:
                return None
            if end > 0 and any(c.isalnum() for c in text[:end]):
                return end
        elif first_min_chars is not None and char in _SOFT_BREAKS and index >= first_min_chars:
            if index + 1 == len(text):
                return None
            if text[index + 1].isspace():
                return index + 1
    return _cut(text, max_chars) if len(text) > max_chars else None


def _sentence_end(text: str, index: int, *, final: bool) -> int | None:
    """For the ending mark at `text[index]`: the index just past the sentence it ends, -1 if it
    ends none, None if that depends on text not yet received."""
    if text[index] == "\n":
        return index + 1
    end = index + 1
    while end < len(text) and text[end] in _ENDS:
        end += 1
    while end < len(text) and text[end] in _CLOSERS:
        end += 1
    if end == len(text):
        return end if final else None
    marks = text[index:end]
    if not text[end].isspace():  # "3.5", "e.g", "example.com"; Korean may omit the space
        ends_korean = index > 0 and _HANGUL.match(text[index - 1]) and _HANGUL.match(text[end])
        return end if marks[0] in _FULL_WIDTH_ENDS or ends_korean else -1
    if any(mark in "!?！？" for mark in marks) or marks[0] in _FULL_WIDTH_ENDS:
        return end
    if marks.startswith(("..", "…")):  # an ellipsis goes on into a lower-case word
        return _end_unless_next(text, end, str.islower, final=final)
    word = _word_before(text, index)
    lowered = word.lower()
    if lowered in _NEVER_END or (_DOTTED.match(word) and (word[0].isupper() or len(word) == 1)):
        return -1
    if lowered in _BEFORE_NUMBERS:
        return _end_unless_next(text, end, str.isdigit, final=final)
    if lowered in _MAYBE_END or _DOTTED.match(word):
        return _end_unless_next(text, end, str.islower, final=final)
    return end


def _end_unless_next(text: str, end: int, goes_on: Callable[[str], bool], *, final: bool) -> int | None:
    """`end`, unless the next visible character `goes_on` (-1); None while it is not there yet."""
    for char in text[end:]:
        if not char.isspace():
            return -1 if goes_on(char) else end
    return end if final else None


def _word_before(text: str, index: int) -> str:
    """The word that the mark at `index` follows, without opening quotes or brackets."""
    start = index
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start:index].lstrip(_OPENERS)


def _cut(text: str, max_chars: int) -> int:
    """Where to cut a sentence longer than `max_chars`: after its last comma (or similar) or
    at its last space within `max_chars`, else at `max_chars` (text without spaces)."""
    window = text[: max_chars + 1]
    soft = [i + 1 for i, c in enumerate(window[:max_chars])
            if c in _SOFT_BREAKS and window[i + 1].isspace()]
    if soft:
        return soft[-1]
    spaces = [i for i, c in enumerate(window) if c.isspace() and i > 0]
    return spaces[-1] if spaces else max(1, max_chars)


def _longest_prefix(text: str, limit: int, measure: Callable[[str], int]) -> int:
    """The most leading characters of `text` that measure at most `limit` (at least 1)."""
    low, high = 1, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if measure(text[:middle]) <= limit:
            low = middle
        else:
            high = middle - 1
    return low
