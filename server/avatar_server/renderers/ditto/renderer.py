"""The Ditto renderer: `Renderer`/`RenderSession` over the shared engine (audio -> motion -> frames).

A session turns each turn's 16 kHz speech into exactly one frame per 640 samples: audio is cut
into HuBERT chunks, features feed sliding LMDM windows, final motion is rendered in small frame
batches that the engine merges with other sessions' work. Everything heavy runs on the engine's
worker thread; the event loop only moves small arrays and awaits futures.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from avatar_server.avatars.model import AvatarAssets
from avatar_server.errors import InvalidInput
from avatar_server.renderers.base import Frame, ModelDescription
from avatar_server.renderers.ditto.audio_features import (
    FRAMES_PER_CHUNK,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    AudioChunker,
)
from avatar_server.renderers.ditto.avatar_prep import DeviceAvatar, load_or_prepare, mirror_index
from avatar_server.renderers.ditto.engine import Admission, DittoEngine, EngineOptions, FrameRequest
from avatar_server.renderers.ditto.motion_diffusion import MotionStream, StreamOptions

FPS = SAMPLE_RATE // SAMPLES_PER_FRAME  # 25
RENDER_CHUNK = 4  # frames per render job: small for latency, merged across sessions by the engine
FRAMES_IN_FLIGHT = 8  # render jobs a session may have queued (back-pressure)


def _weights_id(checkpoints: Path) -> str:
    """Identifies the weight files (names, sizes, times) so cached avatars follow weight changes."""
    entries = []
    for path in sorted(Path(checkpoints).rglob("*")):
        if path.is_file() and path.suffix in {".pth", ".onnx", ".engine", ".pt"}:
            stat = path.stat()
            entries.append(f"{path.relative_to(checkpoints)}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


class DittoRenderer:
    """Shared Ditto networks and engine; makes one `DittoSession` per conversation."""

    name = "ditto"
    sample_rate = SAMPLE_RATE

    def __init__(self, settings: Any, *, networks: Any = None, engine_options: EngineOptions | None = None) -> None:
        if networks is None:
            from avatar_server.renderers.ditto.models import load_networks

            networks = load_networks(
                Path(settings.checkpoints), runtime=settings.ditto_runtime, device=settings.ditto_device
            )
        self.networks = networks
        self.stream_options = StreamOptions(
            sampling_steps=settings.ditto_sampling_steps,
            overlap=settings.ditto_overlap,
            stride=settings.ditto_stride,
            first_frames=settings.ditto_first_frames,
        )
        self.stream_options.validate(networks.seq_frames)
        self._max_size = settings.ditto_max_size
        self._template_frames = settings.ditto_template_frames
        self._weights_id = _weights_id(Path(settings.checkpoints))
        batch_sizes = tuple(s for s in (1, 2, 4, 8, 16, 32, 64) if s <= settings.ditto_render_batch)
        options = engine_options or EngineOptions(
            render_batch_sizes=batch_sizes or (1,),
            sampling_steps=settings.ditto_sampling_steps,
            frames_per_window=settings.ditto_stride,
            capacity_fps=settings.ditto_capacity_fps,
            max_sessions=settings.max_sessions,
            compile_render=settings.ditto_compile,
            graph_windows=settings.ditto_compile,
            warm_up=settings.ditto_compile,
        )
        self.engine = DittoEngine(networks, options)
        self._avatars: dict[str, tuple[DeviceAvatar, int]] = {}
        self._avatar_locks: dict[str, asyncio.Lock] = {}

    async def open_session(self, avatar: AvatarAssets, *, fps: int, seed: int | None = None) -> DittoSession:
        """Admits a session (CapacityExhausted when full) and prepares its avatar once."""
        if fps != FPS:
            raise InvalidInput(f"the Ditto renderer draws {FPS} fps (one frame per 640 samples), not {fps}")
        admission = self.engine.admit(fps)
        try:
            device_avatar = await self._acquire_avatar(avatar)
        except BaseException:
            admission.release()
            raise
        key = self._avatar_key(avatar)
        return DittoSession(self, key, device_avatar, admission, random.getrandbits(31) if seed is None else seed)

    def models(self) -> list[ModelDescription]:
        return list(self.networks.describe())

    def capacity_fps(self) -> float:
        return self.engine.capacity_fps()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.engine.close)

    def _avatar_key(self, avatar: AvatarAssets) -> str:
        return f"{avatar.info.id}:{avatar.info.content_sha256}"

    async def _acquire_avatar(self, avatar: AvatarAssets) -> DeviceAvatar:
        key = self._avatar_key(avatar)
        async with self._avatar_locks.setdefault(key, asyncio.Lock()):
            if key in self._avatars:
                device_avatar, users = self._avatars[key]
                self._avatars[key] = (device_avatar, users + 1)
                return device_avatar

            def prepare() -> DeviceAvatar:
                prepared = load_or_prepare(
                    avatar, self.networks, weights_id=self._weights_id,
                    max_size=self._max_size, template_frames=self._template_frames,
                )
                return DeviceAvatar(prepared, self.networks.device, self.networks.dtype)

            device_avatar = await asyncio.wrap_future(self.engine.call(prepare))
            self._avatars[key] = (device_avatar, 1)
            return device_avatar

    def _release_avatar(self, key: str) -> None:
        if key in self._avatars:
            device_avatar, users = self._avatars[key]
            if users <= 1:
                del self._avatars[key]
            else:
                self._avatars[key] = (device_avatar, users - 1)


class DittoSession:
    """One conversation: its avatar handle, engine slot, noise seed and frame clock."""

    def __init__(
        self, renderer: DittoRenderer, avatar_key: str, avatar: DeviceAvatar, admission: Admission, seed: int
    ) -> None:
        self._renderer = renderer
        self._avatar_key = avatar_key
        self.avatar = avatar
        self._admission = admission
        self._seed = seed
        self._clock = 0  # frames shown so far (turns and idle), to walk the template frames
        self._closed = False
        self.height, self.width = avatar.prepared.size

    async def render(self, audio: AsyncIterator[np.ndarray]) -> AsyncIterator[Frame]:
        """Turns one turn's speech into frames (see RenderSession.render)."""
        if self._closed:
            raise InvalidInput("render on a closed Ditto session", stage="render")
        turn = _Turn(self, audio)
        try:
            async for frames in turn.frames():
                for frame in frames:
                    yield Frame(frame)
        finally:
            await turn.stop()

    async def idle_frames(self, count: int) -> list[Frame]:
        """The template frames, walked forth and back (a still for a portrait)."""
        frames = self.avatar.prepared.frames
        out = [Frame(frames[mirror_index(self._clock + i, len(frames))]) for i in range(count)]
        self._clock += count
        return out

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._admission.release()
            self._renderer._release_avatar(self._avatar_key)

    def _template_indices(self, count: int) -> np.ndarray:
        total = self.avatar.template_count
        indices = np.array([mirror_index(self._clock + i, total) for i in range(count)], dtype=np.int64)
        self._clock += count
        return indices


