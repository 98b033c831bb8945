"""The language models: the offline echo model, and the OpenAI client against a local fake."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from avatar_server.core.errors import AvatarError, ProviderError, StatusCode
from avatar_server.providers.llm.base import ChatMessage
from avatar_server.providers.llm.echo import EchoLanguageModel, compose_echo_reply
from avatar_server.providers.llm.openai_llm import OpenAILanguageModel
from avatar_server.settings import EchoSettings, OpenAISettings, load_settings
from provider_servers import FakeOpenAIServer, free_port


@pytest.fixture
def fake_openai_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(slow_s=5.0) as server:
        yield server


API_KEY = "sk-test-4f9a8b7c6d5e"


async def collect(model, text: str, language: str = "en-US") -> list[str]:
    return [
        delta async for delta in model.stream_reply([ChatMessage("user", text)], language=language)
    ]


async def collect_until_error(model, text: str) -> tuple[list[str], ProviderError]:
    said: list[str] = []
    with pytest.raises(ProviderError) as caught:
        async for delta in model.stream_reply([ChatMessage("user", text)], language="en-US"):
            said.append(delta)
    return said, caught.value


def openai_model(url: str, **overrides: object) -> OpenAILanguageModel:
    values: dict[str, object] = dict(
        openai_base_url=url,
        openai_api_key=API_KEY,
        openai_model="fake-model",
        openai_timeout_s=0.5,
        openai_max_retries=2,
    )
    values.update(overrides)
    return OpenAILanguageModel(load_settings(**values).openai)


# --------------------------------------------------------------------------- echo (offline)


async def test_echo_repeats_english_word_by_word() -> None:
    model = EchoLanguageModel(EchoSettings(token_delay_s=0.0))
    deltas = await collect(model, "  What is   the weather like?")
    assert "".join(deltas) == "You said: What is the weather like?"
    assert deltas == ["You ", "said: ", "What ", "is ", "the ", "weather ", "like?"]


async def test_echo_answers_korean_in_korean() -> None:
    model = EchoLanguageModel(EchoSettings(token_delay_s=0.0))
    reply = "".join(await collect(model, "오늘 날씨 어때요?", language="en-US"))
    assert reply.endswith("오늘 날씨 어때요?")
    assert reply.startswith("말씀하신")


async def test_echo_uses_last_user_message_and_is_deterministic() -> None:
    conversation = [
        ChatMessage("system", "be brief"),
        ChatMessage("user", "first"),
        ChatMessage("assistant", "You said: first"),
        ChatMessage("user", "second"),
    ]
    assert compose_echo_reply(conversation, "en-US") == "You said: second"
    assert compose_echo_reply(conversation, "en-US") == compose_echo_reply(conversation, "en-US")
    assert "안녕하세요" in compose_echo_reply([ChatMessage("user", " ")], "ko-KR")


async def test_echo_spaces_tokens_by_the_configured_delay() -> None:
    model = EchoLanguageModel(EchoSettings(token_delay_s=0.05))
    started = time.monotonic()
    deltas = await collect(model, "one two three")
    assert len(deltas) == 5
    assert time.monotonic() - started >= 4 * 0.05 * 0.9


# --------------------------------------------------------------------------- OpenAI-compatible


async def test_openai_streams_english_and_korean_intact(
    fake_openai_server: FakeOpenAIServer,
) -> None:
    model = openai_model(fake_openai_server.url, openai_temperature=0.3, openai_max_tokens=77)
    try:
        english = await collect(model, "Hello there, how are you?")
        korean = await collect(model, "안녕하세요, 반갑습니다!")
    finally:
        await model.aclose()
    assert len(english) > 3
    assert "".join(english) == "Echo: Hello there, how are you?"
    assert "".join(korean) == "Echo: 안녕하세요, 반갑습니다!"
    request = fake_openai_server.requests[0]
    assert request["model"] == "fake-model"
    assert request["stream"] is True
    assert request["temperature"] == 0.3
    assert request["max_tokens"] == 77
    assert request["authorization"] == f"Bearer {API_KEY}"
    assert fake_openai_server.requests[1]["messages"][-1]["content"] == "안녕하세요, 반갑습니다!"


async def test_openai_slow_first_token_is_deadline_exceeded(
    fake_openai_server: FakeOpenAIServer,
) -> None:
    model = openai_model(fake_openai_server.url, openai_max_retries=0)
    started = time.monotonic()
    said, error = await collect_until_error(model, "[[fake:slow-first-token]] hi")
    await model.aclose()
    assert said == []
    assert error.code == StatusCode.DEADLINE_EXCEEDED and error.stage == "llm"
    assert time.monotonic() - started < 3.0  # the fake waits 5 s; we gave up long before


@pytest.mark.parametrize("scenario", ["error-mid-stream", "drop-mid-stream"])
async def test_openai_failure_mid_stream_keeps_text_and_does_not_retry(
    fake_openai_server: FakeOpenAIServer, scenario: str
) -> None:
    model = openai_model(fake_openai_server.url)
    said, error = await collect_until_error(model, f"[[fake:{scenario}]] one two three four")
    await model.aclose()
    assert "".join(said) == "Echo: one "
    assert error.code == StatusCode.UNAVAILABLE and error.stage == "llm"
    assert len(fake_openai_server.requests) == 1  # nothing repeated


async def test_openai_stall_mid_stream_is_deadline_exceeded(
    fake_openai_server: FakeOpenAIServer,
) -> None:
    model = openai_model(fake_openai_server.url)
    started = time.monotonic()
    said, error = await collect_until_error(model, "[[fake:stall-mid-stream]] one two three")
    await model.aclose()
    assert "".join(said) == "Echo: one "
    assert error.code == StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3.0  # the fake stalls 5 s


async def test_openai_provider_down_is_unavailable() -> None:
    model = openai_model(f"http://127.0.0.1:{free_port()}/v1", openai_max_retries=1)
    said, error = await collect_until_error(model, "hello")
    await model.aclose()
    assert said == []
    assert error.code == StatusCode.UNAVAILABLE and error.stage == "llm"


@pytest.mark.parametrize("scenario", ["malformed-json", "malformed-chunk"])
async def test_openai_malformed_reply_is_internal(
    fake_openai_server: FakeOpenAIServer, scenario: str
) -> None:
    model = openai_model(fake_openai_server.url)
    said, error = await collect_until_error(model, f"[[fake:{scenario}]] hello")
    await model.aclose()
    assert said == []
    assert error.code == StatusCode.INTERNAL
    assert len(fake_openai_server.requests) == 1  # not worth retrying


async def test_openai_retries_503_before_the_first_token(
    fake_openai_server: FakeOpenAIServer,
) -> None:
    model = openai_model(fake_openai_server.url, openai_max_retries=2)
    deltas = await collect(model, "[[fake:flaky-503-2]] back again")
    await model.aclose()
    assert "".join(deltas) == "Echo: back again"
    assert len(fake_openai_server.requests) == 3


async def test_openai_gives_up_after_max_retries(fake_openai_server: FakeOpenAIServer) -> None:
    model = openai_model(fake_openai_server.url, openai_max_retries=1)
    _, error = await collect_until_error(model, "[[fake:status-503]] hi")
    await model.aclose()
    assert error.code == StatusCode.UNAVAILABLE
    assert len(fake_openai_server.requests) == 2


@pytest.mark.parametrize(
    ("status", "code", "attempts"),
    [
        (401, StatusCode.UNAUTHENTICATED, 1),
        (403, StatusCode.PERMISSION_DENIED, 1),
        (429, StatusCode.RESOURCE_EXHAUSTED, 3),
        (500, StatusCode.UNAVAILABLE, 3),
    ],
)
async def test_openai_status_codes_map_to_grpc_codes(
    fake_openai_server: FakeOpenAIServer, status: int, code: StatusCode, attempts: int
) -> None:
    model = openai_model(fake_openai_server.url)
    _, error = await collect_until_error(model, f"[[fake:status-{status}]] hi")
    await model.aclose()
    assert error.code == code
    assert len(fake_openai_server.requests) == attempts


async def test_openai_errors_never_show_the_api_key(fake_openai_server: FakeOpenAIServer) -> None:
    model = openai_model(fake_openai_server.url)
    _, error = await collect_until_error(model, "[[fake:echo-auth]] hi")
    await model.aclose()
    assert fake_openai_server.requests[0]["authorization"] == f"Bearer {API_KEY}"
    assert error.code == StatusCode.UNAUTHENTICATED
    assert API_KEY not in str(error) and API_KEY not in error.message
    assert "Bearer" in error.message  # the server's text is kept, the key is not


async def test_openai_reads_the_library_environment_variables(
    fake_openai_server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-environment")
    model = OpenAILanguageModel(load_settings(openai_timeout_s=2.0).openai)
    deltas = await collect(model, "from env")
    await model.aclose()
    assert "".join(deltas) == "Echo: from env"
    assert fake_openai_server.requests[0]["authorization"] == "Bearer sk-from-environment"


def test_openai_without_any_key_is_a_clear_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_ADMIN_KEY", raising=False)
    monkeypatch.delenv("AVATAR_OPENAI_API_KEY", raising=False)
    with pytest.raises(AvatarError) as caught:
        OpenAILanguageModel(OpenAISettings())
    assert caught.value.code == StatusCode.FAILED_PRECONDITION
    assert caught.value.stage == "llm"
    assert "OPENAI_API_KEY" in caught.value.message
    assert "AVATAR_OPENAI_API_KEY" in caught.value.message
