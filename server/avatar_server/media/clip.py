"""Encodes a short, ordinary MP4 (H.264 + optional AAC, moov first) such as an avatar's preview loop."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avatar_server.core.errors import EncodeError
from avatar_server.core.frames import Frame
from avatar_server.media.video_frames import X264_COLOUR_PARAMS, FrameConverter

_AUDIO_CHUNK = 1024


def encode_clip(
    frames: Sequence[Frame],
    fps: int,
    pcm: np.ndarray | None = None,
    clock_rate: int = 16000,
    *,
    crf: int = 23,
    preset: str = "veryfast",
) -> bytes:
    """A faststart MP4 of `frames` at `fps`, with `pcm` (int16 mono at `clock_rate`) as AAC if given."""
    if not frames:
        raise EncodeError("a clip needs at least one frame")
    if fps <= 0:
        raise EncodeError(f"bad fps {fps}")
    height, width = _frame_size(frames[0])
    if width % 2 or height % 2:
        raise EncodeError(f"video size must be even, got {width}x{height}")
    if pcm is not None and (not isinstance(pcm, np.ndarray) or pcm.ndim != 1 or pcm.dtype != np.int16):
        raise EncodeError("pcm must be a 1-D int16 numpy array")
    converter = FrameConverter(width, height)
    # faststart rewrites the file in place, which FFmpeg does only on a real file.
    with tempfile.TemporaryDirectory(prefix="clip-") as folder:
        path = Path(folder) / "clip.mp4"
        try:
            with av.open(str(path), "w", format="mp4", container_options={"movflags": "+faststart"}) as container:
                video = container.add_stream("libx264", rate=fps)
                video.width, video.height, video.pix_fmt = width, height, "yuv420p"
                video.codec_context.options = {
                    "preset": preset,
                    "crf": str(crf),
                    "x264-params": X264_COLOUR_PARAMS,
                }
                audio = None
                if pcm is not None and len(pcm):
                    audio = container.add_stream("aac", rate=clock_rate, layout="mono")
                    audio.codec_context.time_base = Fraction(1, clock_rate)
                for index, frame in enumerate(frames):
                    video_frame = converter.to_yuv420p(frame)
                    video_frame.pts = index
                    video_frame.time_base = Fraction(1, fps)
                    container.mux(video.encode(video_frame))
                container.mux(video.encode(None))
                if audio is not None:
                    _mux_audio(container, audio, pcm, clock_rate)
        except av.FFmpegError as error:
            raise EncodeError(f"clip encoding failed: {error}") from error
        return path.read_bytes()


def _frame_size(frame: Frame) -> tuple[int, int]:
    """(height, width) of a renderer frame in either layout."""
    if frame.format == "yuv420p":
        return frame.data.shape[0] * 2 // 3, frame.data.shape[1]
    return frame.data.shape[0], frame.data.shape[1]


def _mux_audio(container: av.container.OutputContainer, stream: av.AudioStream, pcm: np.ndarray, rate: int) -> None:
    samples = pcm.astype(np.float32) / 32768.0
    for start in range(0, len(samples), _AUDIO_CHUNK):
        chunk = samples[start : start + _AUDIO_CHUNK].reshape(1, -1)
        audio_frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
        audio_frame.sample_rate = rate
        audio_frame.pts = start
        audio_frame.time_base = Fraction(1, rate)
        container.mux(stream.encode(audio_frame))
    container.mux(stream.encode(None))
