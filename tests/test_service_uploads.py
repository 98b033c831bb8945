"""Avatar uploads over gRPC: limits before decoding, server-made ids, nothing outside the data folder."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
import skimage.data
from avatar.v1 import avatar_pb2 as pb
from avatar_server.core.frames import Frame
from avatar_server.media.clip import encode_clip
from conftest import running_service
from service_helpers import Conversation

CHUNK = 64 * 1024
LIMIT = 2 * 1024 * 1024


def _png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels, with one tiny (bomb-like) data chunk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 65536)) + chunk(b"IEND", b""))


def _requests(data: bytes, *, name: str = "upload", mime: str = "image/png",
              declared: int | None = None) -> list[pb.RegisterAvatarRequest]:
    size = len(data) if declared is None else declared
    parts = [pb.RegisterAvatarRequest(
        metadata=pb.AvatarUpload(display_name=name, mime_type=mime, size_bytes=size))]
    parts += [pb.RegisterAvatarRequest(chunk=data[i:i + CHUNK]) for i in range(0, len(data), CHUNK)]
    return parts


async def _register(stub, parts: list[pb.RegisterAvatarRequest]) -> pb.Avatar:  # type: ignore[no-untyped-def]
    async def stream():  # type: ignore[no-untyped-def]
        for part in parts:
            yield part

    return await stub.RegisterAvatar(stream(), timeout=120)


async def _refused(stub, parts: list[pb.RegisterAvatarRequest]) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _register(stub, parts)
    return raised.value


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with (size, mtime_ns) for files, (-1, 0) for folders."""
    listing = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            listing[os.path.join(folder, name)] = (-1, 0)
        for name in files:
            path = os.path.join(folder, name)
            with_stat = os.stat(path)
            listing[path] = (with_stat.st_size, with_stat.st_mtime_ns)
    return listing


def _watched(data_dir: Path) -> dict[str, tuple[int, int]]:
    """This run's whole pytest temp tree (the data folder and its neighbours) and /etc/passwd."""
    listing = _tree(data_dir.parent)
    passwd = os.stat("/etc/passwd")
    listing["/etc/passwd"] = (passwd.st_size, passwd.st_mtime_ns)
    return listing


