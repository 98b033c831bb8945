"""The bridge's WebSocket protocol, version 1: client messages checked, server messages built.

Text frames carry JSON objects with a "type"; binary frames carry media behind a small typed
header (see docs/web.md). Times sent to the page are seconds on the session's media clock, which
equal presentation seconds in the fragmented MP4 stream.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from avatar.v1 import avatar_pb2
from avatar_contract import rules

PROTOCOL_VERSION = 1
MEDIA_HEADER = struct.Struct(">BBH")  # version, kind, header length


class MediaKind:
    """Kinds of binary frames sent to the page."""

    VIDEO_INIT = 1
    VIDEO_SEGMENT = 2
    AUDIO_PCM = 3


class ProtocolError(Exception):
    """A client message the bridge refuses; the connection stays open."""

    def __init__(
        self, reason: str, message: str,
        code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Hello:
    """Opens (or resumes) the session: maps to SessionConfig."""

    session_id: str = ""
    avatar: str = ""
    voice: str = ""
    language: str = ""
    fps: int = 0
    segment_seconds: float = 0.0
    pcm_audio: bool = False
    video: bool = True


@dataclass(frozen=True)
class SendText:
    """A user turn: maps to UserMessage."""

    text: str
    turn_id: str = ""


@dataclass(frozen=True)
class StopTurn:
    """Stops the running turn: maps to Interrupt."""

    turn_id: str = ""


@dataclass(frozen=True)
class Ping:
    """An application-level heartbeat; answered with a pong echoing `t`."""

    t: Any = None


ClientMessage = Hello | SendText | StopTurn | Ping

def parse_client_message(raw: str, max_bytes: int) -> ClientMessage:
    """Parses one text frame from the page, raising ProtocolError with a precise reason."""
    size = len(raw.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        raise ProtocolError(
            "too_large",
            f"message of {size} bytes exceeds the limit of {max_bytes}",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_json", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_json", "a message must be a JSON object")
    kind = data.get("type")
    if kind == "hello":
        return _parse_hello(data)
    if kind == "message":
        text = _str(data, "text", 1_000_000)
        if not text.strip():
            raise ProtocolError("invalid_field", "'text' must not be empty")
        return SendText(text=text, turn_id=_optional(data, "turn_id", rules.valid_turn_id))
    if kind == "interrupt":
        return StopTurn(turn_id=_optional(data, "turn_id", rules.valid_turn_id))
    if kind == "ping":
        t = data.get("t")
        if not (t is None or isinstance(t, (int, float, str))):
            raise ProtocolError("invalid_field", "'t' must be a number or a string")
        return Ping(t=t)
    raise ProtocolError("unknown_type", f"unknown message type {kind!r}")


def _parse_hello(data: dict) -> Hello:
    version = data.get("v", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {version!r} is not supported "
            f"(this bridge speaks {PROTOCOL_VERSION})",
        )
    fps = data.get("fps", 0)
    if not isinstance(fps, int) or isinstance(fps, bool) or not 0 <= fps <= 60:
        raise ProtocolError("invalid_field", "'fps' must be an integer from 0 to 60")
    segment_seconds = data.get("segment_seconds", 0)
    if (
        not isinstance(segment_seconds, (int, float))
        or isinstance(segment_seconds, bool)
        or not 0 <= segment_seconds <= 10
    ):
        raise ProtocolError("invalid_field", "'segment_seconds' must be a number from 0 to 10")
    return Hello(
        session_id=_optional(data, "session_id", rules.valid_session_id),
        avatar=_optional(data, "avatar", rules.valid_name),
        voice=_optional(data, "voice", rules.valid_name),
        language=_optional(data, "language", rules.valid_language),
        fps=fps,
        segment_seconds=float(segment_seconds),
        pcm_audio=_bool(data, "pcm_audio", False),
        video=_bool(data, "video", True),
    )


def _str(data: dict, key: str, max_chars: int) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise ProtocolError("invalid_field", f"{key!r} must be a string")
    if len(value) > max_chars:
        raise ProtocolError("invalid_field", f"{key!r} is longer than {max_chars} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON escapes can spell lone surrogates
        raise ProtocolError("invalid_field", f"{key!r} is not valid Unicode text") from None
    return value


def _optional(data: dict, key: str, valid: Callable[[str], bool]) -> str:
    """An optional string field checked with a contract rule (avatar_contract.rules); "" = unset."""
    value = _str(data, key, 128)
    if value and not valid(value):
        raise ProtocolError("invalid_field", f"{key!r} is not in the allowed form")
    return value


def _bool(data: dict, key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError("invalid_field", f"{key!r} must be true or false")
    return value


def to_request(message: Hello | SendText | StopTurn) -> avatar_pb2.ConverseRequest:
    """Maps a parsed client message to the gRPC request it stands for."""
    if isinstance(message, Hello):
        return avatar_pb2.ConverseRequest(
            config=avatar_pb2.SessionConfig(
                avatar=message.avatar,
                voice=message.voice,
                language=message.language,
                session_id=message.session_id,
                output=avatar_pb2.OutputOptions(
                    fps=message.fps,
                    segment_seconds=message.segment_seconds,
                    pcm_audio=message.pcm_audio,
                    video=message.video,
                ),
            )
        )
    if isinstance(message, SendText):
        return avatar_pb2.ConverseRequest(
            message=avatar_pb2.UserMessage(text=message.text, turn_id=message.turn_id)
        )
    return avatar_pb2.ConverseRequest(interrupt=avatar_pb2.Interrupt(turn_id=message.turn_id))


def encode_json(message: dict) -> str:
    """Serialises a server message (compact, UTF-8 kept as is)."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def pack_media(kind: int, header: dict, payload: bytes) -> bytes:
    """Builds a binary frame: version, kind, header length, JSON header, payload."""
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    return MEDIA_HEADER.pack(PROTOCOL_VERSION, kind, len(header_bytes)) + header_bytes + payload


