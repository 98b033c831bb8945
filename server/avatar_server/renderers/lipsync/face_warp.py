"""Smooth dense warps of a face region from a few moved landmarks (thin-plate splines).

A `TpsRegion` is built once per avatar region (mouth, eyes): it precomputes how a
move of each control point spreads over every pixel of the region, so a frame's
warp is a weighted sum of precomputed fields plus one `cv2.remap`. Fields fade
to zero at the region's border, so the warped region pastes back without seams.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Region:
    """An integer pixel rectangle x0, y0 (inclusive) to x1, y1 (exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def shifted(self, dx: int, dy: int) -> Region:
        """The same rectangle moved by whole pixels."""
        return Region(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)

    def slices(self) -> tuple[slice, slice]:
        """Row and column slices for indexing an (H, W, ...) array."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def region_around(points: np.ndarray, margin: float, frame_width: int, frame_height: int) -> Region:
    """The bounding box of `points` grown by `margin` pixels on every side, clipped to the frame."""
    low = np.floor(points.min(axis=0) - margin).astype(int)
    high = np.ceil(points.max(axis=0) + margin).astype(int)
    return Region(
        max(0, int(low[0])),
        max(0, int(low[1])),
        min(frame_width, int(high[0])),
        min(frame_height, int(high[1])),
    )


def _tps_kernel(distance: np.ndarray) -> np.ndarray:
    """The thin-plate radial function r^2 log r (0 at r = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        value = distance**2 * np.log(distance)
    return np.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0)


class TpsRegion:
    """Precomputed thin-plate-spline spreading of control-point moves over a region.

    Control points are given in frame pixels; zero-move anchors are added along
    the region's border. `smoothing` (pixels squared) relaxes exact interpolation
    so nearby points with different moves do not make the field ring.
    """

    def __init__(self, region: Region, controls: np.ndarray, *, smoothing: float = 4.0) -> None:
        self.region = region
        self.controls = controls.astype(np.float64)
        anchors = self._border_anchors(region)
        points = np.concatenate([self.controls, anchors]) - (region.x0, region.y0)
        count = len(points)
        self._control_count = len(self.controls)
        kernel = _tps_kernel(np.linalg.norm(points[:, None] - points[None], axis=2))
        kernel += np.eye(count) * smoothing
        affine = np.concatenate([np.ones((count, 1)), points], axis=1)
        system = np.zeros((count + 3, count + 3))
        system[:count, :count] = kernel
        system[:count, count:] = affine
        system[count:, :count] = affine.T
        # Columns of the inverse that map control moves (anchors are zero) to TPS weights.
        solve = np.linalg.pinv(system)[:, : self._control_count]

        height, width = region.height, region.width
        ys, xs = np.mgrid[0:height, 0:width]
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
        spread = np.empty((height * width, self._control_count), dtype=np.float32)
        for start in range(0, len(grid), 8192):
            chunk = grid[start : start + 8192]
            basis = np.concatenate(
                [
                    _tps_kernel(np.linalg.norm(chunk[:, None] - points[None], axis=2)),
                    np.ones((len(chunk), 1)),
                    chunk,
                ],
                axis=1,
            )
            spread[start : start + len(chunk)] = basis @ solve
        self._spread = spread
        self._taper = self._border_taper(height, width)

    @staticmethod
    def _border_anchors(region: Region) -> np.ndarray:
        step = max(4.0, min(region.width, region.height) / 10)
        xs = np.linspace(region.x0, region.x1 - 1, max(2, int(region.width / step) + 1))
        ys = np.linspace(region.y0, region.y1 - 1, max(2, int(region.height / step) + 1))[1:-1]
        top = np.stack([xs, np.full_like(xs, region.y0)], axis=1)
        bottom = np.stack([xs, np.full_like(xs, region.y1 - 1)], axis=1)
        left = np.stack([np.full_like(ys, region.x0), ys], axis=1)
        right = np.stack([np.full_like(ys, region.x1 - 1), ys], axis=1)
        return np.concatenate([top, bottom, left, right])

    @staticmethod
    def _border_taper(height: int, width: int) -> np.ndarray:
        ramp = max(2.0, 0.12 * min(height, width))
        ys = np.minimum(np.arange(height), np.arange(height)[::-1]) / ramp
        xs = np.minimum(np.arange(width), np.arange(width)[::-1]) / ramp
        taper = np.clip(np.minimum(ys[:, None], xs[None, :]), 0.0, 1.0)
        return (taper * taper * (3 - 2 * taper)).astype(np.float32)[..., None]

    def field(self, moves: np.ndarray) -> np.ndarray:
        """The dense forward displacement (H, W, 2) float32 for control moves (K, 2) in pixels."""
        flat = self._spread @ moves.astype(np.float32)
        return flat.reshape(self.region.height, self.region.width, 2) * self._taper


def backward_map(displacement: np.ndarray) -> np.ndarray:
    """Source positions (H, W, 2) float32, region pixels, for a forward displacement field.

    A pixel p of the output shows the source at q where q + D(q) = p; one
    fixed-point step q = p - D(p - D(p)) is accurate for smooth, small fields.
    """
    height, width = displacement.shape[:2]
    grid = _grid(height, width)
    first = grid - displacement
    refined = cv2.remap(
        displacement,
        first[..., 0],
        first[..., 1],
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return grid - refined


_GRIDS: dict[tuple[int, int], np.ndarray] = {}


def _grid(height: int, width: int) -> np.ndarray:
    """Pixel coordinates (H, W, 2) float32 x, y; cached per size."""
    key = (height, width)
    if key not in _GRIDS:
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        _GRIDS[key] = np.stack([xs, ys], axis=2)
    return _GRIDS[key]


def sample(frame: np.ndarray, region: Region, source: np.ndarray) -> np.ndarray:
    """The pixels of `frame` at region-relative `source` positions (H, W, 2): the warped region."""
    source = source.astype(np.float32, copy=False)
    map_x = source[..., 0] + np.float32(region.x0)
    map_y = source[..., 1] + np.float32(region.y0)
    return cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
