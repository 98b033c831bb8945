"""A language model behind any OpenAI-compatible chat-completions API (OpenAI, vLLM, Ollama)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

import openai

from avatar_server.core.errors import AvatarError, ProviderError, StatusCode
from avatar_server.providers.llm.base import ChatMessage
from avatar_server.providers.retry import sleep_before_retry
from avatar_server.settings import OpenAISettings

log = logging.getLogger(__name__)

_STATUS_CODES: dict[int, tuple[StatusCode, bool]] = {
    400: (StatusCode.INVALID_ARGUMENT, False),
    401: (StatusCode.UNAUTHENTICATED, False),
    403: (StatusCode.PERMISSION_DENIED, False),
    404: (StatusCode.FAILED_PRECONDITION, False),  # a wrong model name or base URL
    408: (StatusCode.DEADLINE_EXCEEDED, True),
    409: (StatusCode.ABORTED, True),
    422: (StatusCode.INVALID_ARGUMENT, False),
    429: (StatusCode.RESOURCE_EXHAUSTED, True),
}

# What the openai library raises, beyond its own errors, on a body it cannot parse.
_MALFORMED = (ValueError, TypeError, KeyError, AttributeError)


class OpenAILanguageModel:
    """Streams chat completions from an OpenAI-compatible server.

    Retriable failures (connection, timeout, 5xx, 429) are retried with
    back-off, but only before the first text arrives: once text is yielded a
    failure ends the reply with a ProviderError and nothing is said twice.
    """

    name = "openai"

    def __init__(self, settings: OpenAISettings) -> None:
        api_key = settings.api_key.get_secret_value() if settings.api_key else None
        try:
            # base_url/api_key None let the library read OPENAI_BASE_URL / OPENAI_API_KEY.
            self._client = openai.AsyncOpenAI(
                api_key=api_key or None,
                base_url=settings.base_url or None,
                timeout=settings.timeout_s,
                max_retries=0,  # retried here, where we know whether text was said
            )
        except openai.OpenAIError:
            raise AvatarError(
                "the openai language model needs an API key: set AVATAR_OPENAI_API_KEY or "
                "OPENAI_API_KEY (any non-empty value for servers without keys, e.g. vLLM, "
                "Ollama)",
                code=StatusCode.FAILED_PRECONDITION,
                stage="llm",
            ) from None
        self._api_key = self._client.api_key
        self._host = urlsplit(str(self._client.base_url)).netloc
        self._model = settings.model
        self._temperature = settings.temperature
        self._max_tokens = settings.max_tokens
        self._first_token_timeout_s = settings.timeout_s
        self._max_retries = max(0, settings.max_retries)

    def stream_reply(self, messages: Sequence[ChatMessage], *, language: str) -> AsyncIterator[str]:
        """Yields the model's reply as text deltas, in order."""
        payload = [{"role": m.role, "content": m.content} for m in messages]
        return self._stream_with_retries(payload)

    async def aclose(self) -> None:
        """Closes the HTTP connection pool."""
        await self._client.close()

    async def _stream_with_retries(self, payload: list[dict[str, str]]) -> AsyncIterator[str]:
        said_something = False
        attempt = 0
        while True:
            try:
                async for text in self._stream_once(payload):
                    said_something = True
                    yield text
                return
            except ProviderError as error:
                if said_something or not error.retriable or attempt >= self._max_retries:
                    raise
                log.warning("llm attempt %d failed (%s); retrying", attempt + 1, error.message)
                await sleep_before_retry(attempt, _retry_after_s(error.__cause__))
                attempt += 1

    async def _stream_once(self, payload: list[dict[str, str]]) -> AsyncIterator[str]:
        """One request: waits (bounded) for the first text, then streams the rest."""
        stream = None
        try:
            try:
                async with asyncio.timeout(self._first_token_timeout_s):
                    stream = await self._client.chat.completions.create(
                        model=self._model,
                        messages=payload,  # type: ignore[arg-type]
                        temperature=self._temperature,
                        max_tokens=self._max_tokens,
                        stream=True,
                    )
                    chunks = aiter(stream)
                    first_text, finished = await self._first_text(chunks)
            except TimeoutError:
                raise ProviderError(
                    f"language model at {self._host} sent no text within "
                    f"{self._first_token_timeout_s:g} s",
                    code=StatusCode.DEADLINE_EXCEEDED,
                    stage="llm",
                ) from None
            if first_text:
                yield first_text
            while not finished:
                chunk = await anext(chunks, None)
                if chunk is None:
                    raise ProviderError(
                        f"language model at {self._host} ended the reply stream early",
                        code=StatusCode.UNAVAILABLE,
                        stage="llm",
                    )
                text, finished = _read_chunk(chunk)
                if text:
                    yield text
        except ProviderError:
            raise
        except openai.OpenAIError as exc:
            raise self._provider_error(exc) from exc
        except _MALFORMED as exc:
            raise ProviderError(
                f"language model at {self._host} sent a malformed reply ({type(exc).__name__})",
                code=StatusCode.INTERNAL,
                stage="llm",
                retriable=False,
            ) from exc
        finally:
            if stream is not None:
                await stream.close()

    async def _first_text(self, chunks: AsyncIterator[object]) -> tuple[str, bool]:
        """Reads until the first non-empty text or the end of the reply."""
        received_any = False
        async for chunk in chunks:
            received_any = True
            text, finished = _read_chunk(chunk)
            if text or finished:
                return text, finished
        if not received_any:
            raise ProviderError(
                f"language model at {self._host} answered with no chat-completion chunks",
                code=StatusCode.INTERNAL,
                stage="llm",
                retriable=False,
            )
        raise ProviderError(
            f"language model at {self._host} ended the reply stream early",
            code=StatusCode.UNAVAILABLE,
            stage="llm",
        )

    def _provider_error(self, exc: openai.OpenAIError) -> ProviderError:
        code, retriable = _classify(exc)
        summary = getattr(exc, "message", None) or str(exc)
        if isinstance(exc, openai.APIConnectionError) and exc.__cause__ is not None:
            summary = f"{summary} ({exc.__cause__})"
        summary = self._redact(summary)
        return ProviderError(
            f"language model at {self._host} failed: {summary}",
            code=code,
            stage="llm",
            retriable=retriable,
        )

    def _redact(self, text: str) -> str:
        """Keeps the API key out of messages, even when a server echoes it back."""
        if self._api_key and len(self._api_key) >= 4:
            text = text.replace(self._api_key, "[redacted]")
        return text[:500]