@pytest.mark.parametrize(
    ("data", "declared", "code", "detail"),
    [
        (b"hello, I am not a picture" * 40, None, grpc.StatusCode.INVALID_ARGUMENT, "neither an image"),
        (b"", None, grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, LIMIT + 1, grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds the limit"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * (LIMIT + 10), 0, grpc.StatusCode.RESOURCE_EXHAUSTED, "the limit"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 5000, 10_000, grpc.StatusCode.INVALID_ARGUMENT, "size_bytes"),
        (_png_header_only(9000, 9000), None, grpc.StatusCode.INVALID_ARGUMENT, "megapixels"),
        (_png(np.zeros((40, 40, 3), np.uint8)), None, grpc.StatusCode.INVALID_ARGUMENT, "at least 64"),
    ],
    ids=["not-media", "empty", "declared-too-big", "sent-too-big", "size-mismatch",
         "too-many-pixels", "too-small"],
)
async def test_bad_uploads_get_precise_statuses_and_leave_nothing(data_dir, data, declared, code, detail) -> None:
    async with running_service(data_dir, max_upload_bytes=LIMIT) as service:
        before = await service.stub.ListAvatars(pb.ListAvatarsRequest())
        tree = _watched(data_dir)
        error = await _refused(service.stub, _requests(data, declared=declared))
        assert error.code() == code, error.details()
        assert detail in error.details()
        assert _watched(data_dir) == tree
        assert await service.stub.ListAvatars(pb.ListAvatarsRequest()) == before


async def test_more_bytes_than_declared_are_refused_before_the_rest_arrives(data_dir) -> None:
    async with running_service(data_dir, max_upload_bytes=LIMIT) as service:
        error = await _refused(service.stub, _requests(b"\x89PNG\r\n\x1a\n" + b"\0" * 5000, declared=1000))
        assert error.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
        assert "declared" in error.details()


@pytest.mark.parametrize(
    ("parts", "detail"),
    [
        ([pb.RegisterAvatarRequest(chunk=b"\x89PNG")], "must carry metadata"),
        ([], "no metadata"),
        (_requests(b"x") + _requests(b"x")[:1], "only chunk messages"),
        (_requests(b"x", name="n" * 81), "display_name"),
        (_requests(_png(skimage.data.astronaut()), name="bell\x07"), "display name"),
    ],
    ids=["chunk-first", "nothing", "metadata-twice", "long-name", "control-char-name"],
)
async def test_malformed_upload_streams_are_invalid_argument(data_dir, parts, detail) -> None:
    async with running_service(data_dir, max_upload_bytes=LIMIT) as service:
        error = await _refused(service.stub, parts)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert detail in error.details()


@pytest.mark.parametrize(
    "avatar_id",
    ["../../etc/passwd", "/etc/passwd", "astronaut/../../..", "..", "av_../../x",
     "av_" + "0" * 20, "AV_" + "0" * 20, "%2e%2e%2fetc", "astronaut\0", "x" * 4096],
)
async def test_path_like_ids_are_not_found_and_touch_nothing(data_dir, avatar_id) -> None:
    async with running_service(data_dir) as service:
        tree = _watched(data_dir)
        for call, request in (
            (service.stub.GetAvatar, pb.GetAvatarRequest(id=avatar_id)),
            (service.stub.DeleteAvatar, pb.DeleteAvatarRequest(id=avatar_id)),
            (service.stub.GetAvatarPreview, pb.GetAvatarPreviewRequest(id=avatar_id)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(request)
            assert raised.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await Conversation(service.stub, pb.SessionConfig(avatar=avatar_id)).next()
        assert raised.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
        assert _watched(data_dir) == tree
        assert os.path.getsize("/etc/passwd") > 0


async def test_builtin_avatar_cannot_be_deleted(data_dir) -> None:
    async with running_service(data_dir) as service:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await service.stub.DeleteAvatar(pb.DeleteAvatarRequest(id="astronaut"))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (await service.stub.GetAvatar(pb.GetAvatarRequest(id="astronaut"))).builtin


async def test_good_upload_is_listed_usable_in_a_session_and_deleted(data_dir) -> None:
    portrait = _png(skimage.data.astronaut())
    hostile_name = "../../../etc/cron.d/x\\..\\evil"
    async with running_service(data_dir, max_upload_bytes=LIMIT, echo_token_delay_s=0.005) as service:
        stub = service.stub
        tree = _watched(data_dir)
        avatar = await _register(stub, _requests(portrait, name=hostile_name))
        assert avatar.id.startswith("av_") and len(avatar.id) == 23 and "/" not in avatar.id
        assert avatar.display_name == hostile_name and avatar.source_type == "image"
        assert not avatar.builtin and avatar.frames == 1 and avatar.width >= 64

        added = set(_watched(data_dir)) - set(tree)
        folder = str(data_dir / "avatars" / avatar.id)
        assert added and all(path == folder or path.startswith(folder + os.sep) for path in added), added
        assert [a.id for a in (await stub.ListAvatars(pb.ListAvatarsRequest())).avatars].count(avatar.id) == 1
        assert await _register(stub, _requests(portrait, name="same bytes")) == avatar  # content-addressed

        talk = Conversation(stub, pb.SessionConfig(avatar=avatar.id))
        opening = await talk.until("video_init")
        started = opening[0].session_started
        assert started.avatar.id == avatar.id
        assert (started.width, started.height) == (avatar.width, avatar.height)
        talk.say("Hello from my own face.")
        events = await talk.until("turn_completed", "error")
        assert events[-1].HasField("turn_completed"), events[-1]
        assert any(e.HasField("video_segment") for e in events)
        await talk.close()

        await stub.DeleteAvatar(pb.DeleteAvatarRequest(id=avatar.id))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetAvatar(pb.GetAvatarRequest(id=avatar.id))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert avatar.id not in [a.id for a in (await stub.ListAvatars(pb.ListAvatarsRequest())).avatars]
        changed = {path for path, stat in _watched(data_dir).items() if tree.get(path) != stat}
        assert changed <= {str(data_dir / "avatars")}, changed  # only the folder's own mtime moved
        assert set(tree) == set(_watched(data_dir))


async def test_long_video_upload_keeps_only_the_idle_loop_limit(data_dir) -> None:
    """A 12 s video is cut to the 10 s idle-loop limit (MAX_IDLE_SECONDS), not decoded whole."""
    from avatar_server.avatars.media_input import MAX_IDLE_SECONDS

    still = skimage.data.astronaut()
    fps, seconds = 2, 12
    clip = encode_clip([Frame(np.roll(still, i % 4, axis=1)) for i in range(fps * seconds)], fps)
    async with running_service(data_dir, max_upload_bytes=LIMIT) as service:
        avatar = await _register(service.stub, _requests(clip, name="long clip", mime="video/mp4"))
        try:
            assert avatar.source_type == "video"
            assert avatar.frames == int(MAX_IDLE_SECONDS * fps)
        finally:
            await service.stub.DeleteAvatar(pb.DeleteAvatarRequest(id=avatar.id))
