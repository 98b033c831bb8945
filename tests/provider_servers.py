"""Local FAKE stand-ins of the real provider protocols for tests: OpenAI chat SSE, Google TTS gRPC.

They speak the real wire protocols (so the real `openai` and
`google-cloud-texttospeech` clients talk to them unchanged) but contain no
model: replies are made up from the request. Each runs in its own threads on
a free 127.0.0.1 port, independent of any test's event loop.

A request picks a scenario with a keyword in its text, `[[fake:<scenario>]]`
(the last user message for the LLM, the input text for TTS); without one the
server's `scenario` attribute applies (default "ok"). Scenarios:

  ok                  a normal reply
  slow-first-token    headers, then no text for `slow_s` seconds
  error-mid-stream    some text, then an error (an SSE error event / gRPC INTERNAL on
                      StreamingSynthesize, i.e. Chirp 3 HD voices)
  drop-mid-stream     some text, then the connection is cut (LLM only)
  stall-mid-stream    some text, then nothing for `slow_s` seconds (LLM only)
  malformed-json      an SSE data line that is not JSON (LLM)
  malformed-chunk     JSON that is not a chat.completion.chunk (LLM)
  malformed-message   bytes that are not a response message (TTS)
  malformed-audio     an odd number of PCM bytes (TTS)
  status-<code>       fails every time with HTTP status <code> (LLM) or gRPC code name (TTS)
  flaky-<code>-<n>    fails the first <n> requests of this scenario, then answers normally
  echo-auth           (LLM) a 401 whose body repeats the Authorization header

Use them as context managers or through the pytest fixtures at the bottom
(`fake_openai_server`, `fake_google_tts_server`; `pytest_plugins = ["provider_servers"]`
in tests/conftest.py makes them available everywhere). `python tests/provider_servers.py`
runs both until interrupted.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import threading
import time
import wave
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import numpy as np
import pytest

_SCENARIO = re.compile(r"\[\[fake:([a-z0-9-]+)\]\]", re.IGNORECASE)


def pick_scenario(text: str, default: str) -> tuple[str, str]:
    """The scenario named in `text` (else `default`) and the text without the keyword."""
    match = _SCENARIO.search(text)
    if not match:
        return default, text
    return match.group(1).lower(), " ".join(_SCENARIO.sub(" ", text).split())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _FlakyCounter:
    """Counts requests per flaky scenario, so `flaky-503-2` fails exactly twice."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: Counter[str] = Counter()

    def should_fail(self, scenario: str) -> tuple[bool, str]:
        """(fail now?, the status to fail with) for a `flaky-<code>-<n>` scenario."""
        _, status, times = scenario.split("-", 2)
        with self._lock:
            self._seen[scenario] += 1
            return self._seen[scenario] <= int(times), status


# --------------------------------------------------------------------------- OpenAI


class FakeOpenAIServer:
    """A FAKE OpenAI-compatible chat-completions server (SSE streaming), no model inside.

    The ok reply is "Echo: <last user message>" streamed a word per chunk.
    `url` is the base URL to give the client (ends in /v1); `requests` keeps
    every request body (and its Authorization header) for assertions.
    """

    def __init__(self, *, scenario: str = "ok", slow_s: float = 5.0, token_delay_s: float = 0.0):
        self.scenario = scenario
        self.slow_s = slow_s
        self.token_delay_s = token_delay_s
        self.requests: list[dict[str, Any]] = []
        self._flaky = _FlakyCounter()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                body["authorization"] = self.headers.get("authorization", "")
                server.requests.append(body)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                last_user = next(
                    (m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), ""
                )
                scenario, said = pick_scenario(last_user, server.scenario)
                server._answer(self, scenario, said, body)

            def _send_json(self, status: int, payload: object) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("connection", "close")
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _answer(self, handler: Any, scenario: str, said: str, body: dict[str, Any]) -> None:
        if scenario.startswith("flaky-"):
            fail, status = self._flaky.should_fail(scenario)
            scenario = f"status-{status}" if fail else "ok"
        if scenario.startswith("status-"):
            status = int(scenario.removeprefix("status-"))
            handler.send_response(status)
            data = json.dumps({"error": {"message": f"fake status {status}"}}).encode()
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(data)))
            if status in (429, 503):
                handler.send_header("retry-after", "0")
            handler.send_header("connection", "close")
            handler.end_headers()
            handler.wfile.write(data)
            return
        if scenario == "echo-auth":
            handler._send_json(401, {"error": {"message": f"bad key {body['authorization']}"}})
            return

        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("transfer-encoding", "chunked")
        handler.send_header("connection", "close")
        handler.end_headers()

        def send(data: str) -> None:
            raw = f"data: {data}\n\n".encode()
            handler.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
            handler.wfile.flush()

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return json.dumps(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": body.get("model", "fake"),
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                },
                ensure_ascii=False,
            )

        def send_word(word: str) -> None:
            send(chunk({"content": word}))
            if self.token_delay_s:
                time.sleep(self.token_delay_s)

        words = re.findall(r"\S+\s*", f"Echo: {said}")
        try:
            send(chunk({"role": "assistant", "content": ""}))
            if scenario == "slow-first-token":
                self._stopping.wait(self.slow_s)
            if scenario == "malformed-json":
                send("{this is not json")
            elif scenario == "malformed-chunk":
                send(json.dumps({"choices": "not a list"}))
            # mid-stream faults strike after some words and before the last one
            mid_stream = scenario in ("error-mid-stream", "stall-mid-stream", "drop-mid-stream")
            fail_at = min(2, len(words) - 1) if mid_stream else len(words)
            for word in words[:fail_at]:
                send_word(word)
            if scenario == "drop-mid-stream":
                handler.wfile.flush()
                handler.connection.shutdown(socket.SHUT_RDWR)
                return
            if scenario == "error-mid-stream":
                send(json.dumps({"error": {"message": "fake failure mid-stream"}}))
            else:
                if scenario == "stall-mid-stream":
                    self._stopping.wait(self.slow_s)
                for word in words[fail_at:]:
                    send_word(word)
                send(chunk({}, finish="stop"))
            send("[DONE]")
            handler.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away, as clients may


