"""Test helpers for the media layer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from avatar_server.core.frames import Frame
from avatar_server.media.encoder import EncodedSegment, SegmentEncoder


def encode_segment(encoder: SegmentEncoder, frames: Sequence[Frame], pcm: np.ndarray) -> EncodedSegment:
    """One segment of `frames` and their PCM, fed the way the pipeline feeds the encoder."""
    for frame in frames:
        encoder.add_frame(frame)
    return encoder.finish_segment(pcm)
