"""Appearance extractor: a 256x256 source crop -> a 3-D appearance feature volume (appearance_extractor.pth)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avatar_server.renderers.ditto.networks.blocks import ConvNormAct2d, Down2d, Residual3d


@dataclass(frozen=True)
class AppearanceSize:
    """Widths of the appearance extractor; `FULL` is the official network."""

    base: int = 64
    down_blocks: int = 2
    max_channels: int = 512
    volume_channels: int = 32
    residual_blocks: int = 6

    @property
    def volume_depth(self) -> int:
        return self.max_channels // self.volume_channels


FULL = AppearanceSize()
TINY = AppearanceSize(base=4, max_channels=8, volume_channels=2)


class AppearanceExtractor(nn.Module):
    """2-D conv stem and two down blocks, a 1x1 lift, a reshape to (C, D) and 3-D residual blocks."""

    def __init__(self, size: AppearanceSize = FULL) -> None:
        super().__init__()
        self.size = size
        self.first = ConvNormAct2d(3, size.base)
        widths = [min(size.max_channels, size.base * 2**i) for i in range(size.down_blocks + 1)]
        self.down_blocks = nn.ModuleList(
            Down2d(widths[i], widths[i + 1]) for i in range(size.down_blocks)
        )
        self.second = nn.Conv2d(widths[-1], size.max_channels, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for i in range(size.residual_blocks):
            self.resblocks_3d.add_module(f"3dr{i}", Residual3d(size.volume_channels))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.first(image)
        for block in self.down_blocks:
            x = block(x)
        x = self.second(x)
        batch, _, height, width = x.shape
        volume = x.view(batch, self.size.volume_channels, self.size.volume_depth, height, width)
        return self.resblocks_3d(volume)
