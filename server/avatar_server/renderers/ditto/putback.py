"""Pastes rendered 512x512 face crops back into the avatar's full frames, batched on the engine's device.

As the release does it: the render (0..1, scaled to 0..255) and a soft mask (1 inside the central
0.9 of the square, linear ramps at the edges, radial ramps in the corners) are warped into the
frame with the crop's affine, bilinearly, sampling where OpenCV's warpAffine samples (positions in
1/32 pixel steps, from its fixed-point arithmetic, so a paste matches the authors' to float
rounding), then blended over the template frame and TRUNCATED to whole levels like their blend.
Per template frame only the affine's fixed-point row and column terms are kept (a few KB); the
sampling grid of a batch is built from them on the device, for the frame region the crops reach.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from avatar_server.core.errors import RenderError

MASK_INNER = 0.9
_AB_BITS, _INTER_BITS = 10, 5  # OpenCV's warpAffine: coefficient and sub-pixel bits
_AB_SCALE = 1 << _AB_BITS
_ROUND_DELTA = _AB_SCALE // (1 << _INTER_BITS) // 2
_SUBPIXELS = 1 << _INTER_BITS


def release_mask(size: int = 512, inner: float = MASK_INNER) -> np.ndarray:
    """(size, size) float32: 1 in the central `inner` square; each edge band ramps linearly from 0 at
    the border to 1 at the square; each corner is 1 minus the distance (in band widths) from the
    square's corner, clipped at 0."""
    side = int(size * inner)
    lead = (size - side) // 2
    trail = size - lead - side
    profile = np.concatenate([np.linspace(0, 1, lead), np.ones(side), np.linspace(1, 0, trail)])
    outside = np.ones(size, bool)
    outside[lead:lead + side] = False
    mask = np.ones((size, size), np.float32)
    edge = profile.astype(np.float32)
    mask[outside, :] = edge[outside, None]
    mask[:, outside] = edge[None, outside]
    gap = 1.0 - profile[outside]  # distance from the square, in band widths
    corner = np.sqrt(gap[:, None] ** 2 + gap[None, :] ** 2).astype(np.float32)
    mask[np.ix_(outside, outside)] = 1 - np.clip(corner, 0, 1)
    return mask


def fixed_point_terms(frame_from_crop: np.ndarray, frame_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """warpAffine's fixed-point source positions as separable terms, int32: per output row y (2, H)
    round((a01 y + a02) 1024) + 16 for x and for y; per output column x (2, W) round(a00 x 1024) for x,
    round(a10 x 1024) for y (a: the frame -> crop inverse of `frame_from_crop`)."""
    height, width = frame_size
    inverse = cv2.invertAffineTransform(np.asarray(frame_from_crop, np.float64)[:2])
    ys, xs = np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64)
    rows = np.stack([np.rint((inverse[0, 1] * ys + inverse[0, 2]) * _AB_SCALE) + _ROUND_DELTA,
                     np.rint((inverse[1, 1] * ys + inverse[1, 2]) * _AB_SCALE) + _ROUND_DELTA])
    cols = np.stack([np.rint(inverse[0, 0] * xs * _AB_SCALE), np.rint(inverse[1, 0] * xs * _AB_SCALE)])
    return rows.astype(np.int32), cols.astype(np.int32)


def sampling_grid(rows: torch.Tensor, cols: torch.Tensor, crop_size: int) -> torch.Tensor:
    """(B, 2, h) row and (B, 2, w) column terms -> (B, h, w, 2) grid_sample coordinates in -1..1
    (align_corners=False): warpAffine's positions, in 1/32 pixel steps."""
    shift = _AB_BITS - _INTER_BITS
    x = (rows[:, 0, :, None] + cols[:, 0, None, :]) >> shift
    y = (rows[:, 1, :, None] + cols[:, 1, None, :]) >> shift
    grid = torch.stack([x, y], dim=-1).float() / _SUBPIXELS
    return (2.0 * grid + 1.0) / crop_size - 1.0


