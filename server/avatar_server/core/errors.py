"""Errors that carry a gRPC status and the pipeline stage that raised them.

Providers, renderers and the media layer raise these; only the service edge
turns them into gRPC statuses or Error events, so no inner module imports grpc.
"""

from __future__ import annotations

from enum import IntEnum


class StatusCode(IntEnum):
    """The gRPC status code numbers (google.rpc.Code) we use."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class AvatarError(Exception):
    """An error with a status code, the failing stage and whether a retry may help."""

    code: StatusCode = StatusCode.INTERNAL
    stage: str = "server"
    retriable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: StatusCode | None = None,
        stage: str | None = None,
        retriable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if stage is not None:
            self.stage = stage
        if retriable is not None:
            self.retriable = retriable


class InvalidInput(AvatarError):
    """The client sent something we cannot accept."""

    code = StatusCode.INVALID_ARGUMENT
    stage = "input"


class NotFound(AvatarError):
    """A named thing (avatar, voice, session) does not exist."""

    code = StatusCode.NOT_FOUND
    stage = "input"


class ProviderError(AvatarError):
    """An LLM or TTS provider failed; `stage` is "llm" or "tts"."""

    code = StatusCode.UNAVAILABLE
    retriable = True


class RenderError(AvatarError):
    """The renderer failed on a frame or a session."""

    code = StatusCode.INTERNAL
    stage = "render"


class EncodeError(AvatarError):
    """The video/audio encoder failed."""

    code = StatusCode.INTERNAL
    stage = "encode"


class CapacityExhausted(AvatarError):
    """No room for another session right now."""

    code = StatusCode.RESOURCE_EXHAUSTED
    stage = "session"
    retriable = True
