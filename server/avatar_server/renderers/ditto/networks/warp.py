"""Warping network: moves the appearance volume from source to driving keypoints (warp_network.pth).

A dense-motion estimator turns the 21 keypoint pairs into 22 candidate flows (identity + one per
keypoint), weighs them with a softmax mask predicted by a 3-D hourglass, and estimates an occlusion
map; the volume is then resampled with a trilinear 3-D grid sample and flattened to 2-D features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from avatar_server.renderers.ditto.networks.blocks import ConvNormAct2d, Hourglass3d

KEYPOINT_VARIANCE = 0.01


@dataclass(frozen=True)
class WarpSize:
    """Widths and kernels of the warp network; `FULL` is the official one.

    The tiny variant also shrinks kernels of the dense-motion convs (1 instead of 3 or 7) so that
    a tiny frame stays cheap on a CPU: tiny shapes are NOT official shapes.
    """

    num_kp: int = 21
    volume_channels: int = 32
    volume_depth: int = 16
    output_base: int = 64  # output channels = output_base * 4 (two down blocks upstream)
    motion_base: int = 32
    motion_cap: int = 1024
    motion_levels: int = 5
    compressed: int = 4
    hourglass_kernel: int = 3
    mask_kernel: int = 7
    occlusion_kernel: int = 7

    @property
    def output_channels(self) -> int:
        return self.output_base * 4


FULL = WarpSize()
TINY = WarpSize(
    volume_channels=2,
    volume_depth=4,
    output_base=1,
    motion_base=4,
    motion_cap=8,
    compressed=1,
    hourglass_kernel=1,
    mask_kernel=1,
    occlusion_kernel=3,
)


def grid_sample_3d(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Trilinear sampling of (N, C, D, H, W) at grid (N, d, h, w, 3) xyz in [-1, 1], zeros outside.

    Runs in float32 (fp16 sampling coordinates lose a texel of precision); the ONNX files hold
    this as one custom op that the ONNX and TensorRT runtimes rewrite (see onnx_graph.py).
    """
    out = F.grid_sample(volume.float(), grid.float(), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(volume.dtype)


def identity_grid(depth: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(D, H, W, 3) normalized xyz coordinates of every voxel centre line, corners at -1 and 1."""
    def axis(n: int) -> torch.Tensor:
        return torch.arange(n, dtype=like.dtype, device=like.device) * (2.0 / (n - 1)) - 1.0

    z, y, x = torch.meshgrid(axis(depth), axis(height), axis(width), indexing="ij")
    return torch.stack([x, y, z], dim=-1)


class DenseMotion(nn.Module):
    """Predicts the dense deformation field and the occlusion map from keypoint pairs."""

    def __init__(self, size: WarpSize) -> None:
        super().__init__()
        self.size = size
        candidates = size.num_kp + 1
        self.hourglass = Hourglass3d(
            size.motion_base,
            candidates * (size.compressed + 1),
            size.motion_levels,
            size.motion_cap,
            size.hourglass_kernel,
        )
        hidden = self.hourglass.out_channels
        self.mask = nn.Conv3d(hidden, candidates, kernel_size=size.mask_kernel, padding=size.mask_kernel // 2)
        self.compress = nn.Conv3d(size.volume_channels, size.compressed, kernel_size=1)
        self.norm = nn.BatchNorm3d(size.compressed)
        self.occlusion = nn.Conv2d(
            hidden * size.volume_depth, 1, kernel_size=size.occlusion_kernel, padding=size.occlusion_kernel // 2
        )

    def forward(
        self, volume: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, depth, height, width = volume.shape
        kp = self.size.num_kp
        compressed = F.relu(self.norm(self.compress(volume)))
        channels = compressed.shape[1]

        grid = identity_grid(depth, height, width, kp_source).unsqueeze(0)  # (1, D, H, W, 3)
        shift = (kp_source - kp_driving).view(batch, kp, 1, 1, 1, 3)
        flows = torch.cat(
            [grid.unsqueeze(1).expand(batch, 1, depth, height, width, 3), grid.unsqueeze(1) + shift], dim=1
        )  # (B, K+1, D, H, W, 3): candidate source position of every driving voxel

        repeated = compressed.unsqueeze(1).expand(batch, kp + 1, channels, depth, height, width)
        warped = grid_sample_3d(
            repeated.reshape(batch * (kp + 1), channels, depth, height, width),
            flows.reshape(batch * (kp + 1), depth, height, width, 3),
        ).view(batch, kp + 1, channels, depth, height, width)

        heat = self._gaussian(kp_driving, grid) - self._gaussian(kp_source, grid)  # (B, K, D, H, W)
        heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], dim=1).unsqueeze(2).to(warped.dtype)

        features = torch.cat([heat, warped], dim=2).view(batch, -1, depth, height, width)
        hidden = self.hourglass(features)

        weights = F.softmax(self.mask(hidden), dim=1)  # (B, K+1, D, H, W)
        deformation = (flows * weights.unsqueeze(-1)).sum(dim=1)  # (B, D, H, W, 3)
        occlusion = torch.sigmoid(self.occlusion(hidden.reshape(batch, -1, height, width)))
        return deformation, occlusion

    @staticmethod
    def _gaussian(keypoints: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        batch, kp, _ = keypoints.shape
        distance = (grid.unsqueeze(1) - keypoints.view(batch, kp, 1, 1, 1, 3)).pow(2).sum(-1)
        return torch.exp(-0.5 * distance / KEYPOINT_VARIANCE)


class WarpNetwork(nn.Module):
    """(B, C, D, 64, 64) volume + keypoints (B, 21, 3) x2 -> occlusion-masked (B, 256, 64, 64) features.

    Keypoints should stay float32 when the weights are fp16: coordinates, Gaussians and the
    deformation field are computed in the keypoints' dtype, the convolutions in the volume's.
    """

    def __init__(self, size: WarpSize = FULL) -> None:
        super().__init__()
        self.size = size
        self.dense_motion_network = DenseMotion(size)
        flat = size.volume_channels * size.volume_depth
        self.third = ConvNormAct2d(flat, size.output_channels, leaky=True)
        self.fourth = nn.Conv2d(size.output_channels, size.output_channels, kernel_size=1)

    def forward(
        self, feature_3d: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor
    ) -> torch.Tensor:
        deformation, occlusion = self.dense_motion_network(feature_3d, kp_source, kp_driving)
        warped = grid_sample_3d(feature_3d, deformation)
        batch, channels, depth, height, width = warped.shape
        out = self.fourth(self.third(warped.view(batch, channels * depth, height, width)))
        return out * occlusion.to(out.dtype)
