"""Eye conditions of LMDM: eye openness (2) and eye-ball movement (6), from mediapipe's 478 landmarks.

The landmarks are mediapipe's NORMALISED 3-D coordinates of the 512 crop (x / w, y / h, z / w; x and
y in 0..1), as the release computes them; pixel coordinates would be 512 times too large for the
condition the model was trained on. Per eye (image-left eye first): openness is three lid gaps over
the corner-to-corner width; movement is the iris offset from the eye's centre, as (direction to the
iris minus the outer-minus-inner corner direction) times the offset's length. Layout of the 6 values:
(x, y, z) x (left, right), i.e. x_l, x_r, y_l, y_r, z_l, z_r. float32 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MESH_POINTS = 478
EPSILON = 1e-8


@dataclass(frozen=True)
class EyeIndices:
    """Mediapipe indices of one eye: corners (outer, inner), three lid pairs, iris centre."""

    corners: tuple[int, int]
    lids: tuple[tuple[int, int], ...]
    iris: int


IMAGE_LEFT_EYE = EyeIndices((33, 133), ((145, 159), (144, 160), (153, 158)), 468)
IMAGE_RIGHT_EYE = EyeIndices((263, 362), ((374, 386), (373, 387), (380, 385)), 473)


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a - b) ** 2).sum(-1))


def _direction(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a - b) / (|a - b| + eps), per frame."""
    return (a - b) / (_distance(a, b)[:, None] + EPSILON)


def _one_eye(points: np.ndarray, eye: EyeIndices) -> tuple[np.ndarray, np.ndarray]:
    outer, inner = points[:, eye.corners[0]], points[:, eye.corners[1]]
    width = _distance(outer, inner)
    gaps = sum(_distance(points[:, low], points[:, high]) for low, high in eye.lids)
    opening = gaps / (width + EPSILON)
    centre = (outer + inner) * 0.5
    ball = points[:, eye.iris]
    movement = (_direction(ball, centre) - _direction(outer, inner)) * _distance(ball, centre)[:, None]
    return opening, movement


def eye_conditions(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, 478, 3) normalised mediapipe landmarks -> eye open (T, 2) and eye ball (T, 6), float32."""
    points = np.asarray(landmarks, dtype=np.float32)
    if points.ndim != 3 or points.shape[1:] != (MESH_POINTS, 3):
        raise ValueError(f"eye conditions need (T, {MESH_POINTS}, 3) landmarks, got {points.shape}")
    left_open, left_move = _one_eye(points, IMAGE_LEFT_EYE)
    right_open, right_move = _one_eye(points, IMAGE_RIGHT_EYE)
    opening = np.stack([left_open, right_open], axis=-1)
    movement = np.stack([left_move, right_move], axis=-1).reshape(len(points), 6)
    return opening.astype(np.float32), movement.astype(np.float32)
