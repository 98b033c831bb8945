"""Turns renderer frames (rgb24 or I420 arrays) into yuv420p PyAV frames for the H.264 encoder."""

from __future__ import annotations

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from avatar_server.core.errors import EncodeError
from avatar_server.core.frames import Frame

# Colour signalling for x264's VUI, matching swscale's default RGB->YUV conversion
# (BT.601, limited range); I420 frames from renderers must use the same convention.
X264_COLOUR_PARAMS = "colorprim=smpte170m:transfer=smpte170m:colormatrix=smpte170m:range=tv"


class FrameConverter:
    """Checks frames against the stream's size and converts them to yuv420p (reusing one scaler)."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self._reformatter = VideoReformatter()

    def to_yuv420p(self, frame: Frame) -> av.VideoFrame:
        data = frame.data
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            raise EncodeError("frame data must be a uint8 numpy array")
        if frame.format == "rgb24":
            expected: tuple[int, ...] = (self.height, self.width, 3)
        elif frame.format == "yuv420p":
            expected = (self.height * 3 // 2, self.width)
        else:
            raise EncodeError(f"unsupported frame format {frame.format!r}")
        if data.shape != expected:
            raise EncodeError(f"{frame.format} frame has shape {data.shape}, expected {expected}")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(data), format=frame.format)
        if frame.format == "yuv420p":
            return video_frame
        return self._reformatter.reformat(video_frame, format="yuv420p")
