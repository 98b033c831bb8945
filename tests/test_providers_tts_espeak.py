"""The offline espeak-ng synthesizer: real audio for English and Korean, with word timings."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from avatar_server.core.errors import NotFound
from avatar_server.providers.tts.base import SpeechAudio
from avatar_server.providers.tts.espeak import EspeakSynthesizer
from avatar_server.settings import EspeakSettings


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
    assert len(pieces) == 2  # one piece per sentence
    for piece in pieces:
        check_word_timings(piece, text)
    assert [w.word for w in pieces[0].words] == ["Hello", "there"]


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
        assert spoken and all(word in text.rstrip(".").split() for word in spoken)
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
