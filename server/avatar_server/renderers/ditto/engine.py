"""The one Ditto worker: owns the shared networks and serves every session's work in shared batches.

Sessions submit HuBERT chunks, LMDM windows and frame batches and get futures back; per-session
state stays in the session. Each tick the worker gathers what is due from all sessions into one
HuBERT batch, one LMDM batch and one stitch+warp+decode+paste batch, padded to a few fixed batch
sizes (so compiled kernels and CUDA graphs see few shapes). Jobs carry a deadline (when their
first frame should be shown) and each kind is served earliest deadline first, so a session that
just started is not queued behind sessions whose audio arrived far ahead of real time. A job whose session has gone is
skipped or its result dropped; a batch that fails is re-run job by job so one bad job fails alone.
Admission control compares the sessions' frame rates with the throughput measured at start.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from avatar_server.core.errors import AvatarError, CapacityExhausted, RenderError
from avatar_server.renderers.ditto.audio_features import (
    CHUNK_SAMPLES,
    chunk_features,
    silence_chunk,
)
from avatar_server.renderers.ditto.avatar_prep import DeviceAvatar
from avatar_server.renderers.ditto.keypoints import SourceFace, driven_keypoints
from avatar_server.renderers.ditto.motion_diffusion import (
    DdimStep,
    WindowPlan,
    ddim_steps,
    sample_motion,
    window_noise,
)
from avatar_server.renderers.ditto.putback import to_i420_async, to_rgb24_async

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    """Batch shapes, sampling, capacity and speed-ups of the engine."""

    render_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    window_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    feature_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    sampling_steps: int = 10
    frames_per_window: int = 70  # steady-state stride, to turn window cost into cost per frame
    capacity_fps: float = 0.0  # 0: measure at start
    headroom: float = 0.85  # share of measured capacity that admission hands out
    max_sessions: int = 64
    profile: bool = False  # synchronize after each stage so stage timings are exact
    compile_render: bool = False  # torch.compile stitch+warp+decode
    graph_windows: bool = False  # CUDA-graph the whole DDIM loop per window batch size
    warm_up: bool = False  # run every batch shape once at start (compiles / captures before sessions)
    frame_format: str = "rgb24"  # "rgb24" (n, H, W, 3) or "yuv420p" (n, H * 3 // 2, W), converted on the device


@dataclass(frozen=True)
class FrameRequest:
    """Frames to render for one session: final motion, the turn's d0, template frame per frame."""

    avatar: DeviceAvatar
    motion: np.ndarray  # (n, 265)
    d0: np.ndarray  # (265,)
    template_index: np.ndarray  # (n,) int64


@dataclass
class StageStats:
    """Wall time per stage call and how many items (chunks, windows, frames) it served."""

    calls: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: collections.defaultdict(list))

    def add(self, stage: str, items: int, seconds: float) -> None:
        self.calls[stage].append((items, seconds))

    def per_item_ms(self, stage: str) -> float:
        """Total time over total items of a stage, in ms."""
        entries = self.calls.get(stage, [])
        items = sum(n for n, _ in entries)
        return 1000.0 * sum(s for _, s in entries) / items if items else float("nan")

    def clear(self) -> None:
        self.calls.clear()


class Admission:
    """A session's claim on engine capacity; release it when the session ends."""

    def __init__(self, engine: DittoEngine, fps: float) -> None:
        self._engine, self.fps, self._released = engine, fps, False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._engine._release(self)


@dataclass
class _Job:
    kind: str
    payload: Any
    future: Future
    items: int
    deadline: float
    order: int


@dataclass
class _RenderInFlight:
    """A render batch whose frames are on their way to pinned host memory."""

    jobs: list[_Job]
    hosts: list[torch.Tensor]
    event: Any  # torch.cuda.Event, None on CPU (copies there are synchronous)


_HOST_CONVERSIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "rgb24": to_rgb24_async,
    "yuv420p": to_i420_async,
}


def snap(count: int, sizes: Sequence[int]) -> int:
    """The smallest allowed batch size holding `count` (the largest if none does)."""
    for size in sorted(sizes):
        if size >= count:
            return size
    return max(sizes)


