"""What flows between a turn's stages (inside the pipeline; the client sees `events` instead)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatar_server.core.frames import Frame


@dataclass(frozen=True)
class AudioChunk:
    """Speech for the stages after the speech stage: int16 mono PCM at the clock rate, in clock
    order from the turn's start. `last` marks the turn's final chunk; by then the turn's
    speech is a whole number of frames long."""

    pcm: np.ndarray
    last: bool = False


@dataclass(frozen=True)
class RenderedFrame:
    """One video frame and the speech of its frame time (samples_per_frame int16 samples);
    `last` marks the turn's final frame."""

    image: Frame
    pcm: np.ndarray
    last: bool = False
