#!/usr/bin/env python3
"""GPU benchmark of the Ditto pipeline: per-stage cost, engine throughput for N sessions, latency, memory.

Runs with only torch + numpy + opencv + scikit-image installed (our package is imported by path), so
it works on a bare GPU machine. Checkpoints: the official folder or stand-ins made with
`avatar-checkpoints standin --size full` (same shapes as the release, so the same cost; random weights).

    python3 bench/bench_ditto_gpu.py --checkpoints /tmp/standin --out results/ [--compile] [--official]

Prints a table and writes `ditto_gpu.json` (all numbers) under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "server"))

from avatar_server.avatars.model import AvatarAssets, AvatarInfo
from avatar_server.renderers.ditto.audio_features import SAMPLE_RATE, chunk_features
from avatar_server.renderers.ditto.engine import EngineOptions
from avatar_server.renderers.ditto.models import load_networks
from avatar_server.renderers.ditto.motion_diffusion import ddim_steps, sample_motion
from avatar_server.renderers.ditto.renderer import DittoRenderer
from avatar_server.settings import Settings, load_settings

LANDMARKS = ROOT / "bench" / "ditto_astronaut_landmarks.npy"  # mediapipe 478 on skimage's astronaut


def settings(args: argparse.Namespace, **overrides) -> Settings:
    """The service settings DittoRenderer reads, for this benchmark."""
    values = dict(
        checkpoints=Path(args.checkpoints), ditto_runtime="pytorch", ditto_device=args.device,
        ditto_sampling_steps=args.steps, ditto_max_size=args.max_size, ditto_template_frames=1, ditto_overlap=10,
        ditto_stride=70, ditto_first_frames=args.first_frames, ditto_render_batch=args.render_batch, ditto_capacity_fps=1e9,
        ditto_compile=False, max_sessions=64,
    )
    values.update(overrides)
    return load_settings(environment=False, **values)


def avatars(cache: Path, side: int = 512) -> list[AvatarAssets]:
    """Two avatars of different sizes from skimage's astronaut (public domain), upscaled to `side`
    (e.g. 1920, to time paste-back and colour conversion at the authors' default output size)."""
    import cv2
    from skimage import data

    image = data.astronaut()
    points = np.load(LANDMARKS)
    if side != image.shape[0]:
        points = points * (side / image.shape[0])
        image = cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC)
    k = side / 512
    y0, y1, x0, x1 = (int(v * k) // 2 * 2 for v in (20, 420, 60, 460))
    crops = [(image, points), (np.ascontiguousarray(image[y0:y1, x0:x1]), points - np.array([x0, y0], np.float32))]
    out = []
    for index, (frame, lm) in enumerate(crops):
        info = AvatarInfo(f"astronaut{index}", "astronaut", "image", frame.shape[1], frame.shape[0], 1,
                          f"sha-{index}", datetime.now(UTC))
        out.append(AvatarAssets(info, frame[None], 25.0, lm[None].astype(np.float32), "mediapipe478",
                                np.concatenate([lm.min(0), lm.max(0)])[None], cache / info.id))
    return out


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Voiced, syllable-rate modulated tones with pauses: audio with speech's rhythm (not speech)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.5 * t)
    voice = sum(np.sin(2 * np.pi * k * np.cumsum(pitch) / SAMPLE_RATE) / k for k in range(1, 6))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, 1) * (np.sin(2 * np.pi * 0.3 * t) > -0.7)
    return (0.3 * voice * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cuda_ms(fn, warmup: int = 3, repeat: int = 10) -> float:
    """Median wall ms of fn() with the device synchronised around each run."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


@torch.inference_mode()
def stage_costs(net, steps: int, batches: list[int]) -> dict:
    """ms per call and per frame of each network at several batch sizes, random inputs."""
    s, dev = net.sizes, net.device
    out: dict[str, dict] = {}
    for b in (1, 16):
        audio = torch.randn(b, s.hubert_samples, device=dev) * 0.1
        ms = cuda_ms(lambda: chunk_features(net.hubert(audio)))
        out[f"hubert_b{b}"] = {"ms": ms, "ms_per_frame": ms / (5 * b)}
    schedule = ddim_steps(steps)
    for b in (1, 4, 16):
        args = (torch.zeros(b, net.motion_dim, device=dev), torch.randn(b, net.seq_frames, net.cond_dim, device=dev),
                torch.randn(b, net.seq_frames, net.motion_dim, device=dev),
                torch.randn(b, steps, net.seq_frames, net.motion_dim, device=dev))
        ms = cuda_ms(lambda: sample_motion(net.lmdm, schedule, *args), warmup=2, repeat=5)
        out[f"lmdm_window_b{b}"] = {"ms": ms, "ms_per_frame_at_stride70": ms / (70 * b)}
    image = torch.rand(1, 3, s.source_size, s.source_size, device=dev)
    out["appearance_b1"] = {"ms": cuda_ms(lambda: net.appearance(image))}
    out["motion_b1"] = {"ms": cuda_ms(lambda: net.motion(image))}
    for b in batches:
        feature = torch.rand(b, s.feature_channels, s.feature_depth, s.feature_size, s.feature_size, device=dev)
        feature = feature.to(net.dtype)
        kp = torch.randn(b, s.num_kp, 3, device=dev) * 0.2
        warped = net.warp(feature, kp, kp * 1.02)
        rows = {
            "stitch": cuda_ms(lambda: net.stitch(kp, kp)),
            "warp": cuda_ms(lambda: net.warp(feature, kp, kp * 1.02)),
            "decode": cuda_ms(lambda: net.decode(warped)),
        }
        out[f"render_b{b}"] = {**{k: v for k, v in rows.items()},
                               **{f"{k}_per_frame": v / b for k, v in rows.items()},
                               "fps_warp_decode": 1000 * b / (rows["warp"] + rows["decode"] + rows["stitch"])}
    from avatar_server.renderers.ditto.putback import PasteBack, to_rgb24_async

    frames = (np.random.default_rng(0).random((1, 512, 512, 3)) * 255).astype(np.uint8)
    crop_from_frame = np.array([[2.0, 0.0, -200.0], [0.0, 2.0, -60.0], [0.0, 0.0, 1.0]])
    paste = PasteBack.build(frames, np.linalg.inv(crop_from_frame)[None].astype(np.float32), 512, dev)
    renders = torch.rand(16, 3, 512, 512, device=dev, dtype=net.dtype)
    index = torch.zeros(16, dtype=torch.int64, device=dev)
    ms = cuda_ms(lambda: to_rgb24_async(paste.paste(renders, index)))
    out["paste_rgb24_b16"] = {"ms": ms, "ms_per_frame": ms / 16}
    return out


def compile_render_modules(net, mode: str = "default") -> None:
    """BENCH SHIM: torch.compile the warp and decoder modules inside the runtime (which has no such
    option yet); compiling our stitch+warp+decode wrapper failed in inductor under inference mode."""
    for name in ("warp_network", "decoder"):
        net._modules[name] = torch.compile(net._modules[name], mode=mode, dynamic=False)


async def run_sessions(renderer: DittoRenderer, avatar_list, sessions: int, seconds: float, chunk_s: float,
                       paced: bool, seed: int = 0) -> dict:
    """`sessions` concurrent turns of `seconds` of audio each; returns throughput and latencies."""
    opened = [await renderer.open_session(avatar_list[i % len(avatar_list)], fps=25, seed=seed + i)
              for i in range(sessions)]
    chunk = int(chunk_s * SAMPLE_RATE)

    async def one(session, index: int) -> dict:
        audio = speech_like(seconds, seed + index)
        marks: dict[str, float] = {}

        async def feed():
            begin = time.perf_counter()
            for k, start in enumerate(range(0, audio.size, chunk)):
                if paced:
                    await asyncio.sleep(max(0.0, begin + k * chunk_s - time.perf_counter()))
                marks.setdefault("first_audio", time.perf_counter())
                yield audio[start : start + chunk]

        frames = 0
        async for frame in session.render(feed()):
            if frames == 0:
                marks["first_frame"] = time.perf_counter()
                assert frame.data.dtype == np.uint8
            frames += 1
        marks["last_frame"] = time.perf_counter()
        assert frames == audio.size // 640, (frames, audio.size // 640)
        return {"frames": frames, **marks}

    renderer.engine.stats.clear()
    started = time.perf_counter()
    results = await asyncio.gather(*(one(s, i) for i, s in enumerate(opened)))
    wall = max(r["last_frame"] for r in results) - started
    for s in opened:
        await s.aclose()
    total = sum(r["frames"] for r in results)
    first = [1000 * (r["first_frame"] - r["first_audio"]) for r in results]
    stats = renderer.engine.stats
    return {
        "sessions": sessions, "seconds_audio": seconds, "paced": paced, "frames": total, "wall_s": wall,
        "fps": total / wall, "first_frame_ms_median": statistics.median(first), "first_frame_ms_max": max(first),
        "stage_ms_per_item": {k: stats.per_item_ms(k) for k in list(stats.calls)},
        "stage_batches": {k: statistics.mean(n for n, _ in v) for k, v in stats.calls.items()},
    }


@torch.inference_mode()
def official_style(args, avatar_list) -> dict:
    """One session the official way: fp32 weights under fp16 autocast, batch 1, frame after frame."""
    net = load_networks(Path(args.checkpoints), runtime="pytorch", device=args.device, precision="fp32")
    s, dev = net.sizes, net.device
    feature = torch.rand(1, s.feature_channels, s.feature_depth, s.feature_size, s.feature_size, device=dev)
    kp = torch.randn(1, s.num_kp, 3, device=dev) * 0.2

    def frame():
        with torch.autocast("cuda", dtype=torch.float16):
            net.decode(net.warp(feature, kp, net.stitch(kp, kp * 1.02))).float().cpu()

    ms = cuda_ms(frame, warmup=3, repeat=20)
    schedule = ddim_steps(args.steps)
    lm = (torch.zeros(1, net.motion_dim, device=dev), torch.randn(1, net.seq_frames, net.cond_dim, device=dev),
          torch.randn(1, net.seq_frames, net.motion_dim, device=dev),
          torch.randn(1, args.steps, net.seq_frames, net.motion_dim, device=dev))

    def window():
        with torch.autocast("cuda", dtype=torch.float16):
            sample_motion(net.lmdm, schedule, *lm)

    window_ms = cuda_ms(window, warmup=2, repeat=5)
    return {"frame_ms_b1": ms, "fps_render_only": 1000 / ms, "lmdm_window_ms_b1": window_ms,
            "fps_with_lmdm_stride70": 1000 / (ms + window_ms / 70)}


def capture_friendly_lmdm(net):
    """BENCH SHIM: the same guided LMDM step as `net.lmdm`, with the guidance mask made on the device.

    When the figures in RESULTS.md were taken the runtime built that mask on the host (CUDA graph
    capture refuses the copy); it now builds it on the device, so the engine's graphs should work
    without this shim (not yet re-measured). Kept so the published figures can be reproduced.
    """
    module = net._modules["lmdm"]

    def lmdm(x, cond_frame, cond, time):
        b = x.shape[0]
        keep = torch.arange(2 * b, device=x.device) >= b
        both = module.denoise(torch.cat([x, x]), torch.cat([cond_frame, cond_frame]), torch.cat([cond, cond]),
                              torch.cat([time, time]), keep)
        unc, con = both[:b], both[b:]
        x_start = unc + 2.0 * (con - unc)
        signal = module.sqrt_alphas_cumprod[time].view(b, 1, 1)
        noise = module.sqrt_one_minus_alphas_cumprod[time].view(b, 1, 1)
        return (x - signal * x_start) / noise, x_start

    return lmdm


@torch.inference_mode()
def lmdm_graph_probe(net, steps: int) -> dict:
    """Eager vs CUDA-graph replay of a whole DDIM window (shim above), batch 1 and 16."""
    from avatar_server.renderers.ditto.engine import _GraphedSampler

    lmdm, schedule, out = capture_friendly_lmdm(net), ddim_steps(steps), {}
    for b in (1, 16):
        dev = net.device
        args = (torch.zeros(b, net.motion_dim, device=dev), torch.randn(b, net.seq_frames, net.cond_dim, device=dev),
                torch.randn(b, net.seq_frames, net.motion_dim, device=dev),
                torch.randn(b, steps, net.seq_frames, net.motion_dim, device=dev))
        eager = sample_motion(net.lmdm, schedule, *args)
        graph = _GraphedSampler(lmdm, schedule, args)
        same = (graph.run(args) - eager).abs().max().item()
        out[f"b{b}"] = {"eager_ms": cuda_ms(lambda: sample_motion(net.lmdm, schedule, *args), 2, 5),
                        "graph_ms": cuda_ms(lambda: graph.run(args), 2, 10), "max_abs_diff_vs_eager": same}
    return out


@torch.inference_mode()
def hubert_large_estimate() -> dict:
    """The stand-in HuBERT is tiny; this times a HuBERT-large-SHAPED encoder (conv front end, 24 layers of
    1024, random weights) on one 6480-sample chunk per session, fp16, to size the real audio stage."""
    convs, channels = [], 1
    for kernel, stride in [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2:
        convs += [torch.nn.Conv1d(channels, 512, kernel, stride), torch.nn.GELU()]
        channels = 512
    front = torch.nn.Sequential(*convs).cuda().half()
    project = torch.nn.Linear(512, 1024).cuda().half()
    layer = torch.nn.TransformerEncoderLayer(1024, 16, 4096, batch_first=True, norm_first=True)
    encoder = torch.nn.TransformerEncoder(layer, 24, enable_nested_tensor=False).cuda().half().eval()
    out = {}
    for b in (1, 16):
        audio = torch.randn(b, 1, 6480, device="cuda", dtype=torch.float16)
        ms = cuda_ms(lambda: encoder(project(front(audio).transpose(1, 2))))
        out[f"b{b}"] = {"ms": ms, "ms_per_frame": ms / (5 * b)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", required=True)
    parser.add_argument("--out", default="bench_out")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sessions", default="1,4,8,16")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--paced-seconds", type=float, default=4.0)
    parser.add_argument("--render-batch", type=int, default=16)
    parser.add_argument("--compile", action="store_true", help="also run with torch.compile + CUDA graphs")
    parser.add_argument("--official", action="store_true", help="also time the official-style path")
    parser.add_argument("--skip-stages", action="store_true")
    parser.add_argument("--skip-eager", action="store_true")
    parser.add_argument("--compile-modules", action="store_true", help="compiled run: compile warp+decoder modules")
    parser.add_argument("--first-frames", type=int, default=10)
    parser.add_argument("--avatar-side", type=int, default=512, help="side of the benchmark avatars (1920: full size)")
    parser.add_argument("--max-size", type=int, default=512,
                        help="longest output side (the authors' default is 1920; 512 as in earlier runs)")
    parser.add_argument("--hubert-large", action="store_true", help="time a HuBERT-large-shaped encoder")
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    gpu = args.device.startswith("cuda")
    precision = "fp16" if gpu else None
    report: dict = {"device": torch.cuda.get_device_name(0) if gpu else "cpu", "torch": torch.__version__,
                    "args": vars(args)}

    def save() -> None:
        (out_dir / "ditto_gpu.json").write_text(json.dumps(report, indent=1, default=str))

    def section(name, fn):
        started = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as exc:  # keep what the other sections measured
            report[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
        print(f"== {name} ({time.perf_counter() - started:.1f} s): {json.dumps(report[name], default=str)[:1500]}",
              flush=True)
        save()

    cache = Path("/tmp/ditto_bench_cache")
    avatar_list = avatars(cache, args.avatar_side)
    sessions = [int(n) for n in args.sessions.split(",")]

    def engine_runs(label: str, engine: EngineOptions | None = None, **overrides):
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        load_started = time.perf_counter()
        config = settings(args, **overrides)
        net = load_networks(config.ditto.checkpoints, runtime="pytorch", device=args.device, precision=precision)
        if engine is not None and engine.graph_windows:
            net.lmdm = capture_friendly_lmdm(net)  # see the shim's docstring
        if args.compile_modules and engine is not None:
            compile_render_modules(net)
        renderer = DittoRenderer(config, networks=net, engine_options=engine)
        result: dict = {"startup_s": time.perf_counter() - load_started,
                        "capacity_fps_measured": renderer.engine.measure_capacity(),
                        "engine": repr(renderer.engine.options)}

        async def all_runs():
            await run_sessions(renderer, avatar_list, 2, min(3.0, args.seconds), 0.2, paced=False, seed=99)  # warm-up
            for n in sessions:
                result[f"burst_{n}"] = await run_sessions(renderer, avatar_list, n, args.seconds, 0.2, False)
                print(label, n, json.dumps(result[f"burst_{n}"])[:600], flush=True)
                (out_dir / f"partial_{label}.json").write_text(json.dumps(result, indent=1, default=str))
            result["paced_1"] = await run_sessions(renderer, avatar_list, 1, args.paced_seconds, 0.04, paced=True)
            result["paced_1_first_frame_note"] = "audio arrives in real time, 40 ms chunks"
            result["graph_error"] = renderer.engine.graph_error

        asyncio.run(all_runs())
        if gpu:
            result["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
            result["max_memory_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        asyncio.run(renderer.aclose())
        return result

    if not args.skip_stages:
        def stages():
            net = load_networks(Path(args.checkpoints), runtime="pytorch", device=args.device, precision=precision)
            result = stage_costs(net, args.steps, [1, 4, 8, 16, 32] if gpu else [1, 2])
            if gpu:
                try:
                    result["lmdm_graph"] = lmdm_graph_probe(net, args.steps)
                except Exception as exc:
                    result["lmdm_graph"] = {"error": f"{type(exc).__name__}: {exc}"}
            if gpu:
                result["weights_gib"] = torch.cuda.memory_allocated() / 2**30
            del net
            if gpu:
                torch.cuda.empty_cache()
            return result
        section("stages_fp16", stages)
    if not args.skip_eager:
        section("engine_fp16_eager", lambda: engine_runs("eager"))
    if args.official:
        section("official_style", lambda: official_style(args, avatar_list))
    if args.compile:
        compiled = EngineOptions(render_batch_sizes=(4, 16), sampling_steps=args.steps, compile_render=False,
                                 graph_windows=True, max_sessions=64, capacity_fps=1e9, warm_up=True)
        section("engine_fp16_compiled", lambda: engine_runs("compiled", compiled))
    if args.hubert_large:
        section("hubert_large_shaped_fp16", hubert_large_estimate)
    print("SUMMARY", json.dumps({k: v for k, v in report.items() if k != "args"}, default=str)[:6000])


if __name__ == "__main__":
    main()
