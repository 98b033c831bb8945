"""The Ditto renderer: `Renderer`/`RenderSession` over the shared engine (audio -> motion -> frames).

A session turns each turn's 16 kHz speech into exactly one frame per 640 samples: audio is cut
into HuBERT chunks, features feed sliding LMDM windows, final motion is rendered in small frame
batches that the engine merges with other sessions' work. Everything heavy runs on the engine's
worker thread; the event loop only moves small arrays and awaits futures. With several devices
there is one engine (and one weight copy) per device; each session lives on the least-loaded one.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from avatar_server.avatars.model import AvatarAssets
from avatar_server.core.errors import CapacityExhausted, InvalidInput
from avatar_server.core.frames import Frame
from avatar_server.renderers.base import ModelDescription, RendererSetup
from avatar_server.renderers.ditto.audio_features import (
    FRAMES_PER_CHUNK,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    AudioChunker,
)
from avatar_server.renderers.ditto.avatar_prep import (
    DeviceAvatar,
    PrepOptions,
    load_or_prepare,
    mirror_index,
)
from avatar_server.renderers.ditto.checkpoints import registration_aux_files
from avatar_server.renderers.ditto.config import ConfigError, DittoConfig, resolve_config
from avatar_server.renderers.ditto.engine import Admission, DittoEngine, EngineOptions, FrameRequest
from avatar_server.renderers.ditto.motion_diffusion import (
    MotionStream,
    StreamOptions,
    emotion_condition,
)
from avatar_server.renderers.ditto.registration import Registrar
from avatar_server.renderers.ditto.registration.crop import CropParameters
from avatar_server.renderers.ditto.registration.face_models import ReleaseFaceModels

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


def _crop_parameters(config: DittoConfig) -> CropParameters:
    return CropParameters(scale=float(config.crop_scale), vx=float(config.crop_vx_ratio),
                          vy=float(config.crop_vy_ratio), rotate=bool(config.crop_flag_do_rot))


def _prep_options(config: DittoConfig) -> PrepOptions:
    """What the cfg says about preparing avatars; a bad emotion is a start-up error naming the file."""
    try:
        emotion_condition(config.emo)
    except ValueError as error:
        raise ConfigError(f"{config.source}: {error}") from None
    return PrepOptions(max_size=int(config.max_size), template_frames=int(config.template_n_frames),
                       crop=_crop_parameters(config), emotion=config.emo, use_emo=bool(config.use_emo),
                       use_eye_open=bool(config.use_eye_open), use_eye_ball=bool(config.use_eye_ball),
                       use_sc=bool(config.use_sc))


@dataclass(frozen=True)
class EngineLoad:
    """One engine's share of the pool, for ServerInfo and metrics."""

    device: str
    sessions: int
    load_fps: float  # frames/s promised to its sessions
    capacity_fps: float  # frames/s it sustains (measured or configured)


