"""One avatar's mouth rig: moves lips, jaw and chin by a smooth warp and paints the inner mouth.

The face below the lips' parting line and the face above it are warped by two
thin-plate-spline layers (the jaw drops, the upper lip barely moves); where the
lips part, a dark cavity with a hint of teeth and tongue is painted. At rest the
frame is left untouched, so idle and speech frames join without a seam.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatar_server.avatars.landmarks import LandmarkGroups, mouth_width
from avatar_server.renderers.lipsync.face_warp import (
    Region,
    TpsRegion,
    backward_map,
    region_around,
    sample,
)
from avatar_server.renderers.lipsync.mouth_track import MouthPose

JAW_DROP = 0.36  # lower-lip drop at full opening, in mouth widths
SHAPES = ("open", "wide", "round")
CAVITY = np.array([62, 22, 26], np.float32)
TONGUE = np.array([150, 70, 75], np.float32)
DEFAULT_TEETH = np.array([222, 214, 200], np.float32)


@dataclass(frozen=True)
class _Layer:
    """Per-shape dense fields (3, H, W, 2) and control-point moves (3, K, 2) of one warp layer."""

    fields: np.ndarray
    moves: np.ndarray


class MouthRig:
    """Mouth motion for one face, built once from its resting landmarks.

    `max_shift` reserves room for the face to move (a looping base video): the
    rig's region stays inside the frame when shifted by up to that many pixels.
    """

    def __init__(
        self,
        rest_frame: np.ndarray,
        landmarks: np.ndarray,
        groups: LandmarkGroups,
        *,
        max_shift: float = 0.0,
    ) -> None:
        height, width = rest_frame.shape[:2]
        self.mouth_width = mouth_width(landmarks, groups)
        left_eye = landmarks[[groups.left_eye_upper[0], groups.left_eye_upper[-1]]].mean(axis=0)
        right_eye = landmarks[[groups.right_eye_upper[0], groups.right_eye_upper[-1]]].mean(axis=0)
        across = (right_eye - left_eye) / np.linalg.norm(right_eye - left_eye)
        down = np.array([-across[1], across[0]])

        self._upper_inner = list(groups.lips_inner_upper)
        self._lower_inner = list(groups.lips_inner_lower)
        corners = [
            groups.lips_outer_upper[0],
            groups.lips_outer_upper[-1],
            groups.lips_inner_upper[0],
            groups.lips_inner_upper[-1],
        ]
        upper = list(groups.lips_outer_upper[1:-1] + groups.lips_inner_upper[1:-1])
        lower = list(groups.lips_outer_lower[1:-1] + groups.lips_inner_lower[1:-1])
        jaw = list(groups.jaw[2:-2])  # the ends, by the ears, hardly move
        still = list(groups.nose[-3:] + groups.cheeks[2:6])  # nose base, lower cheeks
        controls = corners + upper + lower + jaw + still
        self._index = {landmark: row for row, landmark in enumerate(controls)}

        points = landmarks[controls].astype(np.float64)
        # Room below the chin for the jaw to drop into without folding the neck.
        shrink = int(np.ceil(max_shift))
        around = region_around(points, 0.25 * self.mouth_width, width, height)
        below = int(np.ceil(points[:, 1].max() + 0.7 * self.mouth_width))
        self.region = Region(
            max(around.x0, shrink),
            max(around.y0, shrink),
            min(around.x1, width - shrink),
            min(below, height - shrink),
        )
        tps = TpsRegion(self.region, points, smoothing=2.0)

        centre = landmarks[corners[:2]].mean(axis=0)
        half = self.mouth_width / 2
        side = ((points - centre) @ across) / half  # -1 .. 1 across the lips
        chin_side = ((points - landmarks[groups.chin]) @ across) / self.mouth_width
        mw, drop = self.mouth_width, JAW_DROP * self.mouth_width
        is_corner = np.zeros(len(controls), bool)
        is_corner[: len(corners)] = True
        is_upper = np.zeros(len(controls), bool)
        is_upper[len(corners) : len(corners) + len(upper)] = True
        is_lower = np.zeros(len(controls), bool)
        is_lower[len(corners) + len(upper) : len(corners) + len(upper) + len(lower)] = True
        is_jaw = np.zeros(len(controls), bool)
        is_jaw[
            len(corners) + len(upper) + len(lower) : len(corners)
            + len(upper)
            + len(lower)
            + len(jaw)
        ] = True
        middle = np.clip(1 - side**2, 0, 1)[:, None]
        outward = np.sign(side)[:, None] * across

        upper_moves = np.zeros((3, len(controls), 2))
        lower_moves = np.zeros((3, len(controls), 2))
        corner_moves = np.zeros((3, len(controls), 2))
        # open: the jaw drops and swings the lower lip and chin down; corners follow a little.
        lower_moves[0][is_lower] = drop * (1 - 0.45 * side[is_lower] ** 2)[:, None] * down
        lower_moves[0][is_jaw] = (
            0.9 * drop * np.exp(-((chin_side[is_jaw] / 0.8) ** 2))[:, None] * down
        )
        upper_moves[0][is_upper] = -0.12 * drop * middle[is_upper] * down
        corner_moves[0][is_corner] = 0.3 * drop * down - 0.04 * mw * outward[is_corner]
        # wide: corners pull out and slightly up, the lips stretch along.
        stretch = side[:, None] * across
        upper_moves[1][is_upper] = 0.09 * mw * stretch[is_upper]
        lower_moves[1][is_lower] = 0.09 * mw * stretch[is_lower] - 0.02 * mw * down
        corner_moves[1][is_corner] = 0.11 * mw * outward[is_corner] - 0.02 * mw * down
        # round: corners come in, the lips gather and pout.
        upper_moves[2][is_upper] = (
            -0.13 * mw * stretch[is_upper] - 0.05 * mw * middle[is_upper] * down
        )
        lower_moves[2][is_lower] = (
            -0.13 * mw * stretch[is_lower] + 0.05 * mw * middle[is_lower] * down
        )
        corner_moves[2][is_corner] = -0.12 * mw * outward[is_corner]

        # The inner contours move in pairs inside each layer: what the resting mouth
        # shows between them (teeth, or nothing) rides on the upper jaw, and the
        # layers never pull apart two points that sit together on a closed mouth.
        upper_rows = [self._index[i] for i in groups.lips_inner_upper[1:-1]]
        lower_rows = [self._index[i] for i in groups.lips_inner_lower[1:-1]]
        upper_moves[:, lower_rows] = upper_moves[:, upper_rows]
        lower_moves[:, upper_rows] = lower_moves[:, lower_rows]
        self._upper = self._layer(tps, upper_moves + corner_moves)
        self._lower = self._layer(tps, lower_moves + corner_moves)
        self._rest_inner_upper = landmarks[self._upper_inner].astype(np.float32)
        self._rest_inner_lower = landmarks[self._lower_inner].astype(np.float32)
        self._down = down.astype(np.float32)
        # Paint teeth only where the resting mouth shows none of its own.
        self._teeth, own_teeth = _resting_teeth(
            rest_frame, self._rest_inner_upper, self._rest_inner_lower
        )
        self._teeth_visibility = 1.0 - own_teeth
        self._rows = np.arange(self.region.height, dtype=np.float32)[:, None]
        self._cols = np.arange(self.region.width, dtype=np.float32)

    @staticmethod
    def _layer(tps: TpsRegion, moves: np.ndarray) -> _Layer:
        fields = np.stack([tps.field(m) for m in moves])
        return _Layer(fields=fields, moves=moves.astype(np.float32))

    @staticmethod
    def _gap(upper: np.ndarray, lower: np.ndarray) -> float:
        return float(np.linalg.norm(lower[2:-2] - upper[2:-2], axis=1).mean())

    def inner_lips(self, pose: MouthPose, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The open mouth's edges for `pose`, in frame pixels, corner to corner.

        The top edge is the bottom of what the upper jaw carries (the resting
        opening's lower edge, moved with the upper layer); the bottom edge is the
        lower lip's inner contour. At rest the two coincide.
        """
        weights = np.array([pose.open, pose.wide, pose.round], np.float32)
        rows = [self._index[i] for i in self._lower_inner]
        rest = self._rest_inner_lower + offset
        top = rest + np.tensordot(weights, self._upper.moves[:, rows], 1)
        bottom = rest + np.tensordot(weights, self._lower.moves[:, rows], 1)
        return top, bottom

    def apply(
        self, frame: np.ndarray, pose: MouthPose, offset: np.ndarray, *, out: np.ndarray
    ) -> None:
        """Writes the mouth region of `frame` moved to `pose` into `out`.

        `offset` (2,) is how far this frame's face sits from the rig's resting face.
        """
        shift = np.round(offset).astype(int)
        region = self.region.shifted(int(shift[0]), int(shift[1]))
        weights = np.array([pose.open, pose.wide, pose.round], np.float32)
        upper_source = backward_map(_blend(self._upper.fields, weights))
        lower_source = backward_map(_blend(self._lower.fields, weights))

        upper, lower = self.inner_lips(pose, offset)
        origin = np.array([region.x0, region.y0], np.float32)
        upper_local, lower_local = upper - origin, lower - origin
        below = self._below_parting(upper_local, lower_local)
        source = upper_source + below * (lower_source - upper_source)
        patch = sample(frame, region, source)

        opening = self._gap(upper, lower) / (0.1 * self.mouth_width)
        if opening > 0.02:
            self._paint_cavity(patch, upper_local, lower_local, min(1.0, opening))
        rows, cols = region.slices()
        out[rows, cols] = patch

    def _below_parting(self, upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """Weight (H, W, 1) of the lower (jaw) layer: 1 below the lips' parting line, 0 above.

        Between the corners the switch is sharp (the cavity hides it); beyond them it
        softens with distance, so the cheeks bend instead of tearing.
        """
        order = np.argsort(upper[:, 0])
        parting_upper = np.interp(self._cols, upper[order, 0], upper[order, 1])
        order = np.argsort(lower[:, 0])
        parting_lower = np.interp(self._cols, lower[order, 0], lower[order, 1])
        parting = 0.5 * (parting_upper + parting_lower)
        left, right = min(upper[0, 0], upper[-1, 0]), max(upper[0, 0], upper[-1, 0])
        outside = np.maximum(0.0, np.maximum(left - self._cols, self._cols - right))
        softness = 0.5 + 0.6 * outside
        weight = 0.5 + (self._rows - parting[None, :]) / (2 * softness[None, :])
        return np.clip(weight, 0.0, 1.0).astype(np.float32)[..., None]

    def _paint_cavity(
        self, patch: np.ndarray, upper: np.ndarray, lower: np.ndarray, strength: float
    ) -> None:
        """Paints the open mouth between the inner lip contours: dark cavity, teeth, tongue."""
        box = region_around(
            np.concatenate([upper, lower]),
            0.06 * self.mouth_width + 2,
            patch.shape[1],
            patch.shape[0],
        )
        if box.width <= 0 or box.height <= 0:
            return
        origin = np.array([box.x0, box.y0], np.float32)
        # Reach a little past the inner corners, where the resting mouth may show teeth.
        reach = (
            0.05 * self.mouth_width * (upper[-1] - upper[0]) / np.linalg.norm(upper[-1] - upper[0])
        )
        upper, lower = upper.copy(), lower.copy()
        upper[0] -= reach
        lower[0] -= reach
        upper[-1] += reach
        lower[-1] += reach
        mouth = np.concatenate([upper, lower[::-1]]) - origin
        tooth = 0.075 * self.mouth_width * self._down
        # Teeth taper towards the corners, where they recede behind the cheeks.
        taper = np.sin(np.linspace(0, np.pi, len(upper)))[:, None]
        upper_teeth = np.concatenate([upper, (upper + tooth * taper)[::-1]]) - origin
        lower_teeth = np.concatenate([lower, (lower - 0.6 * tooth * taper)[::-1]]) - origin
        tongue = np.concatenate([lower, (lower - 2.2 * tooth * taper)[::-1]]) - origin

        shape = (box.height, box.width)
        cavity = _polygon_mask(shape, mouth)
        if not cavity.any():
            return
        teeth = np.minimum(_polygon_mask(shape, upper_teeth), cavity) * self._teeth_visibility
        low_teeth = np.minimum(_polygon_mask(shape, lower_teeth), cavity) * 0.25
        tongue_mask = np.minimum(_polygon_mask(shape, tongue), cavity) * 0.6

        rows, cols = box.slices()
        region = patch[rows, cols].astype(np.float32)
        # Darker deeper in: the cavity's own mask, blurred, says how far inside a pixel is.
        blur = int(0.12 * self.mouth_width) // 2 * 2 + 3
        depth = cv2.GaussianBlur(cavity, (blur, blur), 0)[..., None]
        inside = (CAVITY + tongue_mask[..., None] * (TONGUE * 0.55 - CAVITY)) * (1.3 - 0.6 * depth)
        inside = inside + teeth[..., None] * (self._teeth * 0.92 - inside)
        inside = inside + low_teeth[..., None] * (self._teeth * 0.7 - inside)
        alpha = cv2.GaussianBlur(cavity, (3, 3), 0)[..., None] * np.float32(strength)
        patch[rows, cols] = np.clip(region + alpha * (inside - region), 0, 255).astype(np.uint8)


def _blend(fields: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted sum of per-shape fields (3, H, W, 2) -> (H, W, 2), skipping unused shapes."""
    total = np.zeros(fields.shape[1:], np.float32)
    for field, weight in zip(fields, weights, strict=True):
        if weight > 1e-4:
            cv2.scaleAdd(field, float(weight), total, total)
    return total


def _polygon_mask(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    """An anti-aliased 0..1 float32 mask of a polygon (sub-pixel vertices)."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(polygon * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    return mask.astype(np.float32) / 255.0


def _resting_teeth(
    frame: np.ndarray, upper: np.ndarray, lower: np.ndarray
) -> tuple[np.ndarray, float]:
    """(teeth colour, how much the resting mouth shows its own teeth, 0..1).

    Teeth are the bright, unsaturated pixels between the inner lip contours; with
    none there the colour is a natural white.
    """
    height, width = frame.shape[:2]
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(np.concatenate([upper, lower[::-1]])).astype(np.int32)], 1)
    pixels = frame[mask.astype(bool)].astype(np.float32)
    if len(pixels) < 12:
        return DEFAULT_TEETH, 0.0
    toothy = (pixels.mean(axis=1) > 130) & (np.ptp(pixels, axis=1) < 80)
    share = float(toothy.mean())
    if share < 0.15:
        return DEFAULT_TEETH, 0.0
    return np.median(pixels[toothy], axis=0), min(1.0, share / 0.4)
