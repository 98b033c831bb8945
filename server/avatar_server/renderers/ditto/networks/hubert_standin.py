"""A STAND-IN for the streaming HuBERT `hubert_streaming_fix_kv.onnx`: the release's I/O and HuBERT-large's size.

The release ships the audio encoder only as ONNX: `input_values` (1, samples) float32 16 kHz ->
`encoding_out` (frames, 1024) float32, 50 Hz, time-major. This module has that contract and, at
"full" size, HuBERT-large's shape (a 7-layer convolutional feature extractor of 512 channels,
kernels 10,3,3,3,3,2,2 and strides 5,2,2,2,2,2,2; a grouped positional convolution; 24 pre-norm
transformer layers, hidden 1024, 16 heads, FFN 4096), so a benchmark pays the real cost. The
weights are random: its features mean nothing. Parameter names follow the common HuBERT layout
(`feature_extractor.conv_layers.N.conv`, `encoder.layers.N.attention.q_proj`, ...); the ONNX
export keeps them as initializer names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 1024  # encoding_out width, fixed by the release's I/O
CONV_KERNELS = (10, 3, 3, 3, 3, 2, 2)
CONV_STRIDES = (5, 2, 2, 2, 2, 2, 2)


@dataclass(frozen=True)
class HubertSize:
    """Widths of the stand-in: FULL is HuBERT-large, TINY a quick CPU one with the same I/O."""

    conv_channels: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    pos_kernel: int
    pos_groups: int


FULL = HubertSize(conv_channels=512, hidden=1024, layers=24, heads=16, ffn=4096, pos_kernel=128, pos_groups=16)
TINY = HubertSize(conv_channels=32, hidden=64, layers=2, heads=4, ffn=128, pos_kernel=16, pos_groups=4)


def hubert_frames(samples: int) -> int:
    """50 Hz frames the convolutional front end yields for `samples` 16 kHz samples (6480 -> 20)."""
    length = samples
    for kernel, stride in zip(CONV_KERNELS, CONV_STRIDES):
        length = (length - kernel) // stride + 1
    return length


class _ConvLayer(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels_in, channels_out, kernel, stride=stride)
        self.layer_norm = nn.LayerNorm(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.gelu(self.layer_norm(x.transpose(1, 2)).transpose(1, 2))


class _FeatureExtractor(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        widths = (1,) + (channels,) * len(CONV_KERNELS)
        self.conv_layers = nn.ModuleList(
            _ConvLayer(widths[i], widths[i + 1], k, s) for i, (k, s) in enumerate(zip(CONV_KERNELS, CONV_STRIDES))
        )

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        x = samples.unsqueeze(1)
        for layer in self.conv_layers:
            x = layer(x)
        return x.transpose(1, 2)  # (B, frames, channels)


class _FeatureProjection(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(channels)
        self.projection = nn.Linear(channels, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(x))


class _PositionalConv(nn.Module):
    def __init__(self, size: HubertSize) -> None:
        super().__init__()
        self.conv = nn.Conv1d(size.hidden, size.hidden, size.pos_kernel, padding=size.pos_kernel // 2,
                              groups=size.pos_groups)
        self.trim = 1 if size.pos_kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[:, :, : -self.trim]
        return F.gelu(y).transpose(1, 2)


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (hidden // heads) ** -0.5
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(hidden, hidden) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, hidden = x.shape
        head_dim = hidden // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, frames, self.heads, head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        weights = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(batch, frames, hidden))


class _FeedForward(nn.Module):
    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(hidden, ffn)
        self.output_dense = nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class _EncoderLayer(nn.Module):
    """Pre-norm (HuBERT-large's "stable layer norm") transformer layer."""

    def __init__(self, size: HubertSize) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(size.hidden)
        self.attention = _Attention(size.hidden, size.heads)
        self.final_layer_norm = nn.LayerNorm(size.hidden)
        self.feed_forward = _FeedForward(size.hidden, size.ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layer_norm(x))
        return x + self.feed_forward(self.final_layer_norm(x))


class _Encoder(nn.Module):
    def __init__(self, size: HubertSize) -> None:
        super().__init__()
        self.pos_conv_embed = _PositionalConv(size)
        self.layers = nn.ModuleList(_EncoderLayer(size) for _ in range(size.layers))
        self.layer_norm = nn.LayerNorm(size.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_conv_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)


class HubertStandIn(nn.Module):
    """(1, samples) 16 kHz -> (frames, 1024) at 50 Hz, HuBERT-shaped, random weights."""

    def __init__(self, size: HubertSize = TINY) -> None:
        super().__init__()
        self.size = size
        self.feature_extractor = _FeatureExtractor(size.conv_channels)
        self.feature_projection = _FeatureProjection(size.conv_channels, size.hidden)
        self.encoder = _Encoder(size)
        # The release's output is 1024 wide whatever the encoder width (identity-sized at full size).
        self.output_projection = nn.Linear(size.hidden, FEATURE_DIM) if size.hidden != FEATURE_DIM else None

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.feature_projection(self.feature_extractor(input_values)))
        if self.output_projection is not None:
            x = self.output_projection(x)
        return x[0]