class DittoRenderer:
    """Ditto engines (one per device, each with one shared weight copy); makes one `DittoSession` per
    conversation, placed on the engine with the least admitted load."""

    name = "ditto"
    sample_rate = SAMPLE_RATE

    def __init__(self, settings: Any, *, networks: Any = None, engine_options: EngineOptions | None = None) -> None:
        """`networks` (one loaded set) skips loading and gives a single engine; otherwise one set is
        loaded per device of `settings.ditto.device`. The cfg .pkl and the face models are checked
        first: a bad checkpoints folder fails before any weights load."""
        checkpoints = Path(settings.ditto.checkpoints)
        self.resolved = resolve_config(checkpoints, settings.ditto)
        config = self.resolved.config
        aux_files = registration_aux_files(checkpoints)
        self.registrar = Registrar(ReleaseFaceModels.load(aux_files) if aux_files else None, _crop_parameters(config))
        self.prep_options = _prep_options(config)
        if networks is None:
            from avatar_server.renderers.ditto.models import (
                engine_devices,
                load_networks,
                network_options_from_settings,
            )

            options = network_options_from_settings(settings)
            network_sets = [load_networks(checkpoints, **{**options, "device": device})
                            for device in engine_devices(settings.ditto.device)]
        else:
            network_sets = [networks]
        self.networks = network_sets[0]
        self.stream_options = StreamOptions(
            sampling_steps=config.sampling_timesteps,
            overlap=config.overlap_v2,
            stride=settings.ditto.stride,
            first_frames=settings.ditto.first_frames,
        )
        self.stream_options.validate(self.networks.seq_frames)
        self._weights_id = _weights_id(checkpoints)
        batch_sizes = tuple(s for s in (1, 2, 4, 8, 16, 32, 64) if s <= settings.ditto.render_batch)
        options = engine_options or EngineOptions(
            render_batch_sizes=batch_sizes or (1,),
            sampling_steps=config.sampling_timesteps,
            frames_per_window=settings.ditto.stride,
            capacity_fps=settings.ditto.capacity_fps,
            max_sessions=settings.limits.max_sessions,
            compile_render=settings.ditto.compile,
            graph_windows=settings.ditto.compile,
            warm_up=settings.ditto.compile,
        )
        from avatar_server.renderers.ditto.models import resolve_frame_format

        frame_format = settings.ditto.frame_format
        self.engines: list[DittoEngine] = []
        try:
            for net in network_sets:
                engine_format = resolve_frame_format(frame_format, net.device)
                self.engines.append(DittoEngine(net, replace(options, frame_format=engine_format)))
        except BaseException:
            for engine in self.engines:
                engine.close()
            raise
        self.engine = self.engines[0]  # the first (only, on one device) engine
        self._avatars: dict[str, tuple[DeviceAvatar, int]] = {}
        self._registered: dict[str, str] = {}  # avatar id -> the registration path it took
        self._avatar_locks: dict[str, asyncio.Lock] = {}

    async def open_session(self, avatar: AvatarAssets, *, fps: int, seed: int | None = None) -> DittoSession:
        """Admits a session on the least-loaded engine that can take it (CapacityExhausted when none
        can) and prepares its avatar there once."""
        if fps != FPS:
            raise InvalidInput(f"the Ditto renderer draws {FPS} fps (one frame per 640 samples), not {fps}")
        index, admission = self._admit(fps)
        try:
            device_avatar = await self._acquire_avatar(avatar, index)
        except BaseException:
            admission.release()
            raise
        key = self._avatar_key(avatar, index)
        seed = random.getrandbits(31) if seed is None else seed
        return DittoSession(self, self.engines[index], key, device_avatar, admission, seed)

    def models(self) -> list[ModelDescription]:
        """Every engine's networks (one entry per network and device)."""
        return [model for engine in self.engines for model in engine.networks.describe()]

    def setup(self) -> RendererSetup:
        """The registration path and the run options in use (cfg values, overrides), for ServerInfo."""
        fallbacks = [f"avatar {avatar}: {path}" for avatar, path in sorted(self._registered.items())
                     if path != self.registrar.path]
        return RendererSetup("; ".join([self.registrar.path, *fallbacks]), self.resolved.describe())

    def capacity_fps(self) -> float:
        """Frames per second all engines sustain together."""
        return sum(engine.capacity_fps() for engine in self.engines)

    def load_fps(self) -> float:
        """Frames per second promised to admitted sessions, all engines together."""
        return sum(engine.load_fps() for engine in self.engines)

    def engine_loads(self) -> list[EngineLoad]:
        """Sessions, load and capacity of each engine (device)."""
        return [EngineLoad(str(engine.device), engine.session_count(), engine.load_fps(), engine.capacity_fps())
                for engine in self.engines]

    async def aclose(self) -> None:
        for engine in self.engines:
            await asyncio.to_thread(engine.close)

    def _admit(self, fps: float) -> tuple[int, Admission]:
        """Tries engines from the least admitted load up; the first that has room keeps the session."""
        order = sorted(range(len(self.engines)), key=lambda i: (self.engines[i].load_fps(), i))
        refusals = []
        for index in order:
            try:
                return index, self.engines[index].admit(fps)
            except CapacityExhausted as refusal:
                refusals.append(refusal.message)
        if len(self.engines) == 1:
            raise CapacityExhausted(refusals[0])
        raise CapacityExhausted(
            f"all {len(self.engines)} Ditto engines are full ({self.load_fps():.0f} of "
            f"{self.capacity_fps():.0f} frames/s promised): " + "; ".join(refusals)
        )

    def _avatar_key(self, avatar: AvatarAssets, engine_index: int = 0) -> str:
        return f"{engine_index}:{avatar.info.id}:{avatar.info.content_sha256}"

    async def _acquire_avatar(self, avatar: AvatarAssets, engine_index: int = 0) -> DeviceAvatar:
        """The avatar's tensors on one engine's device, prepared (or read from cache) once per device."""
        key = self._avatar_key(avatar, engine_index)
        engine = self.engines[engine_index]
        async with self._avatar_locks.setdefault(key, asyncio.Lock()):
            if key in self._avatars:
                device_avatar, users = self._avatars[key]
                self._avatars[key] = (device_avatar, users + 1)
                return device_avatar

            def prepare() -> DeviceAvatar:
                prepared = load_or_prepare(avatar, engine.networks, self.registrar, weights_id=self._weights_id,
                                           options=self.prep_options)
                return DeviceAvatar(prepared, engine.networks.device, engine.networks.dtype)

            device_avatar = await asyncio.wrap_future(engine.call(prepare))
            self._avatars[key] = (device_avatar, 1)
            self._registered[avatar.info.id] = device_avatar.prepared.registration
            return device_avatar

    def _release_avatar(self, key: str) -> None:
        if key in self._avatars:
            device_avatar, users = self._avatars[key]
            if users <= 1:
                del self._avatars[key]
            else:
                self._avatars[key] = (device_avatar, users - 1)


class DittoSession:
    """One conversation: its engine, avatar handle, engine slot, noise seed and frame clock."""

    def __init__(
        self, renderer: DittoRenderer, engine: DittoEngine, avatar_key: str, avatar: DeviceAvatar,
        admission: Admission, seed: int,
    ) -> None:
        self._renderer = renderer
        self.engine = engine
        self.frame_format = engine.options.frame_format
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
                    yield Frame(frame, self.frame_format)
        finally:
            await turn.stop()

    async def idle_frames(self, count: int) -> list[Frame]:
        """The template frames, walked forth and back (a still for a portrait), in the engine's format."""
        frames = self.avatar.template_frames(self.frame_format)
        out = [Frame(frames[mirror_index(self._clock + i, len(frames))], self.frame_format) for i in range(count)]
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
        self._engine: DittoEngine = session.engine
        self._audio = audio
        self._chunker = AudioChunker()
        prepared = session.avatar.prepared
        self._motion = MotionStream(
            renderer.stream_options,
            seq_frames=session.engine.networks.seq_frames,
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
