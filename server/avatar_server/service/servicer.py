"""The AvatarService servicer: gRPC requests in, session events and statuses out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from avatar.v1 import avatar_pb2 as pb
from avatar.v1 import avatar_pb2_grpc as pb_grpc
from google.protobuf.message import DecodeError

from avatar_server import __version__
from avatar_server.core.errors import AvatarError, InvalidInput, StatusCode
from avatar_server.service import convert
from avatar_server.service.deps import ServiceDeps
from avatar_server.sessions.session import EndStream, Session

log = logging.getLogger(__name__)

_UPLOAD_NAME_MAX = 80


class AvatarServicer(pb_grpc.AvatarServiceServicer):
    """Implements avatar.v1.AvatarService on top of sessions, avatars and the renderer."""

    def __init__(self, deps: ServiceDeps) -> None:
        self.deps = deps

    async def _abort(self, context: grpc.aio.ServicerContext, error: AvatarError) -> None:
        """Ends the call with the error's status (and a retry hint where one helps); counts it."""
        self.deps.metrics.errors.labels(error.stage, error.code.name).inc()
        trailers: tuple[tuple[str, str], ...] = ()
        if error.code == StatusCode.RESOURCE_EXHAUSTED:
            trailers = (("retry-after-s", "5"),)
        await context.abort(grpc.StatusCode[error.code.name], error.message, trailing_metadata=trailers)

    # ------------------------------------------------------------ conversation
    async def Converse(
        self, request_iterator: AsyncIterator[pb.ConverseRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ConverseResponse]:
        requests = aiter(request_iterator)
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        except DecodeError:
            await self._abort(context, InvalidInput("a request is not a valid ConverseRequest"))
        if first.WhichOneof("request") != "config":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the first ConverseRequest must carry config (SessionConfig)")
        try:
            session = await Session.open(self.deps, first.config)
        except AvatarError as error:
            await self._abort(context, error)
            return
        reader = asyncio.create_task(self._read(session, requests))
        try:
            async for event in self._relay(session, context):
                yield event
        finally:
            reader.cancel()
            await session.close()

    async def _relay(
        self, session: Session, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ConverseResponse]:
        """The session's events until it ends; a non-OK end becomes the call's status."""
        async for item in session.responses():
            if isinstance(item, EndStream):
                if item.code != StatusCode.OK:
                    await self._abort(context, AvatarError(item.message, code=item.code))
                return
            yield item

    @staticmethod
    async def _read(session: Session, requests: AsyncIterator[pb.ConverseRequest]) -> None:
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            try:
                async for request in requests:
                    await session.handle(request)
            except DecodeError:
                await session.end(StatusCode.INVALID_ARGUMENT, "a request is not a valid ConverseRequest")
                return
            await session.finish()

    async def Speak(
        self, request: pb.SpeakRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ConverseResponse]:
        limit = self.deps.settings.limits.max_text_chars
        if not request.text.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "text is empty")
        if len(request.text) > limit:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"text has {len(request.text)} characters; the limit is {limit}")
        try:
            session = await Session.open(self.deps, request.config)
        except AvatarError as error:
            await self._abort(context, error)
            return
        try:
            await session.start_turn(request.text, "", from_llm=False)
            await session.finish()
            async for event in self._relay(session, context):
                yield event
        finally:
            await session.close()

    # ----------------------------------------------------------------- avatars
    async def ListAvatars(self, request: pb.ListAvatarsRequest, context: grpc.aio.ServicerContext) -> pb.ListAvatarsResponse:
        avatars = await self.deps.avatars.list()
        return pb.ListAvatarsResponse(avatars=[convert.avatar_pb(a) for a in avatars])

    async def GetAvatar(self, request: pb.GetAvatarRequest, context: grpc.aio.ServicerContext) -> pb.Avatar:
        try:
            return convert.avatar_pb(await self.deps.avatars.get(request.id))
        except AvatarError as error:
            await self._abort(context, error)
            raise

    async def GetAvatarPreview(self, request: pb.GetAvatarPreviewRequest, context: grpc.aio.ServicerContext) -> pb.AvatarPreview:
        try:
            avatar_id = request.id or self.deps.avatars.default_id
            info = await self.deps.avatars.get(avatar_id)
            idle_mp4, poster = await self.deps.avatars.preview(avatar_id)
        except AvatarError as error:
            await self._abort(context, error)
            raise
        return pb.AvatarPreview(avatar=convert.avatar_pb(info), idle_mp4=idle_mp4, poster_jpeg=poster)

    async def RegisterAvatar(
        self, request_iterator: AsyncIterator[pb.RegisterAvatarRequest], context: grpc.aio.ServicerContext
    ) -> pb.Avatar:
        limit = self.deps.settings.limits.max_upload_bytes
        try:
            metadata: pb.AvatarUpload | None = None
            data = bytearray()
            async for part in request_iterator:
                kind = part.WhichOneof("part")
                if metadata is None:
                    if kind != "metadata":
                        raise InvalidInput("the first RegisterAvatarRequest must carry metadata")
                    metadata = part.metadata
                    if metadata.size_bytes > limit:
                        raise AvatarError(f"upload of {metadata.size_bytes} bytes exceeds the limit of {limit}",
                                          code=StatusCode.RESOURCE_EXHAUSTED, stage="input")
                    if len(metadata.display_name) > _UPLOAD_NAME_MAX:
                        raise InvalidInput(f"metadata.display_name is longer than {_UPLOAD_NAME_MAX} characters")
                    continue
                if kind != "chunk":
                    raise InvalidInput("only chunk messages may follow the metadata")
                data += part.chunk
                if len(data) > min(limit, metadata.size_bytes or limit):
                    raise AvatarError(f"upload exceeds its declared size or the limit of {limit} bytes",
                                      code=StatusCode.RESOURCE_EXHAUSTED, stage="input")
            if metadata is None:
                raise InvalidInput("no metadata received")
            if metadata.size_bytes and len(data) != metadata.size_bytes:
                raise InvalidInput(f"received {len(data)} bytes but metadata.size_bytes is {metadata.size_bytes}")
            info = await self.deps.avatars.register(
                bytes(data), display_name=metadata.display_name, mime_type=metadata.mime_type
            )
        except DecodeError:
            await self._abort(context, InvalidInput("a request is not a valid RegisterAvatarRequest"))
            raise
        except AvatarError as error:
            await self._abort(context, error)
            raise
        return convert.avatar_pb(info)

    async def DeleteAvatar(self, request: pb.DeleteAvatarRequest, context: grpc.aio.ServicerContext) -> pb.DeleteAvatarResponse:
        try:
            await self.deps.avatars.delete(request.id)
        except AvatarError as error:
            await self._abort(context, error)
            raise
        return pb.DeleteAvatarResponse()

    # --------------------------------------------------------------------- info
    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext) -> pb.ServerInfo:
        deps, settings = self.deps, self.deps.settings
        setup = deps.renderer.setup()
        return pb.ServerInfo(
            version=__version__,
            renderer=deps.renderer.name,
            llm=deps.llm.name,
            tts=deps.tts.name,
            models=[pb.ModelInfo(name=m.name, runtime=m.runtime, device=m.device, precision=m.precision)
                    for m in deps.renderer.models()],
            voices=[pb.Voice(name=v.name, language=v.language) for v in deps.tts.voices()],
            limits=pb.Limits(
                max_text_chars=settings.limits.max_text_chars, max_sessions=settings.limits.max_sessions,
                max_upload_bytes=settings.limits.max_upload_bytes,
                session_idle_timeout_s=settings.limits.session_idle_timeout_s,
                turn_deadline_s=settings.limits.turn_deadline_s,
            ),
            capacity=pb.Capacity(
                active_sessions=len(deps.sessions),
                active_turns=sum(1 for s in deps.sessions if s.turn_running),
                frames_per_second=deps.renderer.capacity_fps(),
                draining=deps.draining,
                load_frames_per_second=float(sum(s.media.fps for s in deps.sessions if s.media.render)),
            ),
            instance_id=deps.instance_id,
            default_avatar=deps.avatars.default_id,
            face_registration=setup.face_registration,
            renderer_options=dict(setup.options),
        )