def unpack_media(frame: bytes) -> tuple[int, dict, bytes]:
    """Splits a binary frame into kind, header and payload (for tests and Python clients)."""
    version, kind, length = MEDIA_HEADER.unpack_from(frame)
    if version != PROTOCOL_VERSION:
        raise ValueError(f"unknown media frame version {version}")
    start = MEDIA_HEADER.size
    return kind, json.loads(frame[start : start + length]), frame[start + length :]


def error_message(
    reason: str, message: str, code: grpc.StatusCode, *, source: str = "bridge", **extra: Any
) -> dict:
    """An error for the page; `code` is the gRPC status number, `reason` a short word."""
    return {
        "type": "error",
        "source": source,
        "code": code.value[0],
        "code_name": code.name,
        "reason": reason,
        "message": message,
        **extra,
    }


class EventTranslator:
    """Maps the service's ConverseResponse events to frames for the page, one session at a time."""

    def __init__(self, media_url: str) -> None:
        self._clock_rate = 16000
        self._media_url = media_url

    def _seconds(self, samples: int) -> float:
        return round(samples / self._clock_rate, 6)

    def translate(self, event: avatar_pb2.ConverseResponse) -> str | bytes | None:
        """One page frame per event; None for events the page does not need (keep-alives)."""
        kind = event.WhichOneof("event")
        turn = event.turn_id
        start, end = self._seconds(event.span.start), self._seconds(event.span.end)
        if kind == "session_started":
            return encode_json(self._session(event))
        if kind == "turn_started":
            ts = event.turn_started
            return encode_json(
                {"type": "turn_started", "turn_id": turn, "user_text": ts.user_text,
                 "from_llm": ts.from_llm, "start": start}
            )
        if kind == "text_delta":
            return encode_json({"type": "text", "turn_id": turn, "text": event.text_delta.text,
                                "start": start})
        if kind == "caption":
            c = event.caption
            return encode_json({"type": "caption", "turn_id": turn, "text": c.text,
                                "sentence": c.sentence, "start": start, "end": end})
        if kind == "video_init":
            v = event.video_init
            return pack_media(
                MediaKind.VIDEO_INIT,
                {"turn_id": turn, "mime_type": v.mime_type, "width": v.width, "height": v.height,
                 "fps": v.fps},
                v.data,
            )
        if kind == "video_segment":
            s = event.video_segment
            return pack_media(
                MediaKind.VIDEO_SEGMENT,
                {"turn_id": turn, "sequence": s.sequence, "frames": s.frames,
                 "first_frame": s.first_frame, "last_in_turn": s.last_in_turn,
                 "start": start, "end": end},
                s.data,
            )
        if kind == "audio":
            a = event.audio
            return pack_media(
                MediaKind.AUDIO_PCM,
                {"turn_id": turn, "sample_rate": a.sample_rate, "start": start, "end": end},
                a.pcm,
            )
        if kind == "turn_completed":
            tc = event.turn_completed
            t = tc.timings
            timings = {f.name: round(getattr(t, f.name), 3) for f in t.DESCRIPTOR.fields}
            return encode_json(
                {"type": "turn_completed", "turn_id": turn, "text": tc.text, "frames": tc.frames,
                 "media_seconds": round(tc.media_seconds, 6),
                 "realtime_factor": round(tc.realtime_factor, 4), "timings": timings,
                 "start": start, "end": end}
            )
        if kind == "turn_cancelled":
            tc = event.turn_cancelled
            return encode_json({"type": "turn_cancelled", "turn_id": turn, "reason": tc.reason,
                                "stop_ms": round(tc.stop_ms, 3), "start": start, "end": end})
        if kind == "error":
            e = event.error
            return encode_json(
                {"type": "error", "source": "service", "code": e.code,
                 "code_name": _CODE_NAMES.get(e.code, "UNKNOWN"), "reason": e.stage or "service",
                 "message": e.message, "stage": e.stage, "retriable": e.retriable,
                 "turn_id": turn}
            )
        return None

    def _session(self, event: avatar_pb2.ConverseResponse) -> dict:
        s = event.session_started
        if s.clock_rate:
            self._clock_rate = s.clock_rate
        avatar_id = s.avatar.id or "default"
        return {
            "type": "session",
            "session_id": event.session_id,
            "resumed": s.resumed,
            "media_position": self._seconds(s.media_position),
            "clock_rate": self._clock_rate,
            "fps": s.fps,
            "width": s.width,
            "height": s.height,
            "renderer": s.renderer,
            "llm": s.llm,
            "tts": s.tts,
            "voice": s.voice,
            "language": s.language,
            "instance_id": s.instance_id,
            "avatar": {
                "id": s.avatar.id,
                "display_name": s.avatar.display_name,
                "width": s.avatar.width,
                "height": s.avatar.height,
                "source_type": s.avatar.source_type,
                "builtin": s.avatar.builtin,
            },
            "idle_url": f"{self._media_url}/{avatar_id}/idle.mp4",
            "poster_url": f"{self._media_url}/{avatar_id}/poster.jpg",
        }


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
