"""Google Cloud Text-to-Speech: streaming for Chirp 3 HD voices, one request for the others."""

from __future__ import annotations

import io
import logging
import wave
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import google.auth
import grpc
import numpy as np
from google.api_core import exceptions as google_errors
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import texttospeech_v1 as tts
from google.cloud.texttospeech_v1.services.text_to_speech.transports import (
    TextToSpeechGrpcAsyncIOTransport,
)

from avatar_server.core.errors import AvatarError, NotFound, ProviderError, StatusCode
from avatar_server.core.sentences import split_to_fit
from avatar_server.providers.language import is_english, is_korean
from avatar_server.providers.retry import sleep_before_retry
from avatar_server.providers.tts.base import SpeechAudio, Voice
from avatar_server.settings import GoogleTtsSettings

log = logging.getLogger(__name__)

_RETRIABLE = (
    google_errors.ServiceUnavailable,
    google_errors.DeadlineExceeded,
    google_errors.ResourceExhausted,
    google_errors.Aborted,
)
MAX_INPUT_BYTES = 5000  # the API's limit on one input text (UTF-8)


def _utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


class GoogleSpeechSynthesizer:
    """Speech from Google Cloud TTS as LINEAR16 at `settings.sample_rate`.

    Credentials come from Application Default Credentials. An endpoint of the
    form http://host:port means a plaintext channel without credentials (local
    test servers only); host:port or https://host:port keeps TLS and ADC.
    """

    name = "google"

    def __init__(self, settings: GoogleTtsSettings) -> None:
        self._voice_en = settings.voice_en
        self._voice_ko = settings.voice_ko
        self._speaking_rate = settings.speaking_rate
        self._sample_rate = settings.sample_rate
        self._timeout_s = settings.timeout_s
        self._max_retries = max(0, settings.max_retries)
        self._endpoint = settings.endpoint or ""
        self._plaintext = self._endpoint.startswith("http://")
        self._credentials = None if self._plaintext else _default_credentials()
        self._client: Any = None
        self._known_voices: list[Voice] | None = None

    def voices(self) -> list[Voice]:
        """All voices once `load_voices` ran (it runs on first synthesis), else the defaults."""
        if self._known_voices is not None:
            return list(self._known_voices)
        return [Voice(self._voice_en, "en-US"), Voice(self._voice_ko, "ko-KR")]

    def default_voice(self, language: str) -> str:
        """The configured Korean or English voice; for other languages a Chirp 3 HD (else
        any) voice of that language, once the voice list is loaded."""
        if is_korean(language):
            return self._voice_ko
        if is_english(language):
            return self._voice_en
        wanted = language.lower()
        candidates = [
            v.name
            for v in self._known_voices or ()
            if v.language.lower() == wanted or v.language.lower().startswith(wanted + "-")
        ]
        if not candidates:
            raise NotFound(f"no Google TTS voice known for language {language!r}", stage="tts")
        return next((name for name in candidates if "Chirp3" in name), candidates[0])

    async def load_voices(self) -> list[Voice]:
        """Asks the service for its voices (once) and remembers them."""
        if self._known_voices is None:
            response = await self._call(
                lambda: self._get_client().list_voices(
                    request=tts.ListVoicesRequest(), retry=None, timeout=self._timeout_s
                )
            )
            self._known_voices = [
                Voice(voice.name, voice.language_codes[0] if voice.language_codes else "")
                for voice in response.voices
            ]
        return list(self._known_voices)

    async def synthesize(
        self, text: str, *, voice: str, language: str
    ) -> AsyncIterator[SpeechAudio]:
        """Yields the speech for `text`: chunk by chunk (Chirp 3 HD) or in one piece, as it is
        given; a text over the API's input limit is sent in pieces (sentences, else cut at a
        comma or space), each a separate input of the one stream or a separate request."""
        known = await self.load_voices()
        match = next((v for v in known if v.name == voice), None)
        if match is None:
            raise NotFound(f"unknown Google TTS voice {voice!r}", stage="tts")
        pieces = split_to_fit(text, MAX_INPUT_BYTES, _utf8_bytes)
        if not pieces:
            return
        if "Chirp3" in voice:
            stream = self._stream_chirp(pieces, match)
        else:
            stream = self._per_piece(pieces, match)
        async for audio in stream:
            yield audio

    async def aclose(self) -> None:
        """Closes the gRPC channel."""
        if self._client is not None:
            await self._client.transport.close()
            self._client = None

    async def _per_piece(self, pieces: list[str], voice: Voice) -> AsyncIterator[SpeechAudio]:
        for piece in pieces:
            request = tts.SynthesizeSpeechRequest(
                input=tts.SynthesisInput(text=piece),
                voice=tts.VoiceSelectionParams(name=voice.name, language_code=voice.language),
                audio_config=tts.AudioConfig(
                    audio_encoding=tts.AudioEncoding.LINEAR16,
                    sample_rate_hertz=self._sample_rate,
                    speaking_rate=self._speaking_rate,
                ),
            )
            response = await self._call(
                lambda request=request: self._get_client().synthesize_speech(
                    request=request, retry=None, timeout=self._timeout_s
                )
            )
            pcm, sample_rate = self._decode_linear16(response.audio_content)
            if pcm.size:
                yield SpeechAudio(pcm, sample_rate)

    async def _stream_chirp(self, pieces: list[str], voice: Voice) -> AsyncIterator[SpeechAudio]:
        """One streaming_synthesize call; retried only until its first audio arrives."""
        said_something = False
        attempt = 0
        while True:
            try:
                async for audio in self._stream_once(pieces, voice):
                    said_something = True
                    yield audio
                return
            except ProviderError as error:
                if said_something or not error.retriable or attempt >= self._max_retries:
                    raise
                log.warning(
                    "tts stream attempt %d failed (%s); retrying", attempt + 1, error.message
                )
                await sleep_before_retry(attempt)
                attempt += 1

    async def _stream_once(self, pieces: list[str], voice: Voice) -> AsyncIterator[SpeechAudio]:

        async def requests() -> AsyncIterator[Any]:
            yield tts.StreamingSynthesizeRequest(
                streaming_config=tts.StreamingSynthesizeConfig(
                    voice=tts.VoiceSelectionParams(name=voice.name, language_code=voice.language),
                    streaming_audio_config=tts.StreamingAudioConfig(
                        audio_encoding=tts.AudioEncoding.PCM,
                        sample_rate_hertz=self._sample_rate,
                        speaking_rate=self._speaking_rate,
                    ),
                )
            )
            for piece in pieces:
                yield tts.StreamingSynthesizeRequest(input=tts.StreamingSynthesisInput(text=piece))

        leftover = b""
        try:
            responses = await self._get_client().streaming_synthesize(
                requests=requests(), retry=None, timeout=self._timeout_s
            )
            async for response in responses:
                if response is None:  # grpc hands None for a message it could not parse
                    raise self._malformed("unreadable response message")
                data = leftover + response.audio_content
                usable = len(data) - len(data) % 2
                leftover = data[usable:]
                if usable:
                    yield SpeechAudio(
                        np.frombuffer(data[:usable], "<i2").astype(np.int16), self._sample_rate
                    )
        except google_errors.GoogleAPICallError as exc:
            raise self._provider_error(exc) from exc
        if leftover:
            raise self._malformed("audio stream ended in the middle of a sample")

    async def _call(self, request: Callable[[], Any]) -> Any:
        """Runs one unary request with retries on retriable failures."""
        attempt = 0
        while True:
            try:
                response = await request()
            except google_errors.GoogleAPICallError as exc:
                error = self._provider_error(exc)
                if not error.retriable or attempt >= self._max_retries:
                    raise error from exc
                log.warning("tts attempt %d failed (%s); retrying", attempt + 1, error.message)
                await sleep_before_retry(attempt)
                attempt += 1
                continue
            if response is None:  # grpc hands None for a message it could not parse
                raise self._malformed("unreadable response message")
            return response

    def _decode_linear16(self, audio: bytes) -> tuple[np.ndarray, int]:
        """LINEAR16 audio as int16 samples: a WAV file (as the service sends it) or raw PCM."""
        if audio[:4] == b"RIFF":
            try:
                with wave.open(io.BytesIO(audio)) as wav:
                    if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
                        raise self._malformed("audio is not 16-bit mono")
                    frames = wav.readframes(wav.getnframes())
                    sample_rate = wav.getframerate()
            except (wave.Error, EOFError) as exc:
                raise self._malformed(f"unreadable WAV audio ({exc})") from exc
        else:
            frames, sample_rate = audio, self._sample_rate
        if len(frames) % 2:
            raise self._malformed("audio ends in the middle of a sample")
        return np.frombuffer(frames, "<i2").astype(np.int16), sample_rate

    def _malformed(self, what: str) -> ProviderError:
        return ProviderError(
            f"Google TTS sent a malformed reply: {what}",
            code=StatusCode.INTERNAL,
            stage="tts",
            retriable=False,
        )

    def _provider_error(self, exc: google_errors.GoogleAPICallError) -> AvatarError:
        grpc_code = exc.grpc_status_code
        code = StatusCode(grpc_code.value[0]) if grpc_code is not None else StatusCode.UNKNOWN
        message = exc.message or type(exc).__name__
        if code == StatusCode.INVALID_ARGUMENT and "voice" in message.lower():
            return NotFound(f"Google TTS: {message}", stage="tts")
        return ProviderError(
            f"Google TTS failed: {message}",
            code=code,
            stage="tts",
            retriable=isinstance(exc, _RETRIABLE),
        )

    def _get_client(self) -> Any:
        """The async client, made on first use inside the running event loop."""
        if self._client is None:
            if self._plaintext:
                channel = grpc.aio.insecure_channel(urlsplit(self._endpoint).netloc)
                transport = TextToSpeechGrpcAsyncIOTransport(channel=channel)
                self._client = tts.TextToSpeechAsyncClient(transport=transport)
            else:
                options = (
                    {"api_endpoint": self._endpoint.removeprefix("https://")}
                    if self._endpoint
                    else None
                )
                self._client = tts.TextToSpeechAsyncClient(
                    credentials=self._credentials, client_options=options
                )
        return self._client


def _default_credentials() -> Any:
    """Application Default Credentials, or a clear error saying how to provide them."""
    try:
        credentials, _ = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
    except DefaultCredentialsError as exc:
        raise AvatarError(
            "Google TTS needs Application Default Credentials: set GOOGLE_APPLICATION_CREDENTIALS "
            "to a service-account key file or run `gcloud auth application-default login` "
            f"({exc})",
            code=StatusCode.FAILED_PRECONDITION,
            stage="tts",
        ) from exc
    return credentials
