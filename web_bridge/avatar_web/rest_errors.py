"""The REST API's error type and its mapping from gRPC status codes to HTTP answers."""

from __future__ import annotations

from typing import Any

import grpc
from aiohttp import web

from avatar_web.upstream import explain_credential_refusal

# gRPC status of a request that never got a turn going -> HTTP status.
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.FAILED_PRECONDITION: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
_FIELD_WORDS = ("avatar", "voice", "language", "session")
_RETRIABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}
)


class ApiError(Exception):
    """An answer other than success: HTTP status, the offending request field and details."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        service_error: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.service_error = service_error

    def to_response(self) -> web.Response:
        """The JSON error body: {"error": {"status", "message", "field"?, "service"?}}."""
        body: dict[str, Any] = {"status": self.status, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.service_error is not None:
            body["service"] = self.service_error
        headers = {"Retry-After": "1"} if self.status == 503 else None
        return web.json_response({"error": body}, status=self.status, headers=headers)


def status_from_number(number: int) -> grpc.StatusCode:
    """The grpc.StatusCode for a google.rpc.Code number (UNKNOWN for numbers not defined)."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def service_error(
    code: grpc.StatusCode, message: str, stage: str = "", retriable: bool = False
) -> dict:
    """The service's own error, passed through in the JSON body."""
    return {
        "code": code.value[0],
        "code_name": code.name,
        "stage": stage,
        "message": message,
        "retriable": retriable,
    }


def error_from_status(
    code: grpc.StatusCode,
    details: str,
    *,
    turn_started: bool,
    text_field: str,
    named_fields: dict[str, str],
) -> ApiError:
    """Maps a gRPC status that ended a call (unreachable service, unknown avatar, ...)."""
    mapper = error_midway if turn_started else error_before_turn
    return mapper(
        code,
        details,
        stage="server" if turn_started else "",
        retriable=code in _RETRIABLE,
        text_field=text_field,
        named_fields=named_fields,
    )


def error_before_turn(
    code: grpc.StatusCode,
    message: str,
    *,
    stage: str = "",
    retriable: bool = False,
    text_field: str,
    named_fields: dict[str, str],
) -> ApiError:
    """Maps a service error on a request whose turn never started (bad input, unknown, down).

    A refusal of the bridge's own key is the bridge's fault, not the caller's: 502, saying so.
    """
    if (refused := explain_credential_refusal(code, message)) is not None:
        return ApiError(502, refused, service_error=service_error(code, message, stage, retriable))
    status = _HTTP_STATUS.get(code, 502)
    field = _field_of(code, message, text_field, named_fields)
    if status == 400 and field == text_field and _says_too_long(message):
        status = 413
    return ApiError(
        status,
        message or code.name,
        field=field,
        service_error=service_error(code, message, stage, retriable),
    )


def error_midway(
    code: grpc.StatusCode,
    message: str,
    *,
    stage: str = "",
    retriable: bool = False,
    text_field: str,
    named_fields: dict[str, str],
) -> ApiError:
    """Maps an error after the turn started: 502 with the service's error, unless bad input."""
    if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT) and stage in (
        "input",
        "",
    ):
        return error_before_turn(
            code,
            message,
            stage=stage,
            retriable=retriable,
            text_field=text_field,
            named_fields=named_fields,
        )
    return ApiError(
        502,
        f"the turn failed in stage {stage or 'unknown'}: {message or code.name}",
        service_error=service_error(code, message, stage, retriable),
    )


def _field_of(
    code: grpc.StatusCode, message: str, text_field: str, named_fields: dict[str, str]
) -> str | None:
    """Which request field a service error is about, judged from its message and what was sent."""
    lowered = message.lower()
    for word in _FIELD_WORDS:
        if word in lowered:
            return word
    if code == grpc.StatusCode.NOT_FOUND:
        given = [name for name, value in named_fields.items() if value]
        return given[0] if len(given) == 1 else None
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return text_field
    return None


def _says_too_long(message: str) -> bool:
    lowered = message.lower()
    return any(
        word in lowered
        for word in ("too long", "at most", "exceeds", "longer than", "the limit is")
    )
