"""The one sentence rule (core/sentences.py): English and Korean punctuation, numbers,
abbreviations, ellipses, quotes, long sentences, and streaming in any chunks."""

from __future__ import annotations

import pytest
from avatar_server.core.sentences import (
    SentenceSplitter,
    split_sentences,
    split_to_fit,
    spoken_words,
)
from hypothesis import given, settings
from hypothesis import strategies as st

CASES = [
    ("Dr. Smith arrived here today. He was late.", ["Dr. Smith arrived here today.", "He was late."]),
    ("It costs 3.5 dollars at 5 p.m. in the U.S. today. Then we left.",
     ["It costs 3.5 dollars at 5 p.m. in the U.S. today.", "Then we left."]),
    ("We met at 5 p.m. Then we left.", ["We met at 5 p.m.", "Then we left."]),
    ("Mr. and Mrs. Lee paid $4.50, i.e. half, vs. the usual 9. Fine.",
     ["Mr. and Mrs. Lee paid $4.50, i.e. half, vs. the usual 9.", "Fine."]),
    ("Use e.g. a fork. Or a spoon!", ["Use e.g. a fork.", "Or a spoon!"]),
    ("Read No. 5 first. No. I said no.", ["Read No. 5 first.", "No.", "I said no."]),
    ("Apples, pears, etc. and more. Also etc. Then this.",
     ["Apples, pears, etc. and more.", "Also etc.", "Then this."]),
    ("J. R. R. Tolkien wrote it. The end.", ["J. R. R. Tolkien wrote it.", "The end."]),
    ("Well... we waited. Wait... What? Really?!", ["Well... we waited.", "Wait...", "What?", "Really?!"]),
    ("Hmm… I see. Yes…", ["Hmm…", "I see.", "Yes…"]),
    ('She said "Stop." Then she left.', ['She said "Stop."', "Then she left."]),
    ("He asked (quietly.) Nobody answered.", ["He asked (quietly.)", "Nobody answered."]),
    ("line one\nline two", ["line one", "line two"]),
    ("The value is 3.14159 and 2.5.", ["The value is 3.14159 and 2.5."]),
    ("Visit example.com today. Thanks.", ["Visit example.com today.", "Thanks."]),
    # Korean: with and without spaces, 다. and 요. endings, full-width marks
    ("안녕하세요. 반갑습니다.", ["안녕하세요.", "반갑습니다."]),
    ("안녕하세요.반갑습니다.오늘 날씨가 좋네요.", ["안녕하세요.", "반갑습니다.", "오늘 날씨가 좋네요."]),
    ("정말요？그래요！좋아요。", ["정말요？", "그래요！", "좋아요。"]),
    ("오늘은 3.5도예요. 춥네요!", ["오늘은 3.5도예요.", "춥네요!"]),
    ("음... 글쎄요. 잘 모르겠어요?", ["음...", "글쎄요.", "잘 모르겠어요?"]),
]


