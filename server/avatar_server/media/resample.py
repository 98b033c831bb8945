"""Band-limited resampling of mono PCM (e.g. 24 kHz TTS audio to the 16 kHz media clock).

`resample` converts a whole clip; `StreamResampler` converts audio arriving in chunks of
any size with the same filter, so chunk boundaries leave no clicks and the output length
never drifts (n input samples always give ceil(n * to_rate / from_rate) output samples).
"""

from __future__ import annotations

from math import gcd

import numpy as np
from scipy.signal import firwin, resample_poly

from avatar_server.core.errors import EncodeError

_KAISER_BETA = 5.0  # scipy.signal.resample_poly's default window
_HALF_LENGTH_PER_RATE = 10  # filter half-length in units of max(up, down), as resample_poly


def resample(pcm: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """`pcm` (1-D int16 or float) at `to_rate`, by polyphase filtering with a Kaiser-windowed sinc.

    Returns the input's dtype (int16 is rounded and clipped, floats come back as float32)
    and ceil(len * to_rate / from_rate) samples, aligned so sample 0 stays at time 0.
    """
    _check_rates(from_rate, to_rate)
    is_int16 = _check_pcm(pcm)
    if len(pcm) == 0:
        return np.zeros(0, dtype=np.int16 if is_int16 else np.float32)
    if from_rate == to_rate:
        return pcm.astype(np.int16 if is_int16 else np.float32)
    common = gcd(from_rate, to_rate)
    return _to_dtype(resample_poly(pcm.astype(np.float64), to_rate // common, from_rate // common), is_int16)


class StreamResampler:
    """Resamples one stream chunk by chunk; `push` returns what is ready, `flush` the rest.

    Output sample m sits at input time m * from_rate / to_rate; it is emitted once the input
    its filter reaches has arrived (a look-ahead of 10 to 30 input samples at usual rates).
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        _check_rates(from_rate, to_rate)
        common = gcd(from_rate, to_rate)
        self._up, self._down = to_rate // common, from_rate // common
        max_rate = max(self._up, self._down)
        self._half_length = _HALF_LENGTH_PER_RATE * max_rate
        if max_rate == 1:  # same rate: a one-tap identity filter
            self._half_length, taps = 0, np.ones(1)
        else:
            taps = firwin(2 * self._half_length + 1, 1.0 / max_rate, window=("kaiser", _KAISER_BETA)) * self._up
        self._taps_per_phase = -(-len(taps) // self._up)
        padded = np.zeros(self._taps_per_phase * self._up)
        padded[: len(taps)] = taps
        # bank[p, j] multiplies input sample (k - j) for output phase p, k the newest input used.
        self._bank = padded.reshape(self._taps_per_phase, self._up).T
        self._history = np.zeros(self._taps_per_phase, dtype=np.float64)  # zeros before the start
        self._history_start = -self._taps_per_phase  # absolute index of _history[0]
        self._received = 0
        self._emitted = 0
        self._is_int16: bool | None = None
        self._flushed = False

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """Adds input; returns the output samples now complete (int16 or float32, like the input)."""
        if self._flushed:
            raise EncodeError("the stream was already flushed", stage="resample")
        is_int16 = _check_pcm(pcm)
        if self._is_int16 is None:
            self._is_int16 = is_int16
        elif is_int16 != self._is_int16:
            raise EncodeError("a stream's chunks must all be int16 or all float", stage="resample")
        self._history = np.concatenate([self._history, pcm.astype(np.float64)])
        self._received += len(pcm)
        # The newest input output m needs is (m * down + half_length) // up.
        ready = (self._received * self._up - self._half_length - 1) // self._down + 1
        return self._emit(max(ready, self._emitted))

    def flush(self) -> np.ndarray:
        """Ends the stream: the rest of the output (silence after the input), ceil(n * up / down) in all."""
        self._flushed = True
        total = -(-self._received * self._up // self._down)
        if total > self._emitted:
            look_ahead = self._half_length // self._up + 1
            self._history = np.concatenate([self._history, np.zeros(look_ahead)])
        return self._emit(max(total, self._emitted))

    def _emit(self, until: int) -> np.ndarray:
        outputs = np.arange(self._emitted, until)
        positions = outputs * self._down + self._half_length
        newest = positions // self._up - self._history_start
        window = newest[:, None] - np.arange(self._taps_per_phase)[None, :]
        values = np.einsum("mj,mj->m", self._history[window], self._bank[positions % self._up])
        self._emitted = until
        keep_from = (until * self._down + self._half_length) // self._up - self._taps_per_phase + 1
        drop = max(0, keep_from - self._history_start)
        self._history = self._history[drop:]
        self._history_start += drop
        return _to_dtype(values, bool(self._is_int16))


def _check_rates(from_rate: int, to_rate: int) -> None:
    if from_rate <= 0 or to_rate <= 0:
        raise EncodeError(f"bad sample rates {from_rate} -> {to_rate}", stage="resample")


def _check_pcm(pcm: np.ndarray) -> bool:
    """Validates one block of PCM; returns whether it is int16."""
    if not isinstance(pcm, np.ndarray) or pcm.ndim != 1:
        raise EncodeError("pcm must be a 1-D numpy array", stage="resample")
    is_int16 = pcm.dtype == np.int16
    if not is_int16 and not np.issubdtype(pcm.dtype, np.floating):
        raise EncodeError(f"pcm must be int16 or float, got {pcm.dtype}", stage="resample")
    return is_int16


def _to_dtype(values: np.ndarray, is_int16: bool) -> np.ndarray:
    if is_int16:
        return np.clip(np.rint(values), -32768, 32767).astype(np.int16)
    return values.astype(np.float32)
