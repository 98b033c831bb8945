"""Mouth poses from speech audio, streamed: loudness gives the opening, the spectrum the shape.

Works on the sound alone, so any TTS (or a recording) drives it. Each video
frame gets a pose from a window around its own audio, smoothed over a few
neighbouring frames; a frame's pose is known once `LOOKAHEAD_FRAMES` more
frames of audio have arrived (or the turn has ended).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SMOOTHING = np.array([0.1, 0.2, 0.3, 0.25, 0.15], dtype=np.float32)  # frames i-2 .. i+2
SMOOTH_BEHIND = 2
SMOOTH_AHEAD = len(SMOOTHING) - 1 - SMOOTH_BEHIND
GATE_DB = 42.0  # frames this far below the running peak count as silence


@dataclass(frozen=True)
class MouthPose:
    """How much of each mouth shape to show, each 0..1: jaw opening, spread lips, rounded lips."""

    open: float = 0.0
    wide: float = 0.0
    round: float = 0.0

    def scaled(self, factor: float) -> MouthPose:
        """The same shape, `factor` as strong."""
        return MouthPose(self.open * factor, self.wide * factor, self.round * factor)

    @property
    def at_rest(self) -> bool:
        return max(self.open, self.wide, self.round) < 0.01


REST = MouthPose()


class LoudnessScale:
    """A running loudness peak, so quiet and loud voices both use the mouth's full range.

    Kept across turns of a session; it rises at once and falls slowly.
    """

    def __init__(self, initial_peak_db: float = -20.0, floor_db: float = -40.0) -> None:
        self.peak_db = initial_peak_db
        self.floor_db = floor_db

    def openness(self, level_db: float, decay_db: float) -> float:
        """The jaw opening 0..1 of a frame at `level_db`, after updating the peak."""
        self.peak_db = max(level_db, self.peak_db - decay_db, self.floor_db)
        if level_db < self.peak_db - GATE_DB:
            return 0.0
        relative = 10 ** ((level_db - self.peak_db) / 20)
        return float(min(1.0, relative) ** 0.8)


class MouthTrack:
    """Turns one turn's audio into one `MouthPose` per video frame, in order, as audio arrives."""

    def __init__(self, sample_rate: int, fps: int, scale: LoudnessScale) -> None:
        if sample_rate % fps:
            raise ValueError(
                f"sample rate {sample_rate} is not a whole number of samples per frame at {fps} fps"
            )
        self.hop = sample_rate // fps
        self.window = int(2 ** np.ceil(np.log2(self.hop * 1.5)))
        self.pad = (self.window - self.hop) // 2
        self._decay_db = 0.5 / fps  # the peak falls 0.5 dB per second
        self._scale = scale
        self._taper = np.hanning(self.window).astype(np.float32)
        freqs = np.fft.rfftfreq(self.window, 1.0 / sample_rate)
        self._low = (freqs >= 250) & (freqs < 1000)
        self._middle = (freqs >= 1000) & (freqs < 1700)
        self._front = (freqs >= 1700) & (freqs < 3300)
        self._hiss = (freqs >= 4000) & (freqs < 8000)
        self._voice = (freqs >= 150) & (freqs < 8000)
        # Audio with `pad` samples of silence before the turn, so frame 0 has a full window.
        self._audio = np.zeros(self.pad, dtype=np.float32)
        self._consumed = 0  # samples dropped from the front of `_audio`
        self._features: list[np.ndarray] = [np.zeros(3, np.float32)] * SMOOTH_BEHIND
        self._emitted = 0
        self._total_samples = 0

    def push(self, pcm: np.ndarray) -> list[MouthPose]:
        """Adds audio; returns the poses of the frames that are now decided."""
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        self._total_samples += len(pcm)
        self._audio = np.concatenate([self._audio, pcm])
        self._analyse(final=False)
        return self._emit(final=False)

    def finish(self) -> list[MouthPose]:
        """The remaining frames' poses at the end of the turn (the future is silence)."""
        self._audio = np.concatenate([self._audio, np.zeros(self.window, np.float32)])
        self._analyse(final=True)
        return self._emit(final=True)

    @property
    def frames_total(self) -> int:
        """Whole frames of audio received so far."""
        return self._total_samples // self.hop

    def _analyse(self, *, final: bool) -> None:
        limit = self.frames_total
        while len(self._features) - SMOOTH_BEHIND < limit:
            index = len(self._features) - SMOOTH_BEHIND
            start = index * self.hop - self._consumed
            if start + self.window > len(self._audio):
                break
            self._features.append(self._frame_features(self._audio[start : start + self.window]))
        keep_from = max(0, (len(self._features) - SMOOTH_BEHIND) * self.hop - self._consumed)
        if keep_from > self.window and not final:
            self._audio = self._audio[keep_from:]
            self._consumed += keep_from

    def _frame_features(self, window: np.ndarray) -> np.ndarray:
        centre = window[self.pad : self.pad + self.hop]
        level_db = 10 * np.log10(float(np.mean(centre * centre)) + 1e-12)
        opening = self._scale.openness(level_db, self._decay_db)
        if opening == 0.0:
            return np.zeros(3, np.float32)
        power = np.abs(np.fft.rfft(window * self._taper)) ** 2 + 1e-12
        voice = power[self._voice].sum()
        hiss = power[self._hiss].sum() / voice
        # Vowel colour from where the second formant sits: high (i, e) spreads the
        # lips, low with little energy between 1 and 1.7 kHz (o, u) rounds them.
        low = power[self._low].sum()
        front = np.log10(power[self._front].sum() / low)
        closed_middle = np.clip((-np.log10(power[self._middle].sum() / low) - 0.6) / 1.5, 0.0, 1.0)
        wide = np.clip((front + 1.1) / 0.6, 0.0, 1.0) * closed_middle
        round_ = np.clip((-front - 1.2) / 0.6, 0.0, 1.0) * closed_middle
        if hiss > 0.45:  # s, sh, f: teeth together, lips spread
            opening *= 0.45
            wide, round_ = max(wide, 0.6), 0.0
        presence = min(1.0, 2.5 * opening)
        return np.array([opening, wide * presence, round_ * presence], dtype=np.float32)

    def _emit(self, *, final: bool) -> list[MouthPose]:
        available = len(self._features) - SMOOTH_BEHIND
        ready = self.frames_total if final else min(self.frames_total, available - SMOOTH_AHEAD)
        poses = []
        silent = np.zeros(3, np.float32)
        while self._emitted < ready:
            centre = self._emitted + SMOOTH_BEHIND
            rows = [
                self._features[i] if i < len(self._features) else silent
                for i in range(centre - SMOOTH_BEHIND, centre + SMOOTH_AHEAD + 1)
            ]
            value = SMOOTHING @ np.stack(rows)
            poses.append(MouthPose(float(value[0]), float(value[1]), float(value[2])))
            self._emitted += 1
        return poses
