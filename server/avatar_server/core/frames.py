"""Video frames as renderers hand them to the encoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One video frame.

    `rgb24`: (H, W, 3) uint8. `yuv420p`: (H * 3 // 2, W) uint8 in I420 layout
    (the Y plane, then U, then V), as a GPU renderer hands it to the encoder.
    """

    data: np.ndarray
    format: Literal["rgb24", "yuv420p"] = "rgb24"