# --------------------------------------------------------------------------- Google TTS

_TTS_SERVICE = "google.cloud.texttospeech.v1.TextToSpeech"

FAKE_GOOGLE_VOICES = (
    ("en-US-Chirp3-HD-Achernar", "en-US"),
    ("ko-KR-Chirp3-HD-Achernar", "ko-KR"),
    ("en-US-Standard-C", "en-US"),
    ("ko-KR-Standard-A", "ko-KR"),
)


def fake_speech(text: str, sample_rate: int) -> np.ndarray:
    """Made-up 'speech' for `text`: 60 ms of a tone per character (not real speech)."""
    n = max(1, int(len(text) * 0.06 * sample_rate))
    t = np.arange(n) / sample_rate
    return (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def _wav_bytes(pcm: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm.tobytes())
    return buffer.getvalue()


class FakeGoogleTTSServer:
    """A FAKE Google Cloud Text-to-Speech v1 gRPC server, no synthesis inside.

    Serves ListVoices, SynthesizeSpeech (LINEAR16 with a WAV header, like the
    real one) and StreamingSynthesize (headerless PCM chunks) with the
    package's own message classes. `address` is "127.0.0.1:<port>", `endpoint`
    is "http://127.0.0.1:<port>" (what AVATAR_GOOGLE_TTS_ENDPOINT takes for a
    plaintext channel); `texts` keeps every input text received.
    """

    def __init__(self, *, scenario: str = "ok", slow_s: float = 5.0):
        from google.cloud import texttospeech_v1 as tts

        self._tts = tts
        self.scenario = scenario
        self.slow_s = slow_s
        self.texts: list[str] = []
        self.voice_names: list[str] = []
        self._flaky = _FlakyCounter()
        self._stopping = threading.Event()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self._server.add_generic_rpc_handlers((self._handlers(),))
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self.endpoint = f"http://{self.address}"

    def start(self) -> FakeGoogleTTSServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.stop(grace=None)

    def __enter__(self) -> FakeGoogleTTSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handlers(self) -> grpc.GenericRpcHandler:
        tts = self._tts

        def passthrough(serialize: Any) -> Any:
            # Raw bytes go out untouched: how the malformed-message scenario lies.
            return lambda message: message if isinstance(message, bytes) else serialize(message)

        return grpc.method_handlers_generic_handler(
            _TTS_SERVICE,
            {
                "ListVoices": grpc.unary_unary_rpc_method_handler(
                    self._list_voices,
                    request_deserializer=tts.ListVoicesRequest.deserialize,
                    response_serializer=tts.ListVoicesResponse.serialize,
                ),
                "SynthesizeSpeech": grpc.unary_unary_rpc_method_handler(
                    self._synthesize,
                    request_deserializer=tts.SynthesizeSpeechRequest.deserialize,
                    response_serializer=passthrough(tts.SynthesizeSpeechResponse.serialize),
                ),
                "StreamingSynthesize": grpc.stream_stream_rpc_method_handler(
                    self._streaming_synthesize,
                    request_deserializer=tts.StreamingSynthesizeRequest.deserialize,
                    response_serializer=passthrough(tts.StreamingSynthesizeResponse.serialize),
                ),
            },
        )

    def _list_voices(self, request: Any, context: grpc.ServicerContext) -> Any:
        tts = self._tts
        return tts.ListVoicesResponse(
            voices=[
                tts.Voice(name=name, language_codes=[language], natural_sample_rate_hertz=24000)
                for name, language in FAKE_GOOGLE_VOICES
                if not request.language_code or language.startswith(request.language_code)
            ]
        )

    def _fail_if_asked(self, scenario: str, context: grpc.ServicerContext) -> str:
        """Aborts the call for status/flaky scenarios; returns the scenario to play otherwise."""
        if scenario.startswith("flaky-"):
            fail, status = self._flaky.should_fail(scenario)
            scenario = f"status-{status}" if fail else "ok"
        if scenario.startswith("status-"):
            code = grpc.StatusCode[scenario.removeprefix("status-").upper().replace("-", "_")]
            context.abort(code, f"fake {code.name}")
        return scenario

    def _check_voice(self, name: str, context: grpc.ServicerContext) -> None:
        self.voice_names.append(name)
        if name not in {voice for voice, _ in FAKE_GOOGLE_VOICES}:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Voice '{name}' does not exist.")

    def _synthesize(self, request: Any, context: grpc.ServicerContext) -> Any:
        scenario, text = pick_scenario(request.input.text, self.scenario)
        self.texts.append(text)
        self._check_voice(request.voice.name, context)
        scenario = self._fail_if_asked(scenario, context)
        if scenario == "slow-first-token":
            self._stopping.wait(self.slow_s)
        if scenario == "malformed-message":
            return b"\xff\xff\xff not a protobuf"
        rate = request.audio_config.sample_rate_hertz or 24000
        audio = _wav_bytes(fake_speech(text, rate), rate)
        if scenario == "malformed-audio":
            audio = audio[:-1]
        return self._tts.SynthesizeSpeechResponse(audio_content=audio)

    def _streaming_synthesize(
        self, requests: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        config = next(requests).streaming_config
        self._check_voice(config.voice.name, context)
        rate = config.streaming_audio_config.sample_rate_hertz or 24000
        for request in requests:
            scenario, text = pick_scenario(request.input.text, self.scenario)
            self.texts.append(text)
            scenario = self._fail_if_asked(scenario, context)
            if scenario == "slow-first-token":
                self._stopping.wait(self.slow_s)
            if scenario == "malformed-message":
                yield b"\x0a\xff\xff\xff"
                return
            pcm = fake_speech(text, rate).tobytes()
            step = max(2, min(9600, len(pcm) // 4 * 2))  # at least two pieces, whole samples
            pieces = [pcm[i : i + step] for i in range(0, len(pcm), step)]
            for index, piece in enumerate(pieces):
                if index == 1 and scenario == "error-mid-stream":
                    context.abort(grpc.StatusCode.INTERNAL, "fake failure mid-stream")
                if scenario == "malformed-audio" and index == len(pieces) - 1:
                    piece = piece[:-1]
                yield self._tts.StreamingSynthesizeResponse(audio_content=piece)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def fake_openai_server() -> Iterator[FakeOpenAIServer]:
    """A running FakeOpenAIServer; set `.scenario` or put `[[fake:...]]` in a prompt."""
    with FakeOpenAIServer(slow_s=5.0) as server:
        yield server


@pytest.fixture
def fake_google_tts_server() -> Iterator[FakeGoogleTTSServer]:
    """A running FakeGoogleTTSServer; set `.scenario` or put `[[fake:...]]` in the text."""
    with FakeGoogleTTSServer(slow_s=5.0) as server:
        yield server


def main() -> None:
    """Runs both fakes until interrupted, printing the settings that point the service at them."""
    with FakeOpenAIServer() as llm, FakeGoogleTTSServer() as tts:
        print(
            f"AVATAR_LLM=openai AVATAR_OPENAI_BASE_URL={llm.url} AVATAR_OPENAI_API_KEY=fake",
            flush=True,
        )
        print(f"AVATAR_TTS=google AVATAR_GOOGLE_TTS_ENDPOINT={tts.endpoint}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()


__all__ = [
    "FAKE_GOOGLE_VOICES",
    "FakeGoogleTTSServer",
    "FakeOpenAIServer",
    "fake_google_tts_server",
    "fake_openai_server",
    "fake_speech",
    "free_port",
    "pick_scenario",
]
