"""Tensor sizes of one loaded Ditto network set: what the pipeline reads instead of hard-coding shapes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NetworkSizes:
    """Tensor sizes of one loaded network set (official values as defaults).

    - `source_size`: side of the square RGB crop fed to `appearance` and `motion` (256).
    - `feature_channels`, `feature_depth`, `feature_size`: the appearance volume is
      (B, feature_channels, feature_depth, feature_size, feature_size) = (B, 32, 16, 64, 64) full-size.
    - `warped_channels`: `warp` output / `decode` input channels, (B, 256, 64, 64) full-size.
    - `image_size`: side of the square image `decode` returns (512).
    - `num_kp`: implicit keypoints (21); `num_bins`: head-pose bins per angle (66).
    - `motion_dim`: LMDM motion width (265); `audio_dim`: HuBERT feature width (1024);
      `cond_dim`: LMDM per-frame condition width, read from the weights (1103 for the release);
      `seq_frames`: LMDM window (80).
    - `hubert_samples`: 16 kHz samples per HuBERT call (6480 = 10 x 640 + 80);
      `hubert_frames`: 50 Hz HuBERT frames it returns (20).
    """

    source_size: int = 256
    feature_channels: int = 32
    feature_depth: int = 16
    feature_size: int = 64
    warped_channels: int = 256
    image_size: int = 512
    num_kp: int = 21
    num_bins: int = 66
    motion_dim: int = 265
    audio_dim: int = 1024
    cond_dim: int = 1103
    seq_frames: int = 80
    hubert_samples: int = 6480
    hubert_frames: int = 20
