"""Band-limited resampling of mono PCM (e.g. 24 kHz TTS audio to the 16 kHz media clock)."""

from __future__ import annotations

from math import gcd

import numpy as np
from scipy.signal import resample_poly

from avatar_server.errors import EncodeError


def resample(pcm: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """`pcm` (1-D int16 or float) at `to_rate`, by polyphase filtering with a Kaiser-windowed sinc.

    Returns the input's dtype (int16 is rounded and clipped, floats come back as float32)
    and ceil(len * to_rate / from_rate) samples, aligned so sample 0 stays at time 0.
    """
    if from_rate <= 0 or to_rate <= 0:
        raise EncodeError(f"bad sample rates {from_rate} -> {to_rate}", stage="resample")
    if not isinstance(pcm, np.ndarray) or pcm.ndim != 1:
        raise EncodeError("pcm must be a 1-D numpy array", stage="resample")
    is_int16 = pcm.dtype == np.int16
    if not is_int16 and not np.issubdtype(pcm.dtype, np.floating):
        raise EncodeError(f"pcm must be int16 or float, got {pcm.dtype}", stage="resample")
    if from_rate == to_rate or len(pcm) == 0:
        out_len = -(-len(pcm) * to_rate // from_rate)
        return pcm.astype(np.int16 if is_int16 else np.float32)[:out_len].copy()
    common = gcd(from_rate, to_rate)
    resampled = resample_poly(pcm.astype(np.float64), to_rate // common, from_rate // common)
    if is_int16:
        return np.clip(np.rint(resampled), -32768, 32767).astype(np.int16)
    return resampled.astype(np.float32)
