"""SPADE decoder: warped 2-D features -> the 512x512 RGB image (decoder.pth).

The official weights store the residual-block convs spectral-normalised (`weight_orig`, `weight_u`,
`weight_v`); `fold_spectral_norm` turns them into plain convs once after loading so inference does
no per-call normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import remove_spectral_norm, spectral_norm


@dataclass(frozen=True)
class DecoderSize:
    """Widths of the decoder; `FULL` is the official one (input 256, middle 512, SPADE hidden 128)."""

    input_channels: int = 256
    output_channels: int = 64
    spade_hidden: int = 128
    middle_blocks: int = 6


FULL = DecoderSize()
TINY = DecoderSize(input_channels=4, output_channels=2, spade_hidden=2)


class SpatialNorm(nn.Module):
    """SPADE: instance norm, then a per-pixel scale and shift predicted from the input feature map."""

    def __init__(self, channels: int, label_channels: int, hidden: int) -> None:
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_channels, hidden, kernel_size=3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, channels, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        label = F.interpolate(label, size=x.shape[2:], mode="nearest")
        shared = self.mlp_shared(label)
        return F.instance_norm(x) * (1 + self.mlp_gamma(shared)) + self.mlp_beta(shared)


class SpadeResidual(nn.Module):
    """Residual block of two SPADE -> leaky ReLU -> conv stages; 1x1 shortcut when widths differ."""

    def __init__(self, channels_in: int, channels_out: int, label_channels: int, hidden: int) -> None:
        super().__init__()
        middle = min(channels_in, channels_out)
        self.learned_shortcut = channels_in != channels_out
        self.conv_0 = spectral_norm(nn.Conv2d(channels_in, middle, kernel_size=3, padding=1))
        self.conv_1 = spectral_norm(nn.Conv2d(middle, channels_out, kernel_size=3, padding=1))
        if self.learned_shortcut:
            self.conv_s = spectral_norm(nn.Conv2d(channels_in, channels_out, kernel_size=1, bias=False))
        self.norm_0 = SpatialNorm(channels_in, label_channels, hidden)
        self.norm_1 = SpatialNorm(middle, label_channels, hidden)
        if self.learned_shortcut:
            self.norm_s = SpatialNorm(channels_in, label_channels, hidden)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, label)) if self.learned_shortcut else x
        y = self.conv_0(F.leaky_relu(self.norm_0(x, label), 0.2))
        y = self.conv_1(F.leaky_relu(self.norm_1(y, label), 0.2))
        return shortcut + y

    def spectral_convs(self) -> list[nn.Conv2d]:
        convs = [self.conv_0, self.conv_1]
        return convs + [self.conv_s] if self.learned_shortcut else convs


class SpadeDecoder(nn.Module):
    """conv to 2x width, six SPADE blocks at 64x64, two upsampling SPADE blocks, conv + pixel shuffle, sigmoid."""

    def __init__(self, size: DecoderSize = FULL) -> None:
        super().__init__()
        self.size = size
        label = size.input_channels
        wide = 2 * label
        self.fc = nn.Conv2d(label, wide, kernel_size=3, padding=1)
        for i in range(size.middle_blocks):
            self.add_module(f"G_middle_{i}", SpadeResidual(wide, wide, label, size.spade_hidden))
        self.up_0 = SpadeResidual(wide, label, label, size.spade_hidden)
        self.up_1 = SpadeResidual(label, size.output_channels, label, size.spade_hidden)
        self.conv_img = nn.Sequential(
            nn.Conv2d(size.output_channels, 3 * 4, kernel_size=3, padding=1), nn.PixelShuffle(2)
        )

    def residual_blocks(self) -> list[SpadeResidual]:
        middles = [getattr(self, f"G_middle_{i}") for i in range(self.size.middle_blocks)]
        return [*middles, self.up_0, self.up_1]

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        x = self.fc(feature)
        for i in range(self.size.middle_blocks):
            x = getattr(self, f"G_middle_{i}")(x, feature)
        x = self.up_0(F.interpolate(x, scale_factor=2.0, mode="nearest"), feature)
        x = self.up_1(F.interpolate(x, scale_factor=2.0, mode="nearest"), feature)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)))

    def fold_spectral_norm(self) -> None:
        """Replaces every spectral-normed conv weight by W_orig / sigma (sigma from the stored u, v)."""
        for block in self.residual_blocks():
            for conv in block.spectral_convs():
                remove_spectral_norm(conv)
