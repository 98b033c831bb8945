"""Convolution blocks shared by the appearance, warp and decoder networks (names match the official files)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvNormAct2d(nn.Module):
    """conv -> batch norm -> ReLU (or leaky ReLU), same resolution; keys `conv.*`, `norm.*`."""

    def __init__(self, channels_in: int, channels_out: int, *, leaky: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(channels_out)
        self.leaky = leaky

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.leaky_relu(x) if self.leaky else F.relu(x)


class Down2d(nn.Module):
    """conv -> batch norm -> ReLU -> 2x2 average pool."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), 2)


class Residual3d(nn.Module):
    """Pre-activation 3-D residual block (BN -> ReLU -> conv, twice), channel count kept."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.norm1 = nn.BatchNorm3d(channels)
        self.norm2 = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        return x + self.conv2(F.relu(self.norm2(y)))


class Down3d(nn.Module):
    """3-D conv -> BN -> ReLU, then halve height and width (depth kept)."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels_in, channels_out, kernel_size=kernel, padding=kernel // 2)
        self.norm = nn.BatchNorm3d(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(F.relu(self.norm(self.conv(x))), (1, 2, 2))


class Up3d(nn.Module):
    """Double height and width (nearest), then 3-D conv -> BN -> ReLU."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels_in, channels_out, kernel_size=kernel, padding=kernel // 2)
        self.norm = nn.BatchNorm3d(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        return F.relu(self.norm(self.conv(x)))


def _hourglass_width(level: int, base: int, cap: int) -> int:
    return min(cap, base * 2**level)


class HourglassEncoder(nn.Module):
    """Down path of the 3-D hourglass; returns every level's output (input first)."""

    def __init__(self, base: int, channels_in: int, levels: int, cap: int, kernel: int) -> None:
        super().__init__()
        self.down_blocks = nn.ModuleList(
            Down3d(
                channels_in if i == 0 else _hourglass_width(i, base, cap),
                _hourglass_width(i + 1, base, cap),
                kernel,
            )
            for i in range(levels)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = [x]
        for block in self.down_blocks:
            outputs.append(block(outputs[-1]))
        return outputs


class HourglassDecoder(nn.Module):
    """Up path with skip connections, then a fusing conv -> BN -> ReLU over (base + input) channels."""

    def __init__(self, base: int, channels_in: int, levels: int, cap: int, kernel: int) -> None:
        super().__init__()
        blocks = []
        for i in reversed(range(levels)):
            width_in = _hourglass_width(i + 1, base, cap) * (1 if i == levels - 1 else 2)
            blocks.append(Up3d(width_in, _hourglass_width(i, base, cap), kernel))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_channels = base + channels_in
        self.conv = nn.Conv3d(self.out_channels, self.out_channels, kernel_size=kernel, padding=kernel // 2)
        self.norm = nn.BatchNorm3d(self.out_channels)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        x = skips[-1]
        for block, skip in zip(self.up_blocks, reversed(skips[:-1]), strict=True):
            x = torch.cat([block(x), skip], dim=1)
        return F.relu(self.norm(self.conv(x)))


class Hourglass3d(nn.Module):
    """U-Net style 3-D hourglass used by the dense-motion estimator."""

    def __init__(self, base: int, channels_in: int, levels: int, cap: int, kernel: int = 3) -> None:
        super().__init__()
        self.encoder = HourglassEncoder(base, channels_in, levels, cap, kernel)
        self.decoder = HourglassDecoder(base, channels_in, levels, cap, kernel)
        self.out_channels = self.decoder.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