class _Turn:
    """One turn in flight: audio (HuBERT jobs), features (in order), motion (windows, frame jobs).

    Every job carries the time its first frame is due (first audio + frame / 25 s), so the engine
    serves the most urgent work of all sessions first.
    """

    def __init__(self, session: DittoSession, audio: AsyncIterator[np.ndarray]) -> None:
        renderer = session._renderer
        self._session = session
        self._engine: DittoEngine = renderer.engine
        self._audio = audio
        self._chunker = AudioChunker()
        prepared = session.avatar.prepared
        self._motion = MotionStream(
            renderer.stream_options,
            seq_frames=renderer.networks.seq_frames,
            source_motion=prepared.source_motion[0].numpy(),
            silence_feature=self._engine.silence_feature,
            cond_extra=prepared.cond_extra,
        )
        self._total: int | None = None
        self._wake = asyncio.Event()
        self._out: asyncio.Queue[Future | BaseException | None] = asyncio.Queue(FRAMES_IN_FLIGHT)
        self._pending: set[Future] = set()
        self._features: asyncio.Queue[Future | int] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._started: float | None = None  # monotonic time the first audio arrived

    def _due(self, frame: int) -> float:
        return (self._started or time.monotonic()) + frame / FPS

    async def frames(self) -> AsyncIterator[np.ndarray]:
        """Yields (n, H, W, 3) frame blocks in order until the turn's last frame."""
        self._tasks = [asyncio.create_task(self._guard(work))
                       for work in (self._read_audio(), self._collect_features(), self._make_motion())]
        while True:
            item = await self._out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            try:
                yield await asyncio.wrap_future(item)
            finally:
                self._pending.discard(item)

    async def stop(self) -> None:
        """Cancels the turn's tasks and its engine jobs not yet started."""
        for task in self._tasks:
            task.cancel()
        for future in list(self._pending):
            future.cancel()
        while not self._out.empty():
            item = self._out.get_nowait()
            if isinstance(item, Future):
                item.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _guard(self, work) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer, which raises it in order
            await self._out.put(exc)

    async def _read_audio(self) -> None:
        """Submits HuBERT jobs as soon as chunks fill, without waiting for earlier ones."""
        async for pcm in self._audio:
            if self._started is None:
                self._started = time.monotonic()
            self._submit_features(self._chunker.push(pcm))
        self._submit_features(self._chunker.finish())
        await self._features.put(self._chunker.frames_total)

    def _submit_features(self, chunks: list[np.ndarray]) -> None:
        if chunks:
            first_frame = self._chunker.frames_chunked - FRAMES_PER_CHUNK * len(chunks)
            job = self._engine.submit_features(np.stack(chunks), self._due(first_frame))
            self._pending.add(job)
            self._features.put_nowait(job)

    async def _collect_features(self) -> None:
        """Adds features to the motion stream in order; the end marker is the turn's frame count."""
        while True:
            item = await self._features.get()
            if isinstance(item, int):
                self._total = item
                self._wake.set()
                return
            features = await asyncio.wrap_future(item)
            self._pending.discard(item)
            self._motion.add_features(features.reshape(-1, features.shape[-1]))
            self._wake.set()

    async def _make_motion(self) -> None:
        session = self._session
        while self._total is None or self._motion.committed < self._total:
            self._wake.clear()
            plan = self._motion.next_window(self._total)
            if plan is None:
                await self._wake.wait()
                continue
            window = self._engine.submit_window(plan, session._seed, self._due(plan.start))
            self._pending.add(window)
            motion = await asyncio.wrap_future(window)
            self._pending.discard(window)
            final = self._motion.accept(plan, motion)
            for start in range(0, final.shape[0], RENDER_CHUNK):
                block = final[start : start + RENDER_CHUNK]
                request = FrameRequest(session.avatar, block, self._motion.d0, session._template_indices(len(block)))
                job = self._engine.submit_frames(request, self._due(plan.start + start))
                self._pending.add(job)
                await self._out.put(job)
        await self._out.put(None)
