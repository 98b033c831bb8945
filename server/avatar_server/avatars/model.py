"""What an analysed avatar is: its idle frames and face geometry, as renderers see it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class AvatarInfo:
    """The public description of an avatar (mirrors avatar.v1.Avatar)."""

    id: str
    display_name: str
    source_type: str  # "image" or "video"
    width: int
    height: int
    frames: int
    content_sha256: str
    created: datetime
    builtin: bool = False


@dataclass(frozen=True)
class AvatarAssets:
    """An avatar analysed once at registration and loaded from the cache.

    `frames` are the idle frames, RGB uint8 (T, H, W, 3); T == 1 for a
    portrait image. `landmarks` are per-frame face landmarks in frame pixels
    (T, N, 2) float32, in the detector's layout (`landmark_layout`, e.g.
    "mediapipe478"). `face_boxes` are (T, 4) float32 x0, y0, x1, y1.
    `cache_dir` is this avatar's folder; a renderer keeps what it derives from
    the avatar under `cache_dir / <renderer name>`. `crop_box` is a square
    x0, y0, x1, y1 (float32) around the face in every frame, for renderers that
    work on a face crop; None where unknown. `source_path` is the upload as sent (full
    resolution), for renderers that work from it (Ditto); None where there is none.
    """

    info: AvatarInfo
    frames: np.ndarray
    fps: float
    landmarks: np.ndarray
    landmark_layout: str
    face_boxes: np.ndarray
    cache_dir: Path
    crop_box: np.ndarray | None = None
    source_path: Path | None = None
