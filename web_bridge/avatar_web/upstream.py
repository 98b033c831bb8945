"""The service as the bridge reaches it: one gRPC channel, and the bridge's own key on every call.

Every call the bridge makes goes through `Upstream`, so none can leave the key out. The key is sent
as `authorization: Bearer <key>` call metadata (the service's API-key scheme), over plaintext or
TLS alike; it is never logged or shown.
"""

from __future__ import annotations

import logging

import grpc
import grpc.aio
from avatar.v1 import avatar_pb2, avatar_pb2_grpc

from avatar_web.settings import WebSettings

log = logging.getLogger(__name__)

CREDENTIAL_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
"""Statuses that mean the service refused the bridge's own key, not the caller's request."""


class Upstream:
    """The bridge's client of avatar.v1.AvatarService."""

    def __init__(self, settings: WebSettings) -> None:
        self.target = settings.grpc_target
        self.tls = settings.uses_tls
        self.has_key = settings.grpc_api_key is not None
        self.channel = _open_channel(settings)
        self._stub = avatar_pb2_grpc.AvatarServiceStub(self.channel)
        key = settings.grpc_api_key
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {key.get_secret_value()}"),) if key is not None else ()
        )

    def __repr__(self) -> str:  # never the key
        return f"Upstream({self.target!r}, tls={self.tls}, key={'set' if self.has_key else 'none'})"

    def converse(self) -> grpc.aio.StreamStreamCall:
        """Opens a Converse stream; requests are sent with `write`."""
        return self._stub.Converse(metadata=self._metadata)

    def speak(self, request: avatar_pb2.SpeakRequest) -> grpc.aio.UnaryStreamCall:
        """Starts a Speak call."""
        return self._stub.Speak(request, metadata=self._metadata)

    async def server_info(self, timeout_s: float) -> avatar_pb2.ServerInfo:
        """GetServerInfo (raises grpc.aio.AioRpcError)."""
        return await self._stub.GetServerInfo(
            avatar_pb2.GetServerInfoRequest(), timeout=timeout_s, metadata=self._metadata
        )

    async def avatar_preview(self, avatar_id: str, timeout_s: float) -> avatar_pb2.AvatarPreview:
        """GetAvatarPreview; "" is the server's default avatar (raises grpc.aio.AioRpcError)."""
        return await self._stub.GetAvatarPreview(
            avatar_pb2.GetAvatarPreviewRequest(id=avatar_id), timeout=timeout_s,
            metadata=self._metadata,
        )

    async def refusal_behind(
        self, code: grpc.StatusCode, details: str
    ) -> tuple[grpc.StatusCode, str]:
        """The real status of a stream that failed before any event, where grpc.aio hid it.

        A stream the service refuses at once (a wrong key) can end on the client as
        INTERNAL "Internal error from Core" when the bridge's first write raced the refusal
        (grpc/grpc#36066). A unary call then shows the refusal itself; any other status, or a
        unary call that succeeds, leaves the status as it was.
        """
        if code != grpc.StatusCode.INTERNAL:
            return code, details
        try:
            await self.server_info(5.0)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in CREDENTIAL_CODES:
                return exc.code(), exc.details() or ""
        return code, details

    def state(self) -> grpc.ChannelConnectivity:
        """The channel's connectivity, asking it to connect if idle."""
        return self.channel.get_state(try_to_connect=True)

    async def close(self) -> None:
        await self.channel.close()


def explain_credential_refusal(code: grpc.StatusCode, details: str) -> str | None:
    """For a refusal of the bridge's own key, a message that tells the operator what to fix.

    Logged here as a warning as well: it is the bridge's configuration that is wrong.
    """
    if code not in CREDENTIAL_CODES:
        return None
    log.warning("the service refused the bridge's API key: %s %s", code.name, details)
    return (
        f"the service refused the bridge's own credentials ({code.name}: {details or 'no details'});"
        " set AVATAR_WEB_GRPC_API_KEY (or AVATAR_WEB_GRPC_API_KEY_FILE) to a key listed in the"
        " service's AVATAR_API_KEYS"
    )


def _open_channel(settings: WebSettings) -> grpc.aio.Channel:
    limit = settings.grpc_max_message_bytes
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
    ]
    if not settings.uses_tls:
        return grpc.aio.insecure_channel(settings.grpc_target, options=options)
    roots = settings.grpc_tls_ca_file.read_bytes() if settings.grpc_tls_ca_file else None
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.aio.secure_channel(settings.grpc_target, credentials, options=options)
