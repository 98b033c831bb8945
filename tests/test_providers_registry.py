"""Choosing providers by name from the settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from avatar_server.core.errors import AvatarError, StatusCode
from avatar_server.providers.llm.base import ChatMessage
from avatar_server.providers.llm.echo import EchoLanguageModel
from avatar_server.providers.llm.openai_llm import OpenAILanguageModel
from avatar_server.providers.registry import create_language_model, create_speech_synthesizer
from avatar_server.providers.tts.espeak import EspeakSynthesizer
from avatar_server.providers.tts.google_tts import GoogleSpeechSynthesizer
from avatar_server.settings import load_settings
from provider_servers import FakeGoogleTTSServer, FakeOpenAIServer


@pytest.fixture
def fake_openai_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def fake_google_tts_server() -> Iterator[FakeGoogleTTSServer]:
    with FakeGoogleTTSServer() as server:
        yield server


async def test_defaults_are_the_offline_providers() -> None:
    settings = load_settings(environment=False, echo_token_delay_s=0.0)
    model = create_language_model(settings)
    synthesizer = create_speech_synthesizer(settings)
    assert isinstance(model, EchoLanguageModel) and model.name == "echo"
    assert isinstance(synthesizer, EspeakSynthesizer) and synthesizer.name == "espeak"
    reply = "".join(
        [d async for d in model.stream_reply([ChatMessage("user", "hi")], language="en")]
    )
    audio = [a async for a in synthesizer.synthesize(reply, voice="espeak-en-us", language="en")]
    assert audio and audio[0].pcm.size > 0


async def test_real_providers_by_name(
    fake_openai_server: FakeOpenAIServer, fake_google_tts_server: FakeGoogleTTSServer
) -> None:
    settings = load_settings(
        llm="openai",
        tts="google",
        openai_base_url=fake_openai_server.url,
        openai_api_key="sk-x",
        google_tts_endpoint=fake_google_tts_server.endpoint,
    )
    model = create_language_model(settings)
    synthesizer = create_speech_synthesizer(settings)
    assert isinstance(model, OpenAILanguageModel) and model.name == "openai"
    assert isinstance(synthesizer, GoogleSpeechSynthesizer) and synthesizer.name == "google"
    await model.aclose()
    await synthesizer.aclose()


@pytest.mark.parametrize(
    ("field", "create", "choices"),
    [
        ("llm", create_language_model, "echo, openai"),
        ("tts", create_speech_synthesizer, "espeak, google"),
    ],
)
def test_unknown_name_lists_the_choices(field: str, create, choices: str) -> None:
    with pytest.raises(AvatarError) as caught:
        create(load_settings(**{field: "nonsense"}))
    assert caught.value.code == StatusCode.FAILED_PRECONDITION
    assert caught.value.stage == field
    assert choices in caught.value.message and "nonsense" in caught.value.message