@pytest.mark.parametrize(("text", "sentences"), CASES)
def test_whole_text_splits_into_its_sentences(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences


@pytest.mark.parametrize(("text", "sentences"), CASES)
def test_streaming_one_character_at_a_time_gives_the_same_sentences(text: str, sentences: list[str]) -> None:
    splitter = SentenceSplitter()
    got = [sentence for char in text for sentence in splitter.push(char)]
    assert got + splitter.flush() == sentences


def test_a_sentence_is_handed_on_as_soon_as_it_is_decided() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("Dr. Smith is here.") == []  # a mark at the very end: more may follow
    assert splitter.push(" ") == ["Dr. Smith is here."]  # a plain word and a space: it ended
    assert splitter.push("We met at 5 p.m. ") == []  # "p.m." ends one only before a capital
    assert splitter.push("then") == []
    assert splitter.pending == "We met at 5 p.m. then"
    assert splitter.push(" left. Sadly") == ["We met at 5 p.m. then left."]
    assert splitter.flush() == ["Sadly"]


def test_first_sentence_may_end_at_a_comma_once_long_enough() -> None:
    splitter = SentenceSplitter(first_min_chars=24)
    text = "Well, thinking about it for a while, I would say yes, of course. And you?"
    got = [s for word in text.split(" ") for s in splitter.push(word + " ")] + splitter.flush()
    # "Well," is too short; the first comma past 24 characters ends the first sentence; later
    # sentences end only at sentence marks
    assert got == ["Well, thinking about it for a while,", "I would say yes, of course.", "And you?"]


def test_long_sentences_are_cut_at_a_comma_then_a_space() -> None:
    clause = "and then we walked along the river for a while"
    text = ", ".join([clause] * 8) + "."
    pieces = split_sentences(text, max_chars=100)
    assert all(len(p) <= 100 for p in pieces)
    assert all(p.endswith((",", ".")) for p in pieces)  # cut after commas, never inside a word
    assert " ".join(pieces) == text
    spaced = "word " * 100
    pieces = split_sentences(spaced, max_chars=50)
    assert all(len(p) <= 50 and set(p.split(" ")) == {"word"} for p in pieces)  # whole words only
    assert " ".join(pieces) == spaced.strip()
    unspaced = "가" * 120  # Korean written without spaces or marks: a hard cut
    assert split_sentences(unspaced, max_chars=50) == ["가" * 50, "가" * 50, "가" * 20]


def test_split_to_fit_keeps_a_fitting_text_whole_and_packs_sentences() -> None:
    text = "Hello there. How are you? Fine, thanks, and you, my dear old friend from far away?"
    assert split_to_fit(text, 500) == [text]
    pieces = split_to_fit(text, 30)
    assert pieces == ["Hello there. How are you?", "Fine, thanks, and you,", "my dear old friend from far",
                      "away?"]
    assert split_to_fit("   ", 10) == []


def test_split_to_fit_measures_bytes_when_asked() -> None:
    def utf8(text: str) -> int:
        return len(text.encode())

    text = "오늘 날씨가 정말 좋네요. " * 200  # about 6,600 bytes of UTF-8
    pieces = split_to_fit(text, 5000, utf8)
    assert len(pieces) == 2 and all(utf8(p) <= 5000 for p in pieces)
    assert " ".join(pieces) == text.strip()
    unspaced = "가" * 3000  # 9,000 bytes, no place to cut but a hard one
    pieces = split_to_fit(unspaced, 5000, utf8)
    assert [utf8(p) for p in pieces] == [4998, 4002] and "".join(pieces) == unspaced


def test_spoken_words_are_the_words_as_written() -> None:
    words = [w for _, _, w in spoken_words('Dr. Smith said "Stop," at 3.5 p.m. in the U.S. e.g. today... '
                                           "좋네요. (yes) 3.5.")]
    assert words == ["Dr", "Smith", "said", "Stop", "at", "3.5", "p.m.", "in", "the", "U.S.", "e.g.",
                     "today", "좋네요", "yes", "3.5"]
    text = "Hi,  there!"
    assert [(text[a:b], w) for a, b, w in spoken_words(text)] == [("Hi,", "Hi"), ("there!", "there")]


_PIECES = st.sampled_from(["Dr.", "Smith", "3.5", "e.g.", "U.S.", "p.m.", "...", "…", "?", "!", ".", ",",
                           '"', "안녕하세요", "요.", "다", "！", " ", " ", " ", "\n", "No.", "5", "Then",
                           "and", "etc.", "a" * 30])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=40), st.lists(st.integers(1, 7), min_size=1, max_size=20),
       st.integers(20, 80))
def test_any_chunking_of_a_stream_gives_the_sentences_of_the_whole_text(
    pieces: list[str], sizes: list[int], max_chars: int
) -> None:
    text = "".join(pieces)
    expected = split_sentences(text, max_chars=max_chars)
    splitter = SentenceSplitter(max_chars=max_chars)
    got, start, index = [], 0, 0
    while start < len(text):
        size = sizes[index % len(sizes)]
        got += splitter.push(text[start : start + size])
        start, index = start + size, index + 1
    assert got + splitter.flush() == expected
    # nothing is lost or made up: the sentences are the text, minus the spaces between them
    assert "".join(expected).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")
    assert all(s == s.strip() and s for s in expected)