def _pad(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """Pads a batch to `size` by repeating its last item (results for the padding are dropped)."""
    if tensor.shape[0] >= size:
        return tensor
    return torch.cat([tensor, tensor[-1:].expand(size - tensor.shape[0], *tensor.shape[1:])])


class DittoEngine:
    """Serves all sessions' Ditto work on one device from one worker thread."""

    def __init__(self, networks: Any, options: EngineOptions = EngineOptions()) -> None:
        self.networks = networks
        if options.frame_format not in _HOST_CONVERSIONS:
            raise RenderError(f"unknown Ditto frame format {options.frame_format!r}: use rgb24 or yuv420p")
        self.options = options
        self.device: torch.device = networks.device
        self._to_host = _HOST_CONVERSIONS[options.frame_format]
        self.steps: list[DdimStep] = ddim_steps(options.sampling_steps)
        self.stats = StageStats()
        self._lock = threading.Condition()
        self._queues: dict[str, list[_Job]] = {kind: [] for kind in ("call", "features", "window", "render")}
        self._admitted: list[Admission] = []
        self._closing = False
        self._paused = 0
        self._order = 0
        self._capacity = options.capacity_fps
        self._compiled_render: Callable[..., torch.Tensor] | None = None
        if options.compile_render:
            _allow_recompiles(len(options.render_batch_sizes))
            self._compiled_render = torch.compile(self._stitch_warp_decode, dynamic=False)
        self.compile_error = ""
        self._graphs: dict[int, _GraphedSampler] = {}
        self.graph_error = ""
        self._thread = threading.Thread(target=self._work, name="ditto-engine", daemon=True)
        self._thread.start()
        self.silence_feature: np.ndarray = self.submit_features(silence_chunk()[None]).result()[0, 0]
        if options.warm_up:
            self.call(self._warm_up).result()
        if self._capacity <= 0:
            self._capacity = self.measure_capacity()

    # ----- public API (any thread) -----------------------------------------------------------
    def submit_features(self, chunks: np.ndarray, deadline: float = 0.0) -> Future:
        """(n, 6480) audio chunks -> future of (n, 5, 1024) float32 features.

        `deadline` (time.monotonic() seconds) orders work of one kind: earliest first.
        """
        chunks = np.asarray(chunks, dtype=np.float32)
        if chunks.ndim != 2 or chunks.shape[1] != CHUNK_SAMPLES:
            raise RenderError(f"audio chunks must be (n, {CHUNK_SAMPLES}), got {chunks.shape}")
        return self._submit("features", chunks, chunks.shape[0], deadline)

    def submit_window(self, plan: WindowPlan, session_seed: int, deadline: float = 0.0) -> Future:
        """One LMDM window -> future of its (L, 265) float32 motion."""
        expected = (self.networks.seq_frames, self.networks.cond_dim)
        if plan.cond.shape != expected or plan.cond_frame.shape != (self.networks.motion_dim,):
            raise RenderError(f"window condition must be {expected}, got {plan.cond.shape}")
        return self._submit("window", (plan, session_seed), 1, deadline)

    def submit_frames(self, request: FrameRequest, deadline: float = 0.0) -> Future:
        """Frames of one session -> future of (n, H, W, 3) uint8 rgb24, or (n, H * 3 // 2, W) I420
        when the engine's frame_format is yuv420p."""
        count = request.motion.shape[0]
        if count == 0 or request.motion.shape[1:] != (self.networks.motion_dim,):
            raise RenderError(f"frame motion must be (n>0, {self.networks.motion_dim}), got {request.motion.shape}")
        if request.template_index.shape != (count,):
            raise RenderError("one template index per frame is required")
        return self._submit("render", request, count, deadline)

    def call(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Runs `fn(*args)` on the worker thread (for per-avatar network calls)."""
        return self._submit("call", (fn, args), 1, 0.0)

    def measure_capacity(self) -> float:
        """Times full batches of each stage on the worker -> frames per second it can sustain."""
        return self.call(self._time_full_batches).result()

    def capacity_fps(self) -> float:
        """Frames per second the engine sustains in total (measured or configured)."""
        return self._capacity

    def load_fps(self) -> float:
        """Frames per second promised to admitted sessions."""
        with self._lock:
            return sum(a.fps for a in self._admitted)

    def session_count(self) -> int:
        """Sessions admitted now."""
        with self._lock:
            return len(self._admitted)

    def admit(self, fps: float) -> Admission:
        """Claims `fps` of capacity for a session; raises CapacityExhausted past the budget."""
        with self._lock:
            load = sum(a.fps for a in self._admitted)
            budget = self._capacity * self.options.headroom
            if len(self._admitted) >= self.options.max_sessions or load + fps > budget:
                raise CapacityExhausted(
                    f"Ditto engine on {self.device} full: {len(self._admitted)} sessions use {load:.0f} of "
                    f"{budget:.0f} frames/s it can render"
                )
            admission = Admission(self, fps)
            self._admitted.append(admission)
            return admission

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Holds new ticks while inside, so work submitted meanwhile is served as one batch."""
        with self._lock:
            self._paused += 1
        try:
            yield
        finally:
            with self._lock:
                self._paused -= 1
                self._lock.notify_all()

    def close(self) -> None:
        """Stops the worker; queued jobs are cancelled."""
        with self._lock:
            self._closing = True
            for queue in self._queues.values():
                for job in queue:
                    job.future.cancel()
                queue.clear()
            self._lock.notify_all()
        self._thread.join(timeout=30)

    # ----- internals --------------------------------------------------------------------------
    def _release(self, admission: Admission) -> None:
        with self._lock:
            if admission in self._admitted:
                self._admitted.remove(admission)

    def _submit(self, kind: str, payload: Any, items: int, deadline: float) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closing:
                raise RenderError("the Ditto engine is shut down", retriable=True)
            self._order += 1
            self._queues[kind].append(_Job(kind, payload, future, items, deadline, self._order))
            self._lock.notify()
        return future

    def _take(self) -> dict[str, list[_Job]]:
        """Everything due this tick, within the largest batch of each kind."""
        limits = {
            "call": 1 << 30,
            "features": max(self.options.feature_batch_sizes),
            "window": max(self.options.window_batch_sizes),
            "render": max(self.options.render_batch_sizes),
        }
        taken: dict[str, list[_Job]] = {}
        for kind, queue in self._queues.items():
            queue.sort(key=lambda job: (job.deadline, job.order))
            jobs, items, left = [], 0, 0
            while left < len(queue) and (not jobs or items + queue[left].items <= limits[kind]):
                job = queue[left]
                left += 1
                if job.future.set_running_or_notify_cancel():
                    jobs.append(job)
                    items += job.items
            del queue[:left]
            taken[kind] = jobs
        return taken

    def _work(self) -> None:
        """Ticks until closed. A render batch's frames are copied to the host while the next tick's
        work is launched; they are handed out once that copy is done (or when the queue runs dry)."""
        in_flight: _RenderInFlight | None = None
        while True:
            with self._lock:
                while not self._closing and (self._paused or not any(self._queues.values())):
                    if in_flight is not None:
                        break
                    self._lock.wait()
                if self._closing or self._paused or not any(self._queues.values()):
                    taken = None
                else:
                    taken = self._take()
                closing = self._closing
            if taken is None:
                if in_flight is not None:
                    self._complete_render(in_flight)
                    in_flight = None
                if closing:
                    return
                continue
            for job in taken["call"]:
                self._finish([job], lambda jobs: [jobs[0].payload[0](*jobs[0].payload[1])])
            if taken["features"]:
                self._finish(taken["features"], self._run_features)
            # windows and frames: the kind holding the most urgent job goes first
            kinds = sorted((k for k in ("window", "render") if taken[k]),
                           key=lambda k: min(job.deadline for job in taken[k]))
            for kind in kinds:
                if kind == "window":
                    if in_flight is not None:  # hand out finished frames before a long window
                        self._complete_render(in_flight)
                        in_flight = None
                    self._finish(taken["window"], self._run_windows)
                    continue
                launched = None
                try:
                    launched = self._launch_render(taken["render"])
                except Exception:  # find the failing job: run them one by one, synchronously
                    self._finish(taken["render"], self._run_render)
                if in_flight is not None:
                    self._complete_render(in_flight)
                in_flight = launched

    def _finish(self, jobs: list[_Job], runner: Callable[[list[_Job]], list[Any]]) -> None:
        """Runs a batch; on failure re-runs each job alone so only the failing one sees an error."""
        try:
            results = runner(jobs)
        except Exception as exc:
            if len(jobs) > 1:
                for job in jobs:
                    self._finish([job], runner)
                return
            error = exc if isinstance(exc, AvatarError) else RenderError(f"Ditto {jobs[0].kind} failed: {exc}")
            if error is not exc:
                log.exception("ditto %s job failed", jobs[0].kind)
            jobs[0].future.set_exception(error)
            return
        for job, result in zip(jobs, results):
            job.future.set_result(result)

    def _timed(self, stage: str, items: int, started: float) -> None:
        if self.options.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stats.add(stage, items, time.perf_counter() - started)

    @torch.inference_mode()
    def _run_features(self, jobs: list[_Job]) -> list[np.ndarray]:
        chunks = torch.from_numpy(np.concatenate([job.payload for job in jobs]))
        started = time.perf_counter()
        size = snap(chunks.shape[0], self.options.feature_batch_sizes)
        features = chunk_features(self.networks.hubert(_pad(chunks, size).to(self.device)))[: chunks.shape[0]]
        features = features.float().cpu().numpy()
        self._timed("hubert", chunks.shape[0], started)
        bounds = np.cumsum([0] + [job.items for job in jobs])
        return [features[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    @torch.inference_mode()
    def _run_windows(self, jobs: list[_Job]) -> list[np.ndarray]:
        started = time.perf_counter()
        net = self.networks
        plans: list[WindowPlan] = [job.payload[0] for job in jobs]
        noises = [
            window_noise(net.seq_frames, net.motion_dim, len(self.steps), session_seed=seed,
                         window_index=plan.index, device=self.device)
            for plan, seed in (job.payload for job in jobs)
        ]
        size = snap(len(jobs), self.options.window_batch_sizes)
        inputs = (
            _pad(torch.from_numpy(np.stack([p.cond_frame for p in plans])).to(self.device), size),
            _pad(torch.from_numpy(np.stack([p.cond for p in plans])).to(self.device), size),
            _pad(torch.stack([n[0] for n in noises]), size),
            _pad(torch.stack([n[1] for n in noises]), size),
        )
        graph = self._graph_for(size, inputs)
        if graph is not None:
            motion = graph.run(inputs)
        else:
            motion = sample_motion(self.networks.lmdm, self.steps, *inputs)
        motion = motion[: len(jobs)].float().cpu().numpy()
        self._timed("lmdm_window", len(jobs), started)
        return list(motion)

    def _graph_for(self, size: int, inputs: tuple[torch.Tensor, ...]) -> _GraphedSampler | None:
        """The captured sampler for a batch size; None (eager) if graphs are off or capture failed."""
        if not self.options.graph_windows or self.device.type != "cuda" or self.graph_error:
            return None
        if size not in self._graphs:
            try:
                self._graphs[size] = _GraphedSampler(self.networks.lmdm, self.steps, inputs)
            except Exception as exc:  # e.g. a host copy inside the network: run eagerly instead
                self.graph_error = f"{type(exc).__name__}: {exc}"
                log.warning("CUDA graph capture of LMDM failed, running it eagerly: %s", self.graph_error)
                torch.cuda.synchronize(self.device)
                return None
        return self._graphs[size]

    def _render_core(self, feature: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """Stitch + warp + decode, compiled when asked and compilable, else eager."""
        if self._compiled_render is not None:
            try:
                return self._compiled_render(feature, kp_source, kp_driving)
            except Exception as exc:  # inductor can fail on a runtime's modules: keep serving eagerly
                self.compile_error = f"{type(exc).__name__}: {str(exc)[:500]}"
                log.warning("torch.compile of the Ditto render failed, running it eagerly: %s", self.compile_error)
                self._compiled_render = None
        return self._stitch_warp_decode(feature, kp_source, kp_driving)

    def _upload(self, array: np.ndarray) -> torch.Tensor:
        """Host array -> device tensor without making the host wait for queued GPU work."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type != "cuda":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _stitch_warp_decode(self, feature: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        stitched = self.networks.stitch(kp_source, kp_driving)
        return self.networks.decode(self.networks.warp(feature, kp_source, stitched))

    def _run_render(self, jobs: list[_Job]) -> list[np.ndarray]:
        """Renders synchronously (the per-job fallback path)."""
        in_flight = self._launch_render(jobs)
        if in_flight.event is not None:
            in_flight.event.synchronize()
        return [host.numpy() for host in in_flight.hosts]

    def _complete_render(self, in_flight: _RenderInFlight) -> None:
        """Waits for a launched batch's host copies and hands each job its frames."""
        started = time.perf_counter()
        try:
            if in_flight.event is not None:
                in_flight.event.synchronize()
        except Exception as exc:
            for job in in_flight.jobs:
                job.future.set_exception(RenderError(f"Ditto render failed: {exc}"))
            return
        self._timed("render_wait", sum(job.items for job in in_flight.jobs), started)
        for job, host in zip(in_flight.jobs, in_flight.hosts):
            job.future.set_result(host.numpy())

    @torch.inference_mode()
    def _launch_render(self, jobs: list[_Job]) -> _RenderInFlight:
        """Queues stitch+warp+decode+paste of a batch and the copies of its frames to the host."""
        started = time.perf_counter()
        features, sources, drivings, indices = [], [], [], []
        for job in jobs:
            request: FrameRequest = job.payload
            index = self._upload(request.template_index)
            indices.append(index)
            avatar = request.avatar
            source = SourceFace(avatar.source.motion[index], avatar.source.canonical_kp[index])
            motion = self._upload(request.motion)
            d0 = self._upload(request.d0).expand_as(motion)
            drivings.append(driven_keypoints(motion, d0, source))
            sources.append(avatar.source_keypoints[index])
            features.append(avatar.appearance[index])
        count = sum(job.items for job in jobs)
        size = snap(count, self.options.render_batch_sizes)
        renders = self._render_core(
            _pad(torch.cat(features), size), _pad(torch.cat(sources), size), _pad(torch.cat(drivings), size)
        )[:count]
        self._timed("stitch_warp_decode", count, started)
        started = time.perf_counter()
        hosts, offset = [], 0
        for job, index in zip(jobs, indices):
            frames = job.payload.avatar.paste.paste(renders[offset : offset + job.items], index)
            hosts.append(self._to_host(frames))
            offset += job.items
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        self._timed("paste_back", count, started)  # includes the colour conversion
        return _RenderInFlight(jobs, hosts, event)

    @torch.inference_mode()
    def _warm_up(self) -> None:
        """Runs every render and window batch shape once (torch.compile, CUDA graph capture)."""
        net, sizes = self.networks, self.networks.sizes
        for size in self.options.render_batch_sizes:
            feature = torch.rand(size, sizes.feature_channels, sizes.feature_depth, sizes.feature_size,
                                 sizes.feature_size, device=self.device).to(net.dtype)
            kp = torch.randn(size, sizes.num_kp, 3, device=self.device) * 0.1
            self._render_core(feature, kp, kp * 1.01)
        for size in self.options.window_batch_sizes:
            inputs = (torch.zeros(size, net.motion_dim, device=self.device),
                      torch.zeros(size, net.seq_frames, net.cond_dim, device=self.device),
                      torch.randn(size, net.seq_frames, net.motion_dim, device=self.device),
                      torch.randn(size, len(self.steps), net.seq_frames, net.motion_dim, device=self.device))
            graph = self._graph_for(size, inputs)
            if graph is None:
                sample_motion(net.lmdm, self.steps, *inputs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def _time_full_batches(self) -> float:
        net, sizes = self.networks, self.networks.sizes
        render_batch = max(self.options.render_batch_sizes)
        feature = torch.rand(render_batch, sizes.feature_channels, sizes.feature_depth, sizes.feature_size,
                             sizes.feature_size, device=self.device).to(net.dtype)
        kp = torch.randn(render_batch, sizes.num_kp, 3, device=self.device) * 0.1
        render_s = _median_seconds(lambda: self._render_core(feature, kp, kp * 1.01).float().sum().item())
        windows = max(self.options.window_batch_sizes)
        cond_frame = torch.zeros(windows, net.motion_dim, device=self.device)
        cond = torch.zeros(windows, net.seq_frames, net.cond_dim, device=self.device)
        noise = torch.randn(windows, net.seq_frames, net.motion_dim, device=self.device)
        step_noise = torch.randn(windows, len(self.steps), net.seq_frames, net.motion_dim, device=self.device)
        window_s = _median_seconds(
            lambda: sample_motion(net.lmdm, self.steps, cond_frame, cond, noise, step_noise).sum().item()
        )
        per_frame = render_s / render_batch + window_s / (windows * self.options.frames_per_window)
        capacity = 1.0 / per_frame
        log.info("ditto engine capacity %.1f frames/s (render %.1f ms/frame, window batch of %d %.0f ms)",
                 capacity, 1000 * render_s / render_batch, windows, 1000 * window_s)
        return capacity


def _allow_recompiles(shapes: int) -> None:
    """Every engine compiles the same method, so dynamo keeps one entry per engine (device) and batch
    shape under one code object: lift its per-code limit (default 8) so a second GPU does not fall
    back to eager."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 16 * shapes))


def _median_seconds(fn: Callable[[], Any], warmup: int = 1, repeat: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class _GraphedSampler:
    """The DDIM loop for one window batch size, captured once as a CUDA graph and replayed."""

    def __init__(self, lmdm: Callable, steps: list[DdimStep], example: tuple[torch.Tensor, ...]) -> None:
        self._inputs = tuple(t.clone() for t in example)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                sample_motion(lmdm, steps, *self._inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._output = sample_motion(lmdm, steps, *self._inputs)

    def run(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        for static, value in zip(self._inputs, inputs):
            static.copy_(value)
        self._graph.replay()
        return self._output.clone()
