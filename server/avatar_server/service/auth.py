"""API-key authentication for every gRPC method except health checks and reflection."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import grpc

from avatar_server.core.errors import AvatarError, StatusCode

_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
ADMIN_METHODS = frozenset({
    "/avatar.v1.AvatarService/RegisterAvatar",
    "/avatar.v1.AvatarService/DeleteAvatar",
})


def parse_api_keys(spec: str) -> dict[str, str]:
    """'k1,k2:admin' -> {'k1': 'client', 'k2': 'admin'}."""
    keys: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, _, role = item.partition(":")
        if role not in ("", "admin"):
            raise AvatarError(f"api key role must be empty or 'admin', got {role!r}",
                              code=StatusCode.INVALID_ARGUMENT, stage="server")
        if len(key) < 16:
            raise AvatarError("api keys must be at least 16 characters",
                              code=StatusCode.INVALID_ARGUMENT, stage="server")
        keys[key] = role or "client"
    return keys


def _presented_key(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    for name, value in metadata or ():
        text = value.decode() if isinstance(value, bytes) else value
        if name == "x-api-key":
            return text
        if name == "authorization" and text.lower().startswith("bearer "):
            return text[7:].strip()
    return ""


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED without a valid key; PERMISSION_DENIED for admin methods without an admin key."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._keys = keys

    def _role(self, presented: str) -> str | None:
        role = None
        for key, key_role in self._keys.items():  # compare all, in constant time each
            if hmac.compare_digest(key.encode(), presented.encode()):
                role = key_role
        return role

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(_OPEN_PREFIXES):
            return handler
        role = self._role(_presented_key(details.invocation_metadata))
        if role is None:
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                            "missing or invalid API key (send 'authorization: Bearer <key>')")
        if details.method in ADMIN_METHODS and role != "admin":
            return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED,
                            "this method needs an admin API key")
        return handler


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only aborts."""

    async def refuse(_request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