def _read_chunk(chunk: object) -> tuple[str, bool]:
    """The text of one chat.completion.chunk and whether it finishes the reply."""
    choices = getattr(chunk, "choices", None)
    if not isinstance(choices, list):
        raise TypeError("chunk without a choices list")
    if not choices:  # e.g. a usage-only chunk
        return "", False
    choice = choices[0]
    delta = getattr(choice, "delta", None)
    content = getattr(delta, "content", None) if delta is not None else None
    if content is not None and not isinstance(content, str):
        raise TypeError("chunk content is not text")
    finish_reason = getattr(choice, "finish_reason", None)
    return content or "", finish_reason is not None


def _classify(exc: openai.OpenAIError) -> tuple[StatusCode, bool]:
    """gRPC status code and retriability for an openai library error."""
    if isinstance(exc, openai.APITimeoutError):
        return StatusCode.DEADLINE_EXCEEDED, True
    if isinstance(exc, openai.APIConnectionError):
        return StatusCode.UNAVAILABLE, True
    if isinstance(exc, openai.APIResponseValidationError):
        return StatusCode.INTERNAL, False
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code >= 500:
            return StatusCode.UNAVAILABLE, True
        return _STATUS_CODES.get(exc.status_code, (StatusCode.UNKNOWN, False))
    if isinstance(exc, openai.APIError):  # an error event inside the stream
        return StatusCode.UNAVAILABLE, True
    return StatusCode.INTERNAL, False


def _retry_after_s(cause: BaseException | None) -> float | None:
    """The server's Retry-After (seconds) on a status error, if it sent one."""
    response = getattr(cause, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
