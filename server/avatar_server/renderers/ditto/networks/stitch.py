"""Stitching network: corrects driven keypoints so the animated head stays aligned with the source (stitch_network.pth)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class StitchSize:
    """MLP widths; `FULL` is the official 126 -> 128 -> 128 -> 64 -> 65."""

    num_kp: int = 21
    hidden: tuple[int, ...] = (128, 128, 64)


FULL = StitchSize()
TINY = StitchSize(hidden=(16, 16, 8))


class StitchNetwork(nn.Module):
    """Returns the stitched driving keypoints (B, K, 3), like the official ONNX output `out`."""

    def __init__(self, size: StitchSize = FULL) -> None:
        super().__init__()
        self.size = size
        widths = [6 * size.num_kp, *size.hidden]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], 3 * size.num_kp + 2))
        self.mlp = nn.Sequential(*layers)

    def forward(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        batch, kp, _ = kp_source.shape
        delta = self.mlp(torch.cat([kp_source.reshape(batch, -1), kp_driving.reshape(batch, -1)], dim=1))
        per_point = delta[:, : 3 * kp].reshape(batch, kp, 3)
        shift_xy = delta[:, 3 * kp : 3 * kp + 2].reshape(batch, 1, 2)
        shift = torch.cat([shift_xy, torch.zeros_like(shift_xy[..., :1])], dim=-1)
        return kp_driving + per_point + shift
