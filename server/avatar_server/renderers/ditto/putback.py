"""Pastes rendered 512x512 face crops back into the avatar's full frame, batched on the engine's device.

The crop's affine is fixed per template frame, so its sampling grid and the warped soft mask are
computed once per avatar; pasting a batch is then one grid_sample and one blend.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from avatar_server.core.errors import RenderError


def soft_square_mask(size: int, inner: float = 0.9) -> np.ndarray:
    """(size, size) float32: 1 inside the central `inner` square, ramping linearly to 0 at the edges."""
    margin = (size - int(size * inner)) / 2.0
    coords = np.arange(size, dtype=np.float32) + 0.5
    ramp = np.clip(np.minimum(coords, size - coords) / max(margin, 1e-6), 0.0, 1.0)
    return np.minimum(ramp[:, None], ramp[None, :]).astype(np.float32)


def sampling_grid(crop_from_frame: np.ndarray, frame_size: tuple[int, int], crop_size: int) -> np.ndarray:
    """For every frame pixel, where it falls in the crop, as grid_sample coordinates (H, W, 2) in -1..1.

    `crop_from_frame` is the 2x3 affine taking frame pixel coordinates to crop pixel coordinates.
    """
    height, width = frame_size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    points = np.stack([xs, ys, np.ones_like(xs)], axis=-1)  # (H, W, 3)
    crop_points = points @ crop_from_frame.astype(np.float32).T  # (H, W, 2)
    return ((2.0 * crop_points + 1.0) / crop_size - 1.0).astype(np.float32)


class PasteBack:
    """Per-avatar paste-back tables on one device: grids (T, H, W, 2), masks (T, 1, H, W), backgrounds."""

    def __init__(self, grids: torch.Tensor, masks: torch.Tensor, backgrounds: torch.Tensor) -> None:
        self.grids = grids
        self.masks = masks
        self.backgrounds = backgrounds  # (T, 3, H, W) float 0..1

    @classmethod
    def build(
        cls, frames: np.ndarray, crop_from_frame: np.ndarray, crop_size: int, device: torch.device
    ) -> PasteBack:
        """From template frames (T, H, W, 3) uint8 and their crop affines (T, 2, 3)."""
        height, width = frames.shape[1:3]
        mask = torch.from_numpy(soft_square_mask(crop_size))[None, None]
        grids = torch.from_numpy(
            np.stack([sampling_grid(m, (height, width), crop_size) for m in crop_from_frame])
        )
        masks = F.grid_sample(mask.expand(len(frames), -1, -1, -1), grids, align_corners=False)
        # torch.tensor copies: the avatar's frames are shared and read-only.
        backgrounds = torch.tensor(frames).permute(0, 3, 1, 2).float() / 255.0
        return cls(grids.to(device), masks.to(device), backgrounds.to(device))

    def paste(self, renders: torch.Tensor, template_index: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) renders in 0..1 + (B,) template frame indices -> (B, 3, H, W) frames in 0..1."""
        grids = self.grids[template_index]
        warped = F.grid_sample(renders.float(), grids, align_corners=False)
        mask = self.masks[template_index]
        return warped * mask + self.backgrounds[template_index] * (1.0 - mask)


def to_rgb24_async(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) 0..1 -> (B, H, W, 3) uint8 host tensor, copied without waiting on a GPU
    (pinned memory): read it only after the device has reached this point (an event)."""
    return _to_host_async(_quantized(images).to(torch.uint8).permute(0, 2, 3, 1).contiguous())


def to_i420_async(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) 0..1 -> (B, H * 3 // 2, W) uint8 I420 host tensor (Y, then U, then V planes),
    converted on the images' device and copied like `to_rgb24_async`.

    Matches the encoder's CPU path (swscale's default RGB -> yuv420p, see media/video_frames.py)
    to within one level: the pixels are first rounded to 8-bit RGB as there, then BT.601 limited
    range; chroma is the mean of each horizontal pair filtered vertically with (1, 3, 3, 1) / 8
    (edge rows repeated), which is what swscale's bilinear 2:1 chroma reduction computes.
    """
    batch, _, height, width = images.shape
    if height % 2 or width % 2:
        raise RenderError(f"yuv420p needs even frame sides, got {width}x{height}")
    red, green, blue = _quantized(images).unbind(1)
    luma = 16.0 + (65.481 * red + 128.553 * green + 24.966 * blue) / 255.0
    blue_diff = 128.0 + (-37.797 * red - 74.203 * green + 112.0 * blue) / 255.0
    red_diff = 128.0 + (112.0 * red - 93.786 * green - 18.214 * blue) / 255.0
    planes = [luma] + [_half_chroma(plane) for plane in (blue_diff, red_diff)]
    flat = torch.cat([(plane + 0.5).clamp(0, 255).to(torch.uint8).flatten(1) for plane in planes], dim=1)
    return _to_host_async(flat.view(batch, height * 3 // 2, width))


def _quantized(images: torch.Tensor) -> torch.Tensor:
    """0..1 float -> 0..255 float holding whole numbers (what an 8-bit RGB frame holds)."""
    return torch.floor(images.float().clamp(0, 1) * 255.0 + 0.5)


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
