"""The CPU lip-sync renderer: speech audio in, the avatar's frames with a moving mouth out."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

import cv2
import numpy as np

from avatar_server.avatars.landmarks import LAYOUTS
from avatar_server.avatars.model import AvatarAssets
from avatar_server.core.errors import RenderError
from avatar_server.core.frames import Frame
from avatar_server.renderers.base import ModelDescription, RendererSetup
from avatar_server.renderers.lipsync.idle_motion import IdleMotion
from avatar_server.renderers.lipsync.mouth_rig import MouthRig
from avatar_server.renderers.lipsync.mouth_track import REST, LoudnessScale, MouthPose, MouthTrack
from avatar_server.settings import Settings

FRAMES_PER_CALL = 5  # frames drawn per worker-thread call: small, so the first leave early
RELEASE = 0.55  # after a turn, each idle frame keeps this much of the last mouth pose
IDLE_PERIOD_S = 8.0  # a portrait's synthesized idle motion repeats this often
PREPARED_CACHE = 8


class PreparedAvatar:
    """What the renderer derives from an avatar once: its mouth rig and how its idle frames play.

    A base video plays forward if it loops seamlessly, else back and forth; the
    mouth rig follows the face as it moves in the video. A portrait gets
    synthesized blinks and sway instead.
    """

    def __init__(self, assets: AvatarAssets, fps: int) -> None:
        if assets.landmark_layout not in LAYOUTS:
            raise RenderError(f"lipsync cannot use landmarks in layout {assets.landmark_layout!r}")
        groups = LAYOUTS[assets.landmark_layout]
        frames = assets.frames
        self.frames = frames
        self.height, self.width = frames.shape[1:3]
        self._fps = fps
        self._source_fps = assets.fps or fps
        landmarks = assets.landmarks.astype(np.float32)
        stable = list(groups.nose[2:]) + [
            groups.left_eye_upper[0],
            groups.right_eye_upper[0],
            groups.chin,
        ]
        offsets = (landmarks[:, stable] - landmarks[0, stable]).mean(axis=1)
        self._seamless = len(frames) > 1 and _loops_seamlessly(frames)
        self._offsets = _smooth_offsets(offsets, circular=self._seamless)
        max_shift = float(np.abs(self._offsets).max()) + 1.0 if len(frames) > 1 else 0.0
        self.rig = MouthRig(frames[0], landmarks[0], groups, max_shift=max_shift)
        self._idle = (
            IdleMotion(
                landmarks[0],
                groups,
                self.width,
                self.height,
                fps=fps,
                period_frames=int(IDLE_PERIOD_S * fps),
            )
            if len(frames) == 1
            else None
        )

    def source_index(self, index: int) -> int:
        """Which idle frame session frame `index` shows."""
        count = len(self.frames)
        if count == 1:
            return 0
        step = int(index * self._source_fps / self._fps)
        if self._seamless:
            return step % count
        cycle = step % (2 * count - 2)
        return cycle if cycle < count else 2 * count - 2 - cycle

    def draw(self, index: int, pose: MouthPose) -> np.ndarray:
        """Session frame `index` with the mouth in `pose` (RGB uint8, H x W x 3)."""
        source = self.source_index(index)
        frame = self.frames[source]
        if not pose.at_rest:
            moved = frame.copy()
            self.rig.apply(frame, pose, self._offsets[source], out=moved)
            frame = moved
        if self._idle is not None:
            frame = self._idle.apply(frame, index)
        return frame


def _loops_seamlessly(frames: np.ndarray) -> bool:
    """Whether the last frame runs into the first as smoothly as frames run into each other."""
    small = [
        cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32) for f in frames
    ]
    steps = [np.abs(a - b).mean() for a, b in zip(small[:-1], small[1:], strict=True)]
    return float(np.abs(small[-1] - small[0]).mean()) <= 1.5 * float(np.median(steps)) + 0.5


def _smooth_offsets(offsets: np.ndarray, *, circular: bool) -> np.ndarray:
    """Landmark jitter removed from the face's per-frame position (5-frame moving average)."""
    if len(offsets) < 5:
        return offsets
    mode = "wrap" if circular else "edge"
    padded = np.pad(offsets, ((2, 2), (0, 0)), mode=mode)
    kernel = np.ones(5, np.float32) / 5
    return np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(2)], axis=1)


