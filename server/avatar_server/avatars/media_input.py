"""Decodes an uploaded portrait or base video into RGB frames, refusing what is not one."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image, ImageOps

from avatar_server.core.errors import InvalidInput

MAX_SIDE = 1024  # frames are scaled down to fit this; the renderers never need more
MAX_SOURCE_PIXELS = 64_000_000  # refuse decompression bombs before decoding them
MAX_IDLE_SECONDS = 10.0  # a base video's idle loop is cut to this
MAX_IDLE_FPS = 25.0  # faster videos keep every n-th frame: at most 250 frames are held and analysed
MIN_SIDE = 64

_IMAGE_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpg",
    b"BM": "bmp",
    b"GIF87a": "gif",
    b"GIF89a": "gif",
}


@dataclass(frozen=True)
class DecodedMedia:
    """Frames (T, H, W, 3) uint8 RGB with even H and W, their rate, and what they came from."""

    frames: np.ndarray
    fps: float
    source_type: str  # "image" or "video"
    extension: str  # for the stored source file


def sniff(data: bytes) -> tuple[str, str] | None:
    """("image" | "video", file extension) from the first bytes, or None if neither."""
    for magic, extension in _IMAGE_MAGIC.items():
        if data.startswith(magic):
            return "image", extension
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image", "webp"
    if data[4:8] == b"ftyp":
        return "video", "mp4"
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        return "video", "webm"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "video", "avi"
    return None


def decode_media(
    data: bytes,
    mime_type: str = "",
    *,
    size: tuple[int, int] | None = None,
    native: bool = False,
    max_frames: int | None = None,
) -> DecodedMedia:
    """The frames of an image or video upload, scaled to fit `MAX_SIDE` (even sizes) or to `size`;
    `native`: at the source's own size (a renderer that scales by its own rule). A video keeps its
    first `max_frames` idle frames when given.

    Raises `InvalidInput` saying what is wrong with anything else.
    """
    kind = sniff(data)
    if kind is None:
        declared = f" (declared {mime_type!r})" if mime_type else ""
        raise InvalidInput(
            f"the upload{declared} is neither an image nor a video we can read; "
            "send a PNG, JPEG, WebP or BMP portrait, or an MP4, MOV, WebM or AVI video"
        )
    source_type, extension = kind
    if source_type == "image":
        return DecodedMedia(_decode_image(data, size, native)[None], 0.0, "image", extension)
    frames, fps = _decode_video(data, size, native, max_frames)
    return DecodedMedia(frames, fps, "video", extension)


def fitted_size(width: int, height: int) -> tuple[int, int]:
    """The even (width, height) a source of this size is scaled to."""
    if min(width, height) < MIN_SIDE:
        raise InvalidInput(
            f"the picture is {width}x{height} pixels; it needs at least {MIN_SIDE} on each side"
        )
    scale = min(1.0, MAX_SIDE / max(width, height))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def _decode_image(data: bytes, size: tuple[int, int] | None, native: bool = False) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_SOURCE_PIXELS:
                raise InvalidInput(
                    f"the image is {image.width}x{image.height} pixels; the most we take is "
                    f"{MAX_SOURCE_PIXELS // 1_000_000} megapixels"
                )
            image = ImageOps.exif_transpose(image).convert("RGB")
            width, height = image.size if native else size or fitted_size(image.width, image.height)
            if (width, height) != image.size:
                image = image.resize((width, height), Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8).copy()
    except InvalidInput:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidInput(f"the image could not be decoded: {error}") from error


def _decode_video(
    data: bytes, size: tuple[int, int] | None, native: bool = False, max_frames: int | None = None
) -> tuple[np.ndarray, float]:
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise InvalidInput("the video has no video track")
            stream = container.streams.video[0]
            source_width, source_height = stream.codec_context.width, stream.codec_context.height
            if source_width * source_height > MAX_SOURCE_PIXELS:
                raise InvalidInput(
                    f"the video is {source_width}x{source_height} pixels; that is too large"
                )
            width, height = (
                (source_width, source_height) if native else size or fitted_size(source_width, source_height)
            )
            fps = float(stream.average_rate or stream.guessed_rate or 25)
            if not 1 <= fps <= 120:
                raise InvalidInput(f"the video's frame rate {fps:g} is not one we can play")
            step = max(1, math.ceil(fps / MAX_IDLE_FPS - 1e-6))
            fps /= step
            limit = int(round(MAX_IDLE_SECONDS * fps))
            if max_frames is not None:
                limit = min(limit, max_frames)
            resize = (
                {}
                if (width, height) == (source_width, source_height)
                else {"width": width, "height": height}
            )
            frames = []
            for index, frame in enumerate(container.decode(stream)):
                if index % step:
                    continue
                frames.append(frame.to_ndarray(format="rgb24", **resize))
                if len(frames) >= limit:
                    break
    except InvalidInput:
        raise
    except (av.FFmpegError, ValueError) as error:
        raise InvalidInput(f"the video could not be decoded: {error}") from error
    if not frames:
        raise InvalidInput("the video has no frames")
    return np.stack(frames), fps
