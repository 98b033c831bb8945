"""Authentication, TLS, limits and secrets over real local gRPC channels."""

from __future__ import annotations

import asyncio
import datetime
import logging

import grpc
import pytest
from avatar.v1 import avatar_pb2 as pb
from avatar.v1 import avatar_pb2_grpc as pb_grpc
from avatar_server.core.errors import AvatarError
from avatar_server.server import AvatarServer, build_deps
from avatar_server.settings import load_settings
from conftest import running_service
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_helpers import Conversation

CLIENT_KEY = "client-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
KEYS = f"{CLIENT_KEY},{ADMIN_KEY}:admin"


def _bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def test_calls_without_a_valid_key_are_unauthenticated(data_dir) -> None:
    async with running_service(data_dir, auth_disabled=False, api_keys=KEYS) as service:
        for metadata in ((), _bearer("wrong-key-0123456789abcdef"), (("x-api-key", "nope"),)):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await service.stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=metadata)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        talk = Conversation(service.stub, pb.SessionConfig())
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await talk.next()
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Health stays open for load balancers and Kubernetes probes.
        reply = await health_pb2_grpc.HealthStub(service.channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_valid_keys_work_and_admin_methods_need_admin(data_dir) -> None:
    async with running_service(data_dir, auth_disabled=False, api_keys=KEYS) as service:
        info = await service.stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=_bearer(CLIENT_KEY))
        assert info.version
        info = await service.stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=(("x-api-key", CLIENT_KEY),))
        assert info.version
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await service.stub.DeleteAvatar(pb.DeleteAvatarRequest(id="astronaut"), metadata=_bearer(CLIENT_KEY))
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as raised:  # admin gets through to the real answer
            await service.stub.DeleteAvatar(pb.DeleteAvatarRequest(id="astronaut"), metadata=_bearer(ADMIN_KEY))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # built-in avatars stay


async def test_server_refuses_to_start_without_keys_unless_auth_is_explicitly_off(data_dir) -> None:
    settings = load_settings(host="127.0.0.1", port=0, data_dir=data_dir)
    deps = await build_deps(settings)
    with pytest.raises(AvatarError, match="AVATAR_API_KEYS"):
        AvatarServer(settings, deps)


async def test_secrets_never_appear_in_info_errors_or_logs(data_dir, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "sk-very-secret-openai-key-123456"
    async with running_service(data_dir, auth_disabled=False, api_keys=KEYS, openai_api_key=secret) as service:
        info = await service.stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=_bearer(CLIENT_KEY))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await service.stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=_bearer("x" * 20))
        text = str(info) + str(raised.value.details()) + caplog.text + repr(service.settings)
        for value in (secret, CLIENT_KEY, ADMIN_KEY):
            assert value not in text


def _self_signed(tmp_path):  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


async def test_tls_with_a_self_made_certificate(data_dir, tmp_path) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    async with running_service(data_dir, tls_cert_file=cert_file, tls_key_file=key_file) as service:
        credentials = grpc.ssl_channel_credentials(cert_file.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{service.port}", credentials) as channel:
            info = await pb_grpc.AvatarServiceStub(channel).GetServerInfo(pb.GetServerInfoRequest())
            assert info.version
        async with grpc.aio.insecure_channel(f"localhost:{service.port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await pb_grpc.AvatarServiceStub(plain).GetServerInfo(pb.GetServerInfoRequest(), timeout=5)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_session_limit_gives_resource_exhausted_with_retry_hint(data_dir) -> None:
    async with running_service(data_dir, max_sessions=1) as service:
        first = Conversation(service.stub, pb.SessionConfig())
        await first.until("video_init")
        second = Conversation(service.stub, pb.SessionConfig())
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await second.next()
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ("retry-after-s", "5") in tuple(raised.value.trailing_metadata() or ())
        await first.close()
        for _ in range(200):  # the slot frees once the first session has closed
            if not service.deps.sessions:
                break
            await asyncio.sleep(0.05)
        third = Conversation(service.stub, pb.SessionConfig())
        assert (await third.until("video_init"))[0].HasField("session_started")
        await third.close()


async def test_idle_timeout_closes_an_idle_session(data_dir) -> None:
    async with running_service(data_dir, session_idle_timeout_s=0.5) as service:
        talk = Conversation(service.stub, pb.SessionConfig())
        events = await talk.until("error", timeout=30)
        assert events[-1].error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert events[-1].error.stage == "session"


async def test_turn_deadline_ends_the_turn_with_an_error(data_dir) -> None:
    async with running_service(data_dir, turn_deadline_s=0.3, echo_token_delay_s=0.2) as service:
        talk = Conversation(service.stub, pb.SessionConfig())
        await talk.until("video_init")
        talk.say("A fairly long message that takes a while to echo back word by word.")
        events = await talk.until("error", "turn_completed")
        assert events[-1].error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        await talk.close()


async def test_disconnect_mid_turn_frees_the_session_quickly(data_dir) -> None:
    async with running_service(data_dir, echo_token_delay_s=0.05) as service:
        talk = Conversation(service.stub, pb.SessionConfig())
        await talk.until("video_init")
        talk.say("Tell me a long story about the sea. " * 5)
        await talk.until("video_segment")
        assert service.deps.metrics.active_turns._value.get() == 1
        talk.call.cancel()
        loop = asyncio.get_running_loop()
        began = loop.time()
        while service.deps.sessions and loop.time() - began < 5:
            await asyncio.sleep(0.01)
        assert not service.deps.sessions
        assert service.deps.metrics.active_turns._value.get() == 0
