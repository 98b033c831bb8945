"""Motion extractor: ConvNeXt-V2 backbone -> head pose bins, translation, expression, scale, keypoints (motion_extractor.pth)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MOTION_OUTPUTS = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")


@dataclass(frozen=True)
class MotionSize:
    """Stage depths and widths of the backbone; `FULL` is ConvNeXt-V2 tiny as released."""

    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    num_kp: int = 21
    num_bins: int = 66


FULL = MotionSize()
TINY = MotionSize(dims=(8, 16, 32, 64))


class ChannelsFirstLayerNorm(nn.Module):
    """Layer norm over the channel axis of an NCHW tensor (eps 1e-6)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, 1e-6)
        return x.permute(0, 3, 1, 2)


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2 GRN on NHWC activations: rescales channels by their spatial L2 energy."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        relative = energy / (energy.mean(dim=-1, keepdim=True) + 1e-6)
        return x + self.gamma * (x * relative) + self.beta


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LN, MLP x4 with GELU and GRN, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GlobalResponseNorm(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class KeypointBackbone(nn.Module):
    """ConvNeXt-V2 with one linear head per motion quantity (stored under `detector.`)."""

    def __init__(self, size: MotionSize) -> None:
        super().__init__()
        dims = size.dims
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), ChannelsFirstLayerNorm(dims[0]))]
        )
        for i in range(len(dims) - 1):
            self.downsample_layers.append(
                nn.Sequential(
                    ChannelsFirstLayerNorm(dims[i]), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)
                )
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(dim) for _ in range(depth)))
            for depth, dim in zip(size.depths, dims, strict=True)
        )
        width = dims[-1]
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.fc_kp = nn.Linear(width, 3 * size.num_kp)
        self.fc_scale = nn.Linear(width, 1)
        self.fc_pitch = nn.Linear(width, size.num_bins)
        self.fc_yaw = nn.Linear(width, size.num_bins)
        self.fc_roll = nn.Linear(width, size.num_bins)
        self.fc_t = nn.Linear(width, 3)
        self.fc_exp = nn.Linear(width, 3 * size.num_kp)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = image
        for downsample, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(downsample(x))
        pooled = self.norm(x.mean(dim=(-2, -1)))
        return (
            self.fc_pitch(pooled),
            self.fc_yaw(pooled),
            self.fc_roll(pooled),
            self.fc_t(pooled),
            self.fc_exp(pooled),
            self.fc_scale(pooled),
            self.fc_kp(pooled),
        )


class MotionExtractor(nn.Module):
    """Returns (pitch, yaw, roll, t, exp, scale, kp) in that order, as the official ONNX does."""

    def __init__(self, size: MotionSize = FULL) -> None:
        super().__init__()
        self.size = size
        self.detector = KeypointBackbone(size)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.detector(image)
