"""Natural idle motion for a still portrait: blinks (eyelid warp) and a slow breathing sway.

Used to make the example avatar's idle video, for image previews, and by the
lip-sync renderer to keep portrait avatars alive. The motion repeats every
`period_frames`, so a clip of one period loops without a seam.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from avatar_server.avatars.landmarks import LandmarkGroups
from avatar_server.renderers.lipsync.face_warp import TpsRegion, backward_map, region_around, sample

BLINK_CLOSE_S = 0.09
BLINK_HOLD_S = 0.04
BLINK_OPEN_S = 0.15


def blink_closure(seconds_since_start: float) -> float:
    """How closed the eyes are (0 open .. 1 shut) at a time after a blink began."""
    t = seconds_since_start
    if t < 0:
        return 0.0
    if t < BLINK_CLOSE_S:
        x = t / BLINK_CLOSE_S
    elif t < BLINK_CLOSE_S + BLINK_HOLD_S:
        return 1.0
    elif t < BLINK_CLOSE_S + BLINK_HOLD_S + BLINK_OPEN_S:
        x = 1.0 - (t - BLINK_CLOSE_S - BLINK_HOLD_S) / BLINK_OPEN_S
    else:
        return 0.0
    return x * x * (3 - 2 * x)


class EyeRig:
    """Closes both eyes by pulling the upper lids down to meet the lower lids."""

    def __init__(
        self, landmarks: np.ndarray, groups: LandmarkGroups, width: int, height: int
    ) -> None:
        upper = list(groups.left_eye_upper[1:-1] + groups.right_eye_upper[1:-1])
        lower = list(groups.left_eye_lower[1:-1] + groups.right_eye_lower[1:-1])
        corners = [
            groups.left_eye_upper[0],
            groups.left_eye_upper[-1],
            groups.right_eye_upper[0],
            groups.right_eye_upper[-1],
        ]
        fixed = list(groups.brows) + corners
        eye_height = float(np.median(np.linalg.norm(landmarks[lower] - landmarks[upper], axis=1)))
        eye_span = np.ptp(landmarks[corners], axis=0).max()
        region = region_around(landmarks[upper + lower + fixed], 0.25 * eye_span, width, height)
        controls = landmarks[upper + lower + fixed]
        self._tps = TpsRegion(region, controls, smoothing=1.0)
        gap = landmarks[lower] - landmarks[upper]
        moves = np.zeros((len(controls), 2), dtype=np.float32)
        moves[: len(upper)] = 0.8 * gap
        moves[len(upper) : len(upper) + len(lower)] = -0.2 * gap
        self._closed_field = self._tps.field(moves)
        self.region = region
        self.eye_height = eye_height

    def apply(self, frame: np.ndarray, closure: float, *, out: np.ndarray) -> None:
        """Writes the eye region of `frame`, closed by `closure` (0..1), into `out`."""
        if closure <= 0.01:
            return
        source = backward_map(self._closed_field * np.float32(closure))
        rows, cols = self.region.slices()
        out[rows, cols] = sample(frame, self.region, source)


class IdleMotion:
    """Blink times and head sway for a still portrait, repeating every `period_frames`."""

    def __init__(
        self,
        landmarks: np.ndarray,
        groups: LandmarkGroups,
        width: int,
        height: int,
        *,
        fps: float,
        period_frames: int,
        seed: int = 7,
    ) -> None:
        self.fps = fps
        self.period_frames = period_frames
        self.eyes = EyeRig(landmarks, groups, width, height)
        face = landmarks[list(groups.face_oval)]
        face_height = float(np.ptp(face[:, 1]))
        self._pivot = (float(face[:, 0].mean()), float(face[:, 1].max() + 0.45 * face_height))
        self._scale = face_height / 200.0
        self._blink_starts = self._schedule_blinks(period_frames / fps, seed)

    @staticmethod
    def _schedule_blinks(period_s: float, seed: int) -> list[float]:
        rng = np.random.default_rng(seed)
        starts, t = [], 0.6 + rng.uniform(0, 0.8)
        while t < period_s - 0.6:
            starts.append(t)
            t += rng.uniform(2.2, 4.5)
        return starts

    def closure(self, index: int) -> float:
        """Eye closure at frame `index`."""
        t = (index % self.period_frames) / self.fps
        return max((blink_closure(t - start) for start in self._blink_starts), default=0.0)

    def sway(self, index: int) -> np.ndarray:
        """The 2x3 affine of the head's sway at frame `index` (small rotation, breathing lift)."""
        phase = 2 * math.pi * (index % self.period_frames) / self.period_frames
        angle = 0.6 * math.sin(phase) + 0.25 * math.sin(2 * phase + 1.1)
        lift = self._scale * (1.6 * math.sin(2 * phase + 0.4))
        drift = self._scale * (1.2 * math.sin(phase + 0.5))
        matrix = cv2.getRotationMatrix2D(self._pivot, angle, 1.0)
        matrix[0, 2] += drift
        matrix[1, 2] += lift
        return matrix

    def apply(self, frame: np.ndarray, index: int) -> np.ndarray:
        """Frame `index` of the idle motion: `frame` (the portrait, its mouth maybe moved) blinked and swayed."""
        closure = self.closure(index)
        if closure > 0.01:
            blinked = frame.copy()
            self.eyes.apply(frame, closure, out=blinked)
            frame = blinked
        height, width = frame.shape[:2]
        return cv2.warpAffine(
            frame,
            self.sway(index),
            (width, height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT101,
        )
