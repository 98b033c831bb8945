"""LMDM: the motion diffusion transformer that denoises an 80-frame motion window from audio (lmdm_v0.4_hubert.pth).

The file stores the inner decoder (`model_state_dict`). One guided step runs the decoder on the
unconditioned and conditioned inputs as one batch and mixes them with guidance weight 2; the
network predicts x_start and the noise is derived from it with the cosine schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

DIFFUSION_STEPS = 1000
GUIDANCE_WEIGHT = 2.0


@dataclass(frozen=True)
class LmdmSize:
    """Widths of the motion decoder; `FULL` is the release (latent 512, 8 heads, ff 1024, 8 layers)."""

    motion_dim: int = 265
    cond_dim: int = 1103
    seq_frames: int = 80
    latent: int = 512
    heads: int = 8
    feedforward: int = 1024
    layers: int = 8
    cond_layers: int = 2


FULL = LmdmSize()
TINY = LmdmSize(latent=32, feedforward=64)


def cosine_alphas_cumprod(steps: int = DIFFUSION_STEPS, offset: float = 8e-3) -> torch.Tensor:
    """Cumulative alphas of the cosine beta schedule (betas clipped to 0.999), float64."""
    t = torch.arange(steps + 1, dtype=torch.float64) / steps + offset
    f = torch.cos(t / (1 + offset) * math.pi / 2).pow(2)
    betas = (1 - f[1:] / f[:-1]).clamp(0, 0.999)
    return torch.cumprod(1 - betas.float(), dim=0).double()


class Rotary(nn.Module):
    """Rotary position embedding over the full model width, pairs of adjacent channels rotated."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("freqs", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))
        pair_swap = torch.zeros(dim, dim)
        pair_swap[1::2, 0::2] = -torch.eye(dim // 2)
        pair_swap[0::2, 1::2] = torch.eye(dim // 2)
        self.register_buffer("pair_swap", pair_swap, persistent=False)  # x @ pair_swap = (-x1, x0, -x3, x2, ...)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[-2], device=x.device, dtype=self.freqs.dtype)
        angles = (positions[:, None] * self.freqs.repeat_interleave(2)[None, :]).to(x.dtype)
        if torch.onnx.is_in_onnx_export():  # the exporter mis-lowers the pairwise form; same maths
            rotated = x @ self.pair_swap.to(x.dtype)
        else:
            pairs = x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
            rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).reshape(x.shape)
        return x * angles.cos() + rotated * angles.sin()


class Attention(nn.Module):
    """Multi-head attention with packed q/k/v projection (torch MultiheadAttention names), SDPA inside."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = self._heads(F.linear(query, w_q, b_q), (0, 2, 1, 3))
        v = self._heads(F.linear(value, w_v, b_v), (0, 2, 1, 3))
        if torch.onnx.is_in_onnx_export():
            # Spelled out with one permute per operand: the TorchScript exporter mis-fuses the
            # transposes of the SDPA / q @ k.transpose() forms of this graph.
            k_t = self._heads(F.linear(key, w_k, b_k), (0, 2, 3, 1))
            out = torch.softmax((q @ k_t) / math.sqrt(q.shape[-1]), dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, self._heads(F.linear(key, w_k, b_k), (0, 2, 1, 3)), v)
        return self.out_proj(out.permute(0, 2, 1, 3).reshape(query.shape[0], query.shape[1], self.out_proj.in_features))

    def _heads(self, x: torch.Tensor, order: tuple[int, int, int, int]) -> torch.Tensor:
        batch, length, width = x.shape
        return x.reshape(batch, length, self.heads, width // self.heads).permute(*order)


class CondEncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer (rotary q/k, GELU feed-forward) for the audio condition."""

    def __init__(self, size: LmdmSize, rotary: Rotary) -> None:
        super().__init__()
        self.self_attn = Attention(size.latent, size.heads)
        self.linear1 = nn.Linear(size.latent, size.feedforward)
        self.linear2 = nn.Linear(size.feedforward, size.latent)
        self.norm1 = nn.LayerNorm(size.latent)
        self.norm2 = nn.LayerNorm(size.latent)
        self.rotary = rotary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        qk = self.rotary(h)
        x = x + self.self_attn(qk, qk, h)
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


class FiLM(nn.Module):
    """Mish -> linear to a (scale, shift) pair from the time embedding."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Mish(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        scale, shift = self.block(time).unsqueeze(1).chunk(2, dim=-1)
        return (scale + 1) * x + shift


class FiLMDecoderLayer(nn.Module):
    """Pre-norm decoder layer: self-attention, cross-attention, feed-forward, each FiLM-modulated by time."""

    def __init__(self, size: LmdmSize, rotary: Rotary) -> None:
        super().__init__()
        dim = size.latent
        self.self_attn = Attention(dim, size.heads)
        self.multihead_attn = Attention(dim, size.heads)
        self.linear1 = nn.Linear(dim, size.feedforward)
        self.linear2 = nn.Linear(size.feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.film1 = FiLM(dim)
        self.film2 = FiLM(dim)
        self.film3 = FiLM(dim)
        self.rotary = rotary

    def forward(self, x: torch.Tensor, memory: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        qk = self.rotary(h)
        x = x + self.film1(self.self_attn(qk, qk, h), time)
        h = self.norm2(x)
        x = x + self.film2(self.multihead_attn(self.rotary(h), self.rotary(memory), memory), time)
        return x + self.film3(self.linear2(F.gelu(self.linear1(self.norm3(x)))), time)


class LayerStack(nn.Module):
    """Holds the decoder layers under `stack.` as in the official file."""

    def __init__(self, layers: list[FiLMDecoderLayer]) -> None:
        super().__init__()
        self.stack = nn.ModuleList(layers)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of the diffusion step (sin half, then cos half)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        scale = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=time.device, dtype=torch.float32) * -scale)
        angles = time.float()[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class MotionDiffusion(nn.Module):
    """The LMDM motion decoder. `forward` is one guided denoising step (see models.DittoNetworks.lmdm)."""

    def __init__(self, size: LmdmSize = FULL) -> None:
        super().__init__()
        self.size = size
        dim = size.latent
        self.rotary = Rotary(dim)
        self.time_mlp = nn.Sequential(TimeEmbedding(dim), nn.Linear(dim, 4 * dim), nn.Mish())
        self.to_time_cond = nn.Sequential(nn.Linear(4 * dim, dim))
        self.to_time_tokens = nn.Sequential(nn.Linear(4 * dim, 2 * dim))
        self.null_cond_embed = nn.Parameter(torch.randn(1, size.seq_frames, dim))
        self.null_cond_hidden = nn.Parameter(torch.randn(1, dim))
        self.norm_cond = nn.LayerNorm(dim)
        self.input_projection = nn.Linear(2 * size.motion_dim, dim)
        self.cond_encoder = nn.Sequential(*(CondEncoderLayer(size, self.rotary) for _ in range(size.cond_layers)))
        self.cond_projection = nn.Linear(size.cond_dim, dim)
        self.non_attn_cond_projection = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim)
        )
        self.seqTransDecoder = LayerStack([FiLMDecoderLayer(size, self.rotary) for _ in range(size.layers)])
        self.final_layer = nn.Linear(dim, size.motion_dim)
        alphas = cosine_alphas_cumprod()
        self.register_buffer("sqrt_alphas_cumprod", alphas.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1 - alphas).sqrt().float(), persistent=False)

    def denoise(
        self, x: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor, time: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """x_start prediction; rows where `keep` is False use the learned null condition."""
        tokens = self.input_projection(torch.cat([x, cond_frame.unsqueeze(1).expand_as(x)], dim=-1))
        cond_tokens = self.cond_encoder(self.cond_projection(cond))
        keep_tokens = keep[:, None, None]
        cond_tokens = torch.where(keep_tokens, cond_tokens, self.null_cond_embed.to(cond_tokens.dtype))
        cond_hidden = self.non_attn_cond_projection(cond_tokens.mean(dim=-2))
        cond_hidden = torch.where(keep[:, None], cond_hidden, self.null_cond_hidden.to(cond_hidden.dtype))

        time_hidden = self.time_mlp(time)
        time_cond = self.to_time_cond(time_hidden) + cond_hidden
        time_tokens = self.to_time_tokens(time_hidden).view(time.shape[0], 2, self.size.latent)
        memory = self.norm_cond(torch.cat([cond_tokens, time_tokens], dim=-2))

        for layer in self.seqTransDecoder.stack:
            tokens = layer(tokens, memory, time_cond)
        return self.final_layer(tokens)

    def forward(
        self, x: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor, time: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[0]
        keep = torch.arange(2 * batch, device=x.device) >= batch  # first half unconditioned (graph-capturable)
        both = self.denoise(
            torch.cat([x, x]), torch.cat([cond_frame, cond_frame]), torch.cat([cond, cond]), torch.cat([time, time]), keep
        )
        unconditioned, conditioned = both[:batch], both[batch:]
        x_start = unconditioned + GUIDANCE_WEIGHT * (conditioned - unconditioned)
        signal = self.sqrt_alphas_cumprod[time].view(batch, 1, 1)
        noise_scale = self.sqrt_one_minus_alphas_cumprod[time].view(batch, 1, 1)
        pred_noise = (x - signal * x_start) / noise_scale
        return pred_noise, x_start