class LipSyncSession:
    """One conversation's lip-sync state: the idle clock, the loudness scale and the last mouth pose."""

    def __init__(
        self, avatar: PreparedAvatar, *, fps: int, sample_rate: int, timing: _DrawTiming
    ) -> None:
        self.width = avatar.width
        self.height = avatar.height
        self._avatar = avatar
        self._fps = fps
        self._sample_rate = sample_rate
        self._timing = timing
        self._loudness = LoudnessScale()
        self._index = 0  # frames shown so far: the idle clock runs through speech too
        self._last_pose = REST
        self._closed = False

    async def render(self, audio: AsyncIterator[np.ndarray]) -> AsyncIterator[Frame]:
        """One frame per frame of `audio`, each as soon as its audio and a 3-frame look-ahead are in."""
        self._check_open()
        track = MouthTrack(self._sample_rate, self._fps, self._loudness)
        async for chunk in audio:
            for frame in await self._draw_all(track.push(chunk)):
                yield frame
        for frame in await self._draw_all(track.finish()):
            yield frame

    async def _draw_all(self, poses: list[MouthPose]) -> list[Frame]:
        frames: list[Frame] = []
        for start in range(0, len(poses), FRAMES_PER_CALL):
            frames += await asyncio.to_thread(self._draw, poses[start : start + FRAMES_PER_CALL])
        return frames

    async def idle_frames(self, count: int) -> list[Frame]:
        """The next `count` resting frames; a mouth still open after a turn closes over a few."""
        self._check_open()
        poses = []
        for _ in range(count):
            self._last_pose = self._last_pose.scaled(RELEASE)
            poses.append(REST if self._last_pose.at_rest else self._last_pose)
        return await asyncio.to_thread(self._draw, poses, keep_pose=True)

    def _draw(self, poses: list[MouthPose], *, keep_pose: bool = False) -> list[Frame]:
        started = time.perf_counter()
        frames = []
        for pose in poses:
            frames.append(Frame(self._avatar.draw(self._index, pose)))
            self._index += 1
        if poses and not keep_pose:
            self._last_pose = poses[-1]
        self._timing.add(time.perf_counter() - started, len(poses))
        return frames

    def _check_open(self) -> None:
        if self._closed:
            raise RenderError("this lip-sync session is closed")

    async def aclose(self) -> None:
        """Nothing heavy is held per session; marks it closed."""
        self._closed = True


class _DrawTiming:
    """A running average of the time one frame takes to draw, for `capacity_fps`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds_per_frame = 0.0

    def add(self, seconds: float, frames: int) -> None:
        if frames == 0:
            return
        with self._lock:
            sample = seconds / frames
            previous = self.seconds_per_frame
            self.seconds_per_frame = sample if previous == 0 else 0.9 * previous + 0.1 * sample


class LipSyncRenderer:
    """Animates a face from speech on the CPU: audio loudness and spectrum drive a warped mouth."""

    name = "lipsync"

    def __init__(self, settings: Settings) -> None:
        self.sample_rate = settings.media.clock_rate
        self._prepared: OrderedDict[tuple[str, str, int], PreparedAvatar] = OrderedDict()
        self._lock = asyncio.Lock()
        self._timing = _DrawTiming()

    async def open_session(self, avatar: AvatarAssets, *, fps: int) -> LipSyncSession:
        """A session for `avatar`; the avatar's rig is built on first use and kept for the next."""
        if fps <= 0 or self.sample_rate % fps:
            raise RenderError(f"fps {fps} must divide the sample rate {self.sample_rate}")
        key = (avatar.info.id, avatar.info.content_sha256, fps)
        async with self._lock:
            prepared = self._prepared.get(key)
            if prepared is None:
                prepared = await asyncio.to_thread(PreparedAvatar, avatar, fps)
                self._prepared[key] = prepared
                while len(self._prepared) > PREPARED_CACHE:
                    self._prepared.popitem(last=False)
            self._prepared.move_to_end(key)
        return LipSyncSession(prepared, fps=fps, sample_rate=self.sample_rate, timing=self._timing)

    def models(self) -> list[ModelDescription]:
        """No neural network: a signal-processing mouth model and a thin-plate-spline warp."""
        return [
            ModelDescription(
                name="lipsync (audio features + TPS face warp)",
                runtime="numpy/opencv",
                device="cpu",
                precision="fp32",
            )
        ]

    def setup(self) -> RendererSetup:
        """No registration step beyond the avatar registry's landmarks, no run options of its own."""
        return RendererSetup()

    def capacity_fps(self) -> float:
        """Frames per second all cores could draw, from the frames drawn so far (0 before any)."""
        per_frame = self._timing.seconds_per_frame
        return (os.cpu_count() or 1) / per_frame if per_frame else 0.0

    async def aclose(self) -> None:
        """Drops the prepared avatars."""
        self._prepared.clear()
