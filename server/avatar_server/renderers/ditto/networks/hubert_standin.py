"""A STAND-IN for the streaming HuBERT: same ONNX inputs/outputs as hubert_streaming_fix_kv.onnx, not HuBERT.

The official audio encoder ships only as ONNX (`input_values` (1, samples) 16 kHz ->
`encoding_out` (frames, 1024), 50 Hz, time-major). This small module reproduces that contract
(a 400-sample window every 320 samples, as HuBERT's conv front end frames audio) so stand-in
checkpoints can be exported; its features are meaningless.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WINDOW_SAMPLES = 400
HOP_SAMPLES = 320
FEATURE_DIM = 1024


def hubert_frames(samples: int) -> int:
    """Number of 50 Hz frames HuBERT's front end yields for `samples` 16 kHz samples (6480 -> 20)."""
    return (samples - WINDOW_SAMPLES) // HOP_SAMPLES + 1


class HubertStandIn(nn.Module):
    """Framing conv -> GELU -> linear to 1024; (1, samples) -> (frames, 1024)."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.frame = nn.Conv1d(1, hidden, kernel_size=WINDOW_SAMPLES, stride=HOP_SAMPLES)
        self.project = nn.Linear(hidden, FEATURE_DIM)

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        frames = F.gelu(self.frame(input_values.unsqueeze(1)))  # (1, hidden, frames)
        return self.project(frames[0].transpose(0, 1))
