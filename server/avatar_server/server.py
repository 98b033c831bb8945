"""Wires the service together and runs it: providers, renderer, gRPC server, health, drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket

import grpc
from avatar.v1 import avatar_pb2, avatar_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from avatar_server import __version__
from avatar_server.avatars.registry import AvatarRegistry
from avatar_server.core.errors import AvatarError, StatusCode
from avatar_server.providers.registry import create_language_model, create_speech_synthesizer
from avatar_server.renderers.registry import create_renderer
from avatar_server.service.auth import ApiKeyInterceptor, parse_api_keys
from avatar_server.service.deps import ServiceDeps
from avatar_server.service.malformed import MalformedRequestInterceptor
from avatar_server.service.metrics import Metrics
from avatar_server.service.servicer import AvatarServicer
from avatar_server.session_store.registry import create_session_store
from avatar_server.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = avatar_pb2.DESCRIPTOR.services_by_name["AvatarService"].full_name


def _grpc_options(settings: Settings) -> list[tuple[str, int]]:
    """HTTP/2 settings for hour-long streams: pings keep NATs open, no connection age limit."""
    return [
        ("grpc.max_receive_message_length", settings.limits.max_message_bytes),
        ("grpc.max_send_message_length", settings.limits.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


async def build_deps(settings: Settings) -> ServiceDeps:
    """Creates the shared parts; fails fast (with what is missing) before any port opens."""
    avatars = AvatarRegistry(settings.service.data_dir, max_upload_bytes=settings.limits.max_upload_bytes)
    await avatars.start()
    renderer = create_renderer(settings)
    tts = create_speech_synthesizer(settings)
    await tts.load_voices()
    deps = ServiceDeps(
        settings=settings,
        avatars=avatars,
        renderer=renderer,
        llm=create_language_model(settings),
        tts=tts,
        store=create_session_store(settings),
        metrics=Metrics(),
        instance_id=settings.service.instance_id or socket.gethostname(),
    )
    deps.metrics.send_queue.set_function(lambda: sum(s.queued_events for s in list(deps.sessions)))
    return deps


class AvatarServer:
    """A running service: `start`, then `drain_and_stop` on SIGTERM."""

    def __init__(self, settings: Settings, deps: ServiceDeps) -> None:
        self.settings = settings
        self.deps = deps
        interceptors = []
        if not settings.security.auth_disabled:
            keys = parse_api_keys(settings.security.api_keys.get_secret_value() if settings.security.api_keys else "")
            if not keys:
                raise AvatarError(
                    "no API keys configured: set AVATAR_API_KEYS (comma-separated, 16+ characters) "
                    "or, for local use only, AVATAR_AUTH_DISABLED=true (--auth-disabled)",
                    code=StatusCode.FAILED_PRECONDITION, stage="server",
                )
            interceptors.append(ApiKeyInterceptor(keys))
        interceptors.append(MalformedRequestInterceptor())
        self.server = grpc.aio.server(interceptors=interceptors, options=_grpc_options(settings))
        avatar_pb2_grpc.add_AvatarServiceServicer_to_server(AvatarServicer(deps), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = 0

    async def start(self) -> int:
        settings = self.settings
        address = f"{settings.service.host}:{settings.service.port}"
        if settings.security.tls_cert_file or settings.security.tls_key_file:
            if not (settings.security.tls_cert_file and settings.security.tls_key_file):
                raise AvatarError("TLS needs both tls_cert_file and tls_key_file",
                                  code=StatusCode.FAILED_PRECONDITION, stage="server")
            credentials = grpc.ssl_server_credentials(
                [(settings.security.tls_key_file.read_bytes(), settings.security.tls_cert_file.read_bytes())]
            )
            self.port = self.server.add_secure_port(address, credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if settings.service.metrics_port:
            self.deps.metrics.serve(settings.service.metrics_port, settings.service.host)
        log.info("avatar-server %s listening on %s:%d (renderer=%s llm=%s tts=%s instance=%s auth=%s tls=%s)",
                 __version__, settings.service.host, self.port, self.deps.renderer.name, self.deps.llm.name,
                 self.deps.tts.name, self.deps.instance_id, "off" if settings.security.auth_disabled else "on",
                 "on" if settings.security.tls_cert_file else "off")
        return self.port

    async def drain_and_stop(self) -> None:
        """Stop listening, NOT_SERVING, running turns get the grace period, clients told to reconnect.

        The listener closes first: a gRPC-aware balancer (nginx) moves a new
        stream to another instance only when the connection is refused, while
        a status such as UNAVAILABLE would reach the client as an error. Open
        streams carry on while their turns finish.
        """
        deps, grace = self.deps, self.settings.service.shutdown_grace_s
        log.info("draining: %d sessions, grace %.1f s", len(deps.sessions), grace)
        stopping = asyncio.create_task(self.server.stop(grace=grace + 5.0))
        await asyncio.sleep(0)  # let stop() close the listener now
        deps.draining = True
        await self.health.enter_graceful_shutdown()
        reconnect = "server is shutting down; reconnect with your session_id"

        async def release(session) -> None:  # type: ignore[no-untyped-def]
            await session.wait_turn()
            await session.save_final()
            await session.end(StatusCode.UNAVAILABLE, reconnect)

        sessions = list(deps.sessions)
        for session in sessions:
            session.stop_taking_turns(reconnect)
        if sessions:
            await asyncio.wait([asyncio.create_task(release(s)) for s in sessions], timeout=grace)
        for session in list(deps.sessions):
            with contextlib.suppress(Exception):
                await session.save_final()
            await session.end(StatusCode.UNAVAILABLE, reconnect)
        await stopping
        await asyncio.sleep(0.5)  # let the last statuses leave the socket before the process exits
        deps.metrics.stop()
        for closer in (deps.llm.aclose, deps.tts.aclose, deps.renderer.aclose, deps.store.aclose):
            with contextlib.suppress(Exception):
                await closer()
        log.info("stopped")


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM or SIGINT, then drains."""
    deps = await build_deps(settings)
    server = AvatarServer(settings, deps)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.drain_and_stop()
