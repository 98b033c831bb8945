"""The offline espeak-ng synthesizer: real audio for English and Korean, with word timings."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest
from avatar_server.core.errors import NotFound
from avatar_server.core.sentences import split_to_fit
from avatar_server.providers.tts.base import SpeechAudio
from avatar_server.providers.tts.espeak import EspeakSynthesizer
from avatar_server.settings import EspeakSettings
from speech_truth import FRAME_S, onset_after_silence, voiced_windows, word_onsets_ms


async def speak(text: str, voice: str, rate_wpm: int = 165) -> list[SpeechAudio]:
    synthesizer = EspeakSynthesizer(EspeakSettings(rate_wpm=rate_wpm))
    return [audio async for audio in synthesizer.synthesize(text, voice=voice, language="")]


def check_audio(pieces: list[SpeechAudio], words_spoken: int) -> float:
    """Asserts the audio is speech-like; returns its duration in seconds."""
    assert pieces
    for piece in pieces:
        assert piece.sample_rate == 22050
        assert piece.pcm.dtype == np.int16 and piece.pcm.ndim == 1
    pcm = np.concatenate([p.pcm for p in pieces]).astype(np.float64)
    duration = pcm.size / 22050
    rms = np.sqrt(np.mean(pcm**2))
    assert rms > 500, f"audio is (nearly) silent: rms {rms:.0f}"
    # espeak talks at roughly 2-4 words a second at 165 wpm
    assert 0.2 * words_spoken < duration < 1.0 * words_spoken + 1.0
    return duration


def check_word_timings(piece: SpeechAudio, text: str) -> None:
    duration = piece.pcm.size / piece.sample_rate
    assert piece.words, "espeak reported no word events"
    previous_end = 0.0
    for word in piece.words:
        assert word.word in text
        assert 0.0 <= word.start_s < word.end_s <= duration + 1e-6
        assert word.start_s >= previous_end - 1e-6
        previous_end = word.end_s


async def test_english_speech_is_audible_with_monotone_word_timings() -> None:
    text = "Hello there. The weather is lovely today!"
    pieces = await speak(text, "espeak-en-us")
    check_audio(pieces, words_spoken=7)
    assert len(pieces) == 1  # the text it is given, in one call
    check_word_timings(pieces[0], text)
    assert [w.word for w in pieces[0].words] == ["Hello", "there", "The", "weather", "is", "lovely", "today"]


async def test_korean_speech_is_audible_with_korean_words() -> None:
    text = "안녕하세요, 반갑습니다. 오늘 날씨가 좋네요."
    pieces = await speak(text, "espeak-ko")
    check_audio(pieces, words_spoken=5)
    for piece in pieces:
        check_word_timings(piece, text)
    assert pieces[0].words[0].word == "안녕하세요"


async def test_rate_setting_changes_the_pace() -> None:
    text = "This sentence is spoken at two different speeds."
    slow = sum(p.pcm.size for p in await speak(text, "espeak-en-us", rate_wpm=120))
    fast = sum(p.pcm.size for p in await speak(text, "espeak-en-us", rate_wpm=300))
    assert fast < 0.7 * slow


async def test_concurrent_requests_share_one_engine_safely() -> None:
    texts = [("Number one is here.", "espeak-en-us"), ("둘째 문장입니다 정말로.", "espeak-ko")] * 4
    results = await asyncio.gather(*(speak(text, voice) for text, voice in texts))
    for (text, _), pieces in zip(texts, results, strict=True):
        spoken = [w.word for p in pieces for w in p.words]
        assert " ".join(spoken).split() == text.rstrip(".").split()  # every word once, in order
    assert [w.word for p in results[0] for w in p.words] == ["Number", "one", "is", "here"]
    # espeak-ng varies a few samples run to run, but no request may get another's audio
    for parity in (0, 1):
        sizes = [sum(p.pcm.size for p in pieces) for pieces in results[parity::2]]
        assert max(sizes) < 1.05 * min(sizes)


async def test_unknown_voice_is_not_found() -> None:
    with pytest.raises(NotFound) as caught:
        await speak("hi", "espeak-xx")
    assert caught.value.stage == "tts"


async def test_voices_and_defaults() -> None:
    synthesizer = EspeakSynthesizer(EspeakSettings())
    assert {v.name: v.language for v in synthesizer.voices()} == {
        "espeak-en-us": "en-US",
        "espeak-ko": "ko-KR",
    }
    assert await synthesizer.load_voices() == synthesizer.voices()
    assert synthesizer.default_voice("ko-KR") == "espeak-ko"
    assert synthesizer.default_voice("en-GB") == "espeak-en-us"
    assert synthesizer.default_voice("") == "espeak-en-us"
    with pytest.raises(NotFound):
        synthesizer.default_voice("ja-JP")
    assert [a async for a in synthesizer.synthesize("  ", voice="espeak-ko", language="ko")] == []


def check_on_one_timeline(pieces: list[SpeechAudio]) -> None:
    """Word times run forward across all pieces, never overlapping, inside the audio."""
    total_s = sum(p.pcm.size for p in pieces) / 22050
    words = [w for p in pieces for w in p.words]
    for before, after in itertools.pairwise(words):
        assert before.end_s <= after.start_s + 1e-9, (before, after)
    assert all(0 <= w.start_s < w.end_s <= total_s + 1e-6 for w in words)


@pytest.mark.parametrize(
    ("text", "voice", "words"),
    [
        ("Dr. Smith arrived here today.", "en-us", ["Dr", "Smith", "arrived", "here", "today"]),
        ("It costs 3.5 dollars at 5 p.m. in the U.S. today.", "en-us",
         ["It", "costs", "3.5", "dollars", "at", "5", "p.m.", "in", "the", "U.S.", "today"]),
        ("Mr. Lee paid $4.50, i.e. half.", "en-us", ["Mr", "Lee", "paid", "$4.50", "i.e.", "half"]),
        ("오늘 날씨가 좋네요. 산책을 갈까요?", "ko", ["오늘", "날씨가", "좋네요", "산책을", "갈까요"]),
    ],
)
async def test_words_are_captioned_as_written_at_espeaks_own_word_times(
    text: str, voice: str, words: list[str]
) -> None:
    pieces = await speak(text, f"espeak-{voice}")
    assert len(pieces) == 1
    captions = pieces[0].words
    # every word once, in order, as written: no ".5" or "p" fragments; a word espeak-ng gives
    # no event of its own (Korean) shares the caption of the word before it
    assert " ".join(c.word for c in captions).split() == words
    check_on_one_timeline(pieces)
    truth_ms, _, _ = await word_onsets_ms(text, [c.word.split()[0] for c in captions], voice)
    for caption, onset_ms in zip(captions, truth_ms, strict=True):
        assert abs(caption.start_s - onset_ms / 1000) <= FRAME_S, caption


async def test_text_over_the_piece_limit_is_spoken_in_pieces_on_one_timeline() -> None:
    text = ("Dr. Smith arrived here today, and then he walked along the river "
            "to the old station at 5 p.m. with 3.5 kilos of apples.")
    synthesizer = EspeakSynthesizer(EspeakSettings(max_piece_chars=45))
    pieces = [a async for a in synthesizer.synthesize(text, voice="espeak-en-us", language="")]
    piece_texts = split_to_fit(text, 45)
    assert len(pieces) == len(piece_texts) >= 3
    assert " ".join(w.word for p in pieces for w in p.words).split() == [
        w.strip(",.") if w not in ("p.m.",) else w for w in text.split()]
    check_on_one_timeline(pieces)
    offset_s = 0.0
    for piece, piece_text in zip(pieces, piece_texts, strict=True):
        # the truth: espeak-ng's events for that piece alone, moved by the audio before it
        firsts = [w.word.split()[0] for w in piece.words]
        truth_ms, samples, rate = await word_onsets_ms(piece_text, firsts, "en-us")
        for word, onset_ms in zip(piece.words, truth_ms, strict=True):
            assert abs(word.start_s - (offset_s + onset_ms / 1000)) <= FRAME_S, word
        # and the PCM: each piece opens with its first word, right after the pause before it
        audio = np.concatenate([p.pcm for p in pieces])
        onset = onset_after_silence(voiced_windows(audio, 22050), piece.words[0].start_s)
        if offset_s:  # a pause separates the pieces
            assert onset is not None and abs(onset - piece.words[0].start_s) <= FRAME_S
        assert abs(samples - piece.pcm.size) < 0.05 * samples  # the same speech as espeak alone
        offset_s += piece.pcm.size / rate
