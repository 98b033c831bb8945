"""The face crop of Ditto's registration: a rotated square around face landmarks, as an affine.

The square is upright along the axis from the eyes' centre to the lips' centre; its side is the
larger extent of all landmarks in that frame times `scale`; it is shifted by `vx`, `vy` times the
side along the axis (negative `vy`: up, to hold more forehead). The release crops 2.3 x its
203-landmark box, shifted up 0.125, with rotation. Arithmetic is float32, like the authors'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

CROP_SIZE = 512  # side of the crop the networks see (then 256 for appearance and motion)
F32 = np.float32


@dataclass(frozen=True)
class CropParameters:
    """How a crop is framed around landmarks (the cfg's crop_scale, crop_vx_ratio, ...)."""

    scale: float = 2.3
    vx: float = 0.0
    vy: float = -0.125
    rotate: bool = True


@dataclass(frozen=True)
class EyeLipPoints:
    """Which landmarks of a layout mark the eyes and lips: eye centres are means of 4 points each,
    the lip centre the mean of 2."""

    left_eye: tuple[int, int, int, int]
    right_eye: tuple[int, int, int, int]
    lips: tuple[int, int]


LAYOUT_POINTS = {
    203: EyeLipPoints((0, 6, 12, 18), (24, 30, 36, 42), (48, 66)),
    106: EyeLipPoints((33, 35, 40, 39), (87, 89, 94, 93), (52, 61)),
    # mediapipe 478 (the fallback): eye corners and mid-lids, inner lip centres
    478: EyeLipPoints((33, 159, 133, 145), (263, 386, 362, 374), (13, 14)),
}


def _axis(points: np.ndarray) -> np.ndarray:
    """Unit vector from the eyes' centre to the lips' centre (down the face), float32."""
    layout = LAYOUT_POINTS[len(points)]
    eyes = (points[list(layout.left_eye)].mean(0) + points[list(layout.right_eye)].mean(0)) / 2
    lips = points[list(layout.lips)].mean(0)
    down = lips - eyes
    length = np.linalg.norm(down)
    return np.array([0, 1], dtype=F32) if length <= 1e-3 else down / length


def crop_transform(points: np.ndarray, size: int, params: CropParameters,
                   hull: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(M_o2c, M_c2o), both 3x3 float32: frame pixels -> crop pixels and back, for a `size` square.

    `points` (N, 2) in a known layout (203, 106 or mediapipe 478) give the axis; `hull` (default:
    all of them) gives the extent."""
    points = np.asarray(points, dtype=F32)
    hull = points if hull is None else np.asarray(hull, dtype=F32)
    down = _axis(points)
    across = np.array([down[1], -down[0]], dtype=F32)
    angle = math.acos(float(across[0])) * (-1.0 if across[1] < 0 else 1.0)
    centre0 = hull.mean(0)
    local = (hull - centre0) @ np.stack([across, down]).T
    low, high = local.min(0), local.max(0)
    middle = (low + high) / 2
    side = float(max(high - low)) * params.scale
    centre = centre0 + across * middle[0] + down * middle[1]
    centre = centre + across * F32(params.vx * side) + down * F32(params.vy * side)
    s = size / side
    half = size / 2
    cx, cy = float(centre[0]), float(centre[1])
    if params.rotate:
        c, n = math.cos(angle), math.sin(angle)
        o2c = [[s * c, s * n, half - s * (c * cx + n * cy)], [-s * n, s * c, half - s * (-n * cx + c * cy)]]
    else:
        o2c = [[s, 0.0, half - s * cx], [0.0, s, half - s * cy]]
    m_o2c = np.vstack([np.array(o2c, dtype=F32), np.array([0, 0, 1], dtype=F32)])
    return m_o2c, np.linalg.inv(m_o2c)


def warp_crop(frame: np.ndarray, m_o2c: np.ndarray, size: int) -> np.ndarray:
    """The `size` x `size` crop of an RGB frame (bilinear, black outside the frame)."""
    return cv2.warpAffine(frame, m_o2c[:2, :], (size, size), flags=cv2.INTER_LINEAR)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(N, 2) points through the affine part of a 2x3 or 3x3 matrix."""
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def network_input(crop: np.ndarray, side: int = 256) -> np.ndarray:
    """A crop -> the (side, side, 3) uint8 image the appearance and motion networks take (area filter)."""
    return cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
