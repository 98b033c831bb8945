"""Audio features -> motion: the LMDM DDIM sampler and the sliding windows of one streaming turn.

The sampler is batched (windows of many sessions in one call; guidance runs inside `lmdm`).
`MotionStream` decides, per turn, when a window can run, what it conditions on, and which of its
frames are final: windows of `seq_frames` slide by `stride`, overlapping frames are cross-faded
linearly, a short first window lets the first frames leave early, and a 3-frame moving average
smooths scale, pose and shift. Features not yet arrived are padded with silence features, so every
window has the one static shape the network (and CUDA graphs) want.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from avatar_server.renderers.ditto.keypoints import SMOOTHED_DIMS

DIFFUSION_STEPS = 1000
_COSINE_OFFSET = 8e-3
NEUTRAL_EMOTION = 4  # 'Angry', 'Disgust', 'Fear', 'Happy', 'Neutral', 'Sad', 'Surprise', 'Contempt'

LmdmFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class StreamOptions:
    """How windows slide. `stride` frames become final per window (at most seq_frames - overlap)."""

    sampling_steps: int = 10
    overlap: int = 10
    stride: int = 70
    first_frames: int = 10
    smoothing: int = 3

    def validate(self, seq_frames: int) -> None:
        """Raises ValueError on settings that cannot slide over `seq_frames`-frame windows."""
        if self.sampling_steps < 1 or self.sampling_steps > DIFFUSION_STEPS:
            raise ValueError(f"sampling steps must be 1..{DIFFUSION_STEPS}, not {self.sampling_steps}")
        if not 0 <= self.overlap < seq_frames:
            raise ValueError(f"overlap must be 0..{seq_frames - 1}, not {self.overlap}")
        if not 1 <= self.stride <= seq_frames - self.overlap:
            raise ValueError(f"stride must be 1..{seq_frames - self.overlap}, not {self.stride}")
        if not 1 <= self.first_frames <= seq_frames - self.overlap:
            raise ValueError(f"first window must be 1..{seq_frames - self.overlap}, not {self.first_frames}")


def cosine_alphas_cumprod(steps: int = DIFFUSION_STEPS) -> torch.Tensor:
    """Cumulative alphas of the cosine beta schedule (betas clipped at 0.999), float64."""
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(0, 0.999)
    return torch.cumprod(1 - betas, dim=0)


@dataclass(frozen=True)
class DdimStep:
    """One DDIM step: the network's time and the update's coefficients (eta 1)."""

    time: int
    final: bool
    sqrt_alpha_next: float = 0.0
    noise_scale: float = 0.0  # c: weight of the predicted noise
    sigma: float = 0.0  # weight of fresh noise


def ddim_steps(sampling_steps: int) -> list[DdimStep]:
    """Times spaced evenly from 999 down to -1 (as integers), with each step's coefficients."""
    alphas = cosine_alphas_cumprod()
    times = torch.linspace(-1, DIFFUSION_STEPS - 1, steps=sampling_steps + 1).int().tolist()[::-1]
    steps = []
    for time, time_next in zip(times[:-1], times[1:]):
        if time_next < 0:
            steps.append(DdimStep(time=time, final=True))
            continue
        a, a_next = alphas[time], alphas[time_next]
        sigma = ((1 - a / a_next) * (1 - a_next) / (1 - a)).sqrt()
        c = (1 - a_next - sigma**2).sqrt()
        steps.append(DdimStep(time, False, float(a_next.sqrt()), float(c), float(sigma)))
    return steps


