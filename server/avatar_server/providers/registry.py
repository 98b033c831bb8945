"""Chooses the language model and speech provider named in the settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from avatar_server.core.errors import AvatarError, StatusCode
from avatar_server.providers.llm.base import LanguageModel
from avatar_server.providers.tts.base import SpeechSynthesizer
from avatar_server.settings import Settings

Provider = TypeVar("Provider")


def _echo(settings: Settings) -> LanguageModel:
    from avatar_server.providers.llm.echo import EchoLanguageModel

    return EchoLanguageModel(settings.echo)


def _openai(settings: Settings) -> LanguageModel:
    from avatar_server.providers.llm.openai_llm import OpenAILanguageModel

    return OpenAILanguageModel(settings.openai)


def _espeak(settings: Settings) -> SpeechSynthesizer:
    from avatar_server.providers.tts.espeak import EspeakSynthesizer

    return EspeakSynthesizer(settings.espeak)


def _google(settings: Settings) -> SpeechSynthesizer:
    from avatar_server.providers.tts.google_tts import GoogleSpeechSynthesizer

    return GoogleSpeechSynthesizer(settings.google_tts)


# Imports happen on choice, so an offline install never loads the cloud clients.
LANGUAGE_MODELS: dict[str, Callable[[Settings], LanguageModel]] = {"echo": _echo, "openai": _openai}
SPEECH_SYNTHESIZERS: dict[str, Callable[[Settings], SpeechSynthesizer]] = {
    "espeak": _espeak,
    "google": _google,
}


def create_language_model(settings: Settings) -> LanguageModel:
    """The language model named by `settings.pipeline.llm` (AVATAR_LLM)."""
    return _choose(LANGUAGE_MODELS, settings.pipeline.llm, "AVATAR_LLM", "llm")(settings)


def create_speech_synthesizer(settings: Settings) -> SpeechSynthesizer:
    """The speech synthesizer named by `settings.pipeline.tts` (AVATAR_TTS)."""
    return _choose(SPEECH_SYNTHESIZERS, settings.pipeline.tts, "AVATAR_TTS", "tts")(settings)


def _choose(
    choices: dict[str, Callable[[Settings], Provider]], name: str, variable: str, stage: str
) -> Callable[[Settings], Provider]:
    """The factory registered under `name`, or a configuration error listing the choices."""
    factory = choices.get(name.strip().lower())
    if factory is None:
        raise AvatarError(
            f"unknown {variable} {name!r}; choose one of: {', '.join(choices)}",
            code=StatusCode.FAILED_PRECONDITION,
            stage=stage,
        )
    return factory
