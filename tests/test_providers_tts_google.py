"""The Google Cloud TTS provider: the real client library against a local fake gRPC servicer."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
from avatar_server.core.errors import AvatarError, NotFound, ProviderError, StatusCode
from avatar_server.providers.tts.base import SpeechAudio
from avatar_server.providers.tts.google_tts import GoogleSpeechSynthesizer
from avatar_server.settings import GoogleTtsSettings, load_settings
from provider_servers import (
    FAKE_GOOGLE_VOICES,
    FakeGoogleTTSServer,
    fake_speech,
    free_port,
)


@pytest.fixture
def fake_google_tts_server() -> Iterator[FakeGoogleTTSServer]:
    with FakeGoogleTTSServer(slow_s=5.0) as server:
        yield server


CHIRP_EN = "en-US-Chirp3-HD-Achernar"
CHIRP_KO = "ko-KR-Chirp3-HD-Achernar"
STANDARD_KO = "ko-KR-Standard-A"


def synthesizer(endpoint: str, **overrides: object) -> GoogleSpeechSynthesizer:
    values: dict[str, object] = dict(
        google_tts_endpoint=endpoint,
        google_tts_timeout_s=0.5,
        google_tts_max_retries=2,
        google_tts_sample_rate=16000,
    )
    values.update(overrides)
    return GoogleSpeechSynthesizer(load_settings(**values).google_tts)


async def speak(tts: GoogleSpeechSynthesizer, text: str, voice: str) -> list[SpeechAudio]:
    try:
        return [audio async for audio in tts.synthesize(text, voice=voice, language="")]
    finally:
        await tts.aclose()


async def speak_until_error(
    tts: GoogleSpeechSynthesizer, text: str, voice: str
) -> tuple[list[SpeechAudio], ProviderError]:
    pieces: list[SpeechAudio] = []
    with pytest.raises(ProviderError) as caught:
        try:
            async for audio in tts.synthesize(text, voice=voice, language=""):
                pieces.append(audio)
        finally:
            await tts.aclose()
    assert caught.value.stage == "tts"
    return pieces, caught.value


def joined(pieces: list[SpeechAudio]) -> np.ndarray:
    return np.concatenate([p.pcm for p in pieces])


async def test_chirp_voice_streams_korean_text_intact(
    fake_google_tts_server: FakeGoogleTTSServer,
) -> None:
    text = "안녕하세요, 반갑습니다! 오늘 어떠세요?"
    pieces = await speak(synthesizer(fake_google_tts_server.endpoint), text, CHIRP_KO)
    assert fake_google_tts_server.texts == [text]  # one streaming call, text unchanged
    assert len(pieces) > 1  # streamed in chunks, not as one blob
    assert all(p.sample_rate == 16000 and p.pcm.dtype == np.int16 for p in pieces)
    np.testing.assert_array_equal(joined(pieces), fake_speech(text, 16000))


async def test_standard_voice_synthesizes_the_text_it_is_given_in_one_request(
    fake_google_tts_server: FakeGoogleTTSServer,
) -> None:
    text = "Hello there. How are you today?"
    pieces = await speak(synthesizer(fake_google_tts_server.endpoint), text, "en-US-Standard-C")
    assert fake_google_tts_server.texts == [text]  # the pipeline already split it; no second rule
    assert len(pieces) == 1 and pieces[0].sample_rate == 16000
    # the WAV header of LINEAR16 is stripped: exactly the samples the server made remain
    np.testing.assert_array_equal(pieces[0].pcm, fake_speech(text, 16000))


@pytest.mark.parametrize(("voice", "calls"), [(CHIRP_KO, 1), (STANDARD_KO, 2)])
async def test_text_over_the_input_limit_is_sent_in_pieces_that_fit(
    fake_google_tts_server: FakeGoogleTTSServer, voice: str, calls: int
) -> None:
    text = "오늘 날씨가 정말 좋네요. " * 200  # about 6,600 bytes: over the API's 5,000
    # the fake makes 60 ms of audio per character: minutes of it, more than 0.5 s to send
    tts = synthesizer(fake_google_tts_server.endpoint, google_tts_timeout_s=20.0)
    pieces = await speak(tts, text, voice)
    sent = fake_google_tts_server.texts
    assert len(sent) == 2 and all(len(piece.encode()) <= 5000 for piece in sent)
    assert " ".join(sent) == text.strip()  # whole sentences, nothing lost
    assert len(fake_google_tts_server.voice_names) == calls  # Chirp: two inputs of one stream
    expected = np.concatenate([fake_speech(piece, 16000) for piece in sent])
    np.testing.assert_array_equal(joined(pieces), expected)


async def test_voice_language_and_rate_reach_the_service(
    fake_google_tts_server: FakeGoogleTTSServer,
) -> None:
    tts = synthesizer(fake_google_tts_server.endpoint, google_tts_speaking_rate=1.25)
    assert tts.default_voice("ko-KR") == CHIRP_KO
    assert tts.default_voice("en-US") == CHIRP_EN
    await speak(tts, "반갑습니다.", STANDARD_KO)
    assert fake_google_tts_server.voice_names == [STANDARD_KO]
    assert {v.name for v in tts.voices()} >= {CHIRP_EN, CHIRP_KO, STANDARD_KO}
    with pytest.raises(NotFound):
        tts.default_voice("ja-JP")  # the fake offers no Japanese voice


async def test_voice_list_is_loaded_once_from_the_service(
    fake_google_tts_server: FakeGoogleTTSServer,
) -> None:
    tts = synthesizer(fake_google_tts_server.endpoint)
    assert {v.name for v in tts.voices()} == {CHIRP_EN, CHIRP_KO}  # the configured defaults
    loaded = await tts.load_voices()
    await tts.aclose()
    assert {(v.name, v.language) for v in loaded} == set(FAKE_GOOGLE_VOICES)
    assert tts.voices() == loaded


async def test_unknown_voice_is_not_found(fake_google_tts_server: FakeGoogleTTSServer) -> None:
    with pytest.raises(NotFound) as caught:
        await speak(synthesizer(fake_google_tts_server.endpoint), "hi", "xx-XX-Nobody")
    assert caught.value.stage == "tts"
    assert fake_google_tts_server.texts == []


@pytest.mark.parametrize("voice", [CHIRP_EN, STANDARD_KO])
async def test_slow_first_audio_is_deadline_exceeded(
    fake_google_tts_server: FakeGoogleTTSServer, voice: str
) -> None:
    started = time.monotonic()
    tts = synthesizer(fake_google_tts_server.endpoint, google_tts_max_retries=0)
    pieces, error = await speak_until_error(tts, "[[fake:slow-first-token]] Hi.", voice)
    assert pieces == []
    assert error.code == StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3.0  # the fake waits 5 s


async def test_stream_error_keeps_audio_so_far_and_does_not_retry(
    fake_google_tts_server: FakeGoogleTTSServer,
) -> None:
    tts = synthesizer(fake_google_tts_server.endpoint)
    text = "[[fake:error-mid-stream]] A long enough sentence to need several chunks."
    pieces, error = await speak_until_error(tts, text, CHIRP_EN)
    assert len(pieces) == 1
    assert error.code == StatusCode.INTERNAL
    assert len(fake_google_tts_server.texts) == 1


@pytest.mark.parametrize("voice", [CHIRP_EN, STANDARD_KO])
async def test_retries_unavailable_before_the_first_audio(
    fake_google_tts_server: FakeGoogleTTSServer, voice: str
) -> None:
    tts = synthesizer(fake_google_tts_server.endpoint, google_tts_max_retries=2)
    pieces = await speak(tts, "[[fake:flaky-unavailable-2]] Third time lucky.", voice)
    assert joined(pieces).size == fake_speech("Third time lucky.", 16000).size
    assert len(fake_google_tts_server.texts) == 3


@pytest.mark.parametrize(
    ("scenario", "code", "attempts"),
    [
        ("status-unavailable", StatusCode.UNAVAILABLE, 2),
        ("status-unauthenticated", StatusCode.UNAUTHENTICATED, 1),
        ("status-permission-denied", StatusCode.PERMISSION_DENIED, 1),
        ("status-resource-exhausted", StatusCode.RESOURCE_EXHAUSTED, 2),
    ],
)
async def test_service_failures_map_to_grpc_codes(
    fake_google_tts_server: FakeGoogleTTSServer, scenario: str, code: StatusCode, attempts: int
) -> None:
    tts = synthesizer(fake_google_tts_server.endpoint, google_tts_max_retries=1)
    _, error = await speak_until_error(tts, f"[[fake:{scenario}]] Hi.", CHIRP_EN)
    assert error.code == code
    assert len(fake_google_tts_server.texts) == attempts


@pytest.mark.parametrize("scenario", ["malformed-message", "malformed-audio"])
@pytest.mark.parametrize("voice", [CHIRP_EN, STANDARD_KO])
async def test_malformed_replies_are_internal(
    fake_google_tts_server: FakeGoogleTTSServer, scenario: str, voice: str
) -> None:
    tts = synthesizer(fake_google_tts_server.endpoint)
    _, error = await speak_until_error(tts, f"[[fake:{scenario}]] Hi.", voice)
    assert error.code == StatusCode.INTERNAL


async def test_service_down_is_unavailable() -> None:
    tts = synthesizer(f"http://127.0.0.1:{free_port()}", google_tts_max_retries=1)
    _, error = await speak_until_error(tts, "Hi.", CHIRP_EN)
    assert error.code == StatusCode.UNAVAILABLE


def test_missing_credentials_is_a_clear_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
    with pytest.raises(AvatarError) as caught:
        GoogleSpeechSynthesizer(GoogleTtsSettings(endpoint=None))
    assert caught.value.code == StatusCode.FAILED_PRECONDITION
    assert caught.value.stage == "tts"
    assert "GOOGLE_APPLICATION_CREDENTIALS" in caught.value.message