def window_noise(
    seq_frames: int, motion_dim: int, steps: int, *, session_seed: int, window_index: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(start noise (L, D), per-step noise (steps, L, D)) for one window.

    Per-step noise is fixed for the session (drawn from its seed); the start noise is fresh per window.
    Drawn per window on `device`, so a window gets the same noise whatever batch it runs in.
    """
    fixed = torch.Generator(device=device).manual_seed(session_seed)
    step_noise = torch.randn((steps, seq_frames, motion_dim), generator=fixed, device=device)
    fresh = torch.Generator(device=device).manual_seed(session_seed * 100003 + window_index + 1)
    start = torch.randn((seq_frames, motion_dim), generator=fresh, device=device)
    return start, step_noise


@torch.inference_mode()
def sample_motion(
    lmdm: LmdmFn,
    steps: list[DdimStep],
    cond_frame: torch.Tensor,
    cond: torch.Tensor,
    start_noise: torch.Tensor,
    step_noise: torch.Tensor,
) -> torch.Tensor:
    """DDIM-samples a batch of windows: (B, 265), (B, L, C), (B, L, 265), (B, S, L, 265) -> (B, L, 265)."""
    x = start_noise
    batch = x.shape[0]
    for index, step in enumerate(steps):
        time = torch.full((batch,), step.time, dtype=torch.int64, device=x.device)
        pred_noise, x_start = lmdm(x, cond_frame, cond, time)
        if step.final:
            return x_start.float()
        x = x_start * step.sqrt_alpha_next + pred_noise * step.noise_scale + step_noise[:, index] * step.sigma
    return x.float()


def emotion_condition(emotion: int | list[int] | tuple[int, ...] = NEUTRAL_EMOTION) -> np.ndarray:
    """(8,) soft emotion label, as the authors build it: 8 on the chosen class(es), softmax.
    `emotion` is the cfg's `emo`: a class index 0..7 or a list of them."""
    classes = [emotion] if isinstance(emotion, (int, np.integer)) else list(emotion) if isinstance(emotion, (list, tuple)) else None
    if not classes or not all(isinstance(c, (int, np.integer)) and 0 <= c < 8 for c in classes):
        raise ValueError(f"Ditto emotion {emotion!r} is not a class 0..7 or a list of them")
    logits = np.zeros(8, dtype=np.float64)
    logits[classes] = 8.0
    weights = np.exp(logits - logits.max())
    return (weights / weights.sum()).astype(np.float32)


def smooth_frames(motion: np.ndarray, kernel: int) -> np.ndarray:
    """Centred moving average over time of scale, pose and shift (the first 202 dims); edges shrink."""
    if kernel <= 1:
        return motion
    half = kernel // 2
    out = motion.copy()
    count = motion.shape[0]
    for i in range(count):
        out[i, :SMOOTHED_DIMS] = motion[max(0, i - half) : min(count, i + half + 1), :SMOOTHED_DIMS].mean(0)
    return out


@dataclass(frozen=True)
class WindowPlan:
    """A window ready to sample: its first frame, condition rows, hand-over motion, final-frame count."""

    index: int
    start: int
    commit: int
    cond: np.ndarray  # (L, C) float32
    cond_frame: np.ndarray  # (265,) float32


class MotionStream:
    """One turn's motion, window by window (all numpy; the sampling itself runs in the engine)."""

    def __init__(
        self,
        options: StreamOptions,
        *,
        seq_frames: int,
        source_motion: np.ndarray,
        silence_feature: np.ndarray,
        cond_extra: np.ndarray,
    ) -> None:
        options.validate(seq_frames)
        self.options = options
        self.seq_frames = seq_frames
        self._source_motion = source_motion.astype(np.float32)
        self._silence = silence_feature.astype(np.float32)
        self._cond_extra = cond_extra.astype(np.float32)
        self._features = np.zeros((0, silence_feature.shape[0]), dtype=np.float32)
        self._committed = 0
        self._windows = 0
        self._tail = np.zeros((0, source_motion.shape[0]), dtype=np.float32)
        self._last = self._source_motion
        self.d0: np.ndarray | None = None

    @property
    def committed(self) -> int:
        """Frames whose motion is final."""
        return self._committed

    def add_features(self, features: np.ndarray) -> None:
        """Appends video-rate audio features (n, 1024)."""
        self._features = np.concatenate([self._features, features.astype(np.float32)])

    def next_window(self, total_frames: int | None) -> WindowPlan | None:
        """The next window if it can run now; `total_frames` is set once the turn's audio has ended."""
        start, length, overlap = self._committed, self.seq_frames, self.options.overlap
        available = self._features.shape[0] if total_frames is None else min(self._features.shape[0], total_frames)
        first = self._windows == 0
        commit = self.options.first_frames if first else self.options.stride
        if total_frames is None:
            needed = start + commit if first else min(start + commit + overlap, start + length)
            if available < needed:
                return None
        else:
            if start >= total_frames or available < total_frames:
                return None
            left = total_frames - start
            commit = left if left <= length else min(commit, length - overlap)
        features = self._features[start : min(available, start + length)]
        padding = np.repeat(self._silence[None], length - features.shape[0], axis=0)
        audio = np.concatenate([features, padding])
        cond = np.concatenate([audio, np.repeat(self._cond_extra[None], length, axis=0)], axis=1)
        plan = WindowPlan(self._windows, start, commit, cond, self._last.copy())
        self._windows += 1
        return plan

    def accept(self, plan: WindowPlan, motion: np.ndarray) -> np.ndarray:
        """Takes a sampled window (L, 265); returns its final frames (plan.commit, 265)."""
        if plan.start != self._committed:
            raise RuntimeError("windows must be accepted in order")
        motion = smooth_frames(np.asarray(motion, dtype=np.float32), self.options.smoothing)
        fade = min(self._tail.shape[0], motion.shape[0])
        if fade:
            weight = (np.arange(1, fade + 1, dtype=np.float32) / (fade + 1))[:, None]
            motion = motion.copy()
            motion[:fade] = self._tail[:fade] * (1 - weight) + motion[:fade] * weight
        final = motion[: plan.commit]
        self._tail = motion[plan.commit : plan.commit + self.options.overlap]
        self._committed += plan.commit
        self._last = final[-1].copy()
        if self.d0 is None:
            self.d0 = final[0].copy()
        return final