def crop_region(frame_from_crop: np.ndarray, frame_size: tuple[int, int], crop_size: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the frame pixels the crop square can reach (a pixel margin around its image);
    outside, the warped mask is exactly 0 and a paste leaves the frame as it is."""
    corners = np.array([[0, 0], [crop_size, 0], [0, crop_size], [crop_size, crop_size]], np.float64)
    m = np.asarray(frame_from_crop, np.float64)
    points = corners @ m[:2, :2].T + m[:2, 2]
    height, width = frame_size
    x0, y0 = np.floor(points.min(0)).astype(int) - 2
    x1, y1 = np.ceil(points.max(0)).astype(int) + 2
    return max(0, y0), min(height, max(0, y1)), max(0, x0), min(width, max(0, x1))


class PasteBack:
    """Per-avatar paste-back state on one device: fixed-point row and column terms of each template
    frame's affine, limited to the region all crops reach; template frames (T, H, W, 3) uint8."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, region: tuple[int, int, int, int],
                 backgrounds: torch.Tensor, mask: torch.Tensor) -> None:
        self.rows, self.cols, self.region = rows, cols, region
        self.backgrounds = backgrounds
        self.mask = mask  # (1, 1, S, S)

    @classmethod
    def build(cls, frames: np.ndarray, frame_from_crop: np.ndarray, crop_size: int, device: torch.device) -> PasteBack:
        """From template frames (T, H, W, 3) uint8 and their crop -> frame affines (T, 3, 3) or (T, 2, 3)."""
        size = frames.shape[1:3]
        regions = np.array([crop_region(m, size, crop_size) for m in frame_from_crop])
        y0, x0 = regions[:, [0, 2]].min(0)
        y1, x1 = regions[:, [1, 3]].max(0)
        terms = [fixed_point_terms(m, size) for m in frame_from_crop]
        rows = torch.from_numpy(np.stack([r[:, y0:y1] for r, _ in terms]))
        cols = torch.from_numpy(np.stack([c[:, x0:x1] for _, c in terms]))
        mask = torch.from_numpy(release_mask(crop_size))[None, None]
        # torch.tensor copies: the avatar's frames are shared and read-only.
        return cls(rows.to(device), cols.to(device), (int(y0), int(y1), int(x0), int(x1)),
                   torch.tensor(frames).to(device), mask.to(device))

    def paste(self, renders: torch.Tensor, template_index: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) renders in 0..1 + (B,) template indices -> (B, 3, H, W) frames: float32 whole
        levels 0..255 (truncated, as the release's blend)."""
        frames = self.backgrounds[template_index].permute(0, 3, 1, 2).float()
        y0, y1, x0, x1 = self.region
        if y1 <= y0 or x1 <= x0:  # the crop lies outside the frame
            return frames
        grid = sampling_grid(self.rows[template_index], self.cols[template_index], renders.shape[-1])
        pixels = renders.float().clamp(0, 1) * 255.0
        warped = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        mask = F.grid_sample(self.mask.expand(len(grid), -1, -1, -1), grid, mode="bilinear",
                             padding_mode="zeros", align_corners=False).clamp(0, 1)
        background = frames[:, :, y0:y1, x0:x1]
        frames[:, :, y0:y1, x0:x1] = torch.floor((warped * mask + background * (1.0 - mask)).clamp(0, 255))
        return frames


def to_rgb24_async(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) whole levels 0..255 -> (B, H, W, 3) uint8 host tensor, copied without waiting on a
    GPU (pinned memory): read it only after the device has reached this point (an event)."""
    return _to_host_async(pixels.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous())


def to_i420_async(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) whole levels 0..255 -> (B, H * 3 // 2, W) uint8 I420 host tensor (Y, then U, then V
    planes), converted on the pixels' device and copied like `to_rgb24_async`.

    Matches the encoder's CPU path (swscale's default RGB -> yuv420p, see media/video_frames.py)
    to within one level: BT.601 limited range; chroma is the mean of each horizontal pair filtered
    vertically with (1, 3, 3, 1) / 8 (edge rows repeated), which is what swscale's bilinear 2:1
    chroma reduction computes.
    """
    batch, _, height, width = pixels.shape
    if height % 2 or width % 2:
        raise RenderError(f"yuv420p needs even frame sides, got {width}x{height}")
    red, green, blue = pixels.float().clamp(0, 255).unbind(1)
    luma = 16.0 + (65.481 * red + 128.553 * green + 24.966 * blue) / 255.0
    blue_diff = 128.0 + (-37.797 * red - 74.203 * green + 112.0 * blue) / 255.0
    red_diff = 128.0 + (112.0 * red - 93.786 * green - 18.214 * blue) / 255.0
    planes = [luma] + [_half_chroma(plane) for plane in (blue_diff, red_diff)]
    flat = torch.cat([(plane + 0.5).clamp(0, 255).to(torch.uint8).flatten(1) for plane in planes], dim=1)
    return _to_host_async(flat.view(batch, height * 3 // 2, width))


def _half_chroma(plane: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> (B, H/2, W/2): horizontal pair mean, then vertical (1, 3, 3, 1) / 8."""
    pairs = (plane[:, :, 0::2] + plane[:, :, 1::2]) * 0.5
    padded = torch.cat([pairs[:, :1], pairs, pairs[:, -1:]], dim=1)
    return (padded[:, 0:-2:2] + 3.0 * padded[:, 1:-1:2] + 3.0 * padded[:, 2::2] + padded[:, 3::2]) * 0.125


def _to_host_async(pixels: torch.Tensor) -> torch.Tensor:
    """A device uint8 tensor -> a host tensor, through pinned memory without waiting (CPU: as is)."""
    if pixels.device.type == "cpu":
        return pixels
    host = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(pixels, non_blocking=True)
    return host
