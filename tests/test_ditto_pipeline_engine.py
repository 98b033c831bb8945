"""The Ditto renderer and engine end to end on CPU with tiny stand-in checkpoints (random weights).

Stand-ins render noise, so these tests check the pipeline's contract: frame counts, sizes, that a
batch of several sessions gives each session what it would get alone, isolation and admission.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from avatar_server.avatars.model import AvatarAssets, AvatarInfo
from avatar_server.core.errors import CapacityExhausted, InvalidInput, RenderError
from avatar_server.renderers.ditto.engine import FrameRequest
from avatar_server.renderers.ditto.motion_diffusion import WindowPlan
from avatar_server.renderers.ditto.renderer import DittoRenderer
from avatar_server.settings import Settings, load_settings

SAMPLES_PER_FRAME = 640


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """Tiny networks run many small ops: one thread avoids oversubscribing a shared CI box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory) -> Path:
    from avatar_server.renderers.ditto.standin import write_standin

    folder = tmp_path_factory.mktemp("ditto_standin")
    write_standin(folder, size="tiny", onnx=False)
    return folder


@pytest.fixture(scope="module")
def astronaut_avatars(tmp_path_factory) -> list[AvatarAssets]:
    """Two real avatars of different sizes: skimage's astronaut and a crop of it, landmarks by MediaPipe."""
    from avatar_server.avatars.landmarks import MediaPipeFaceLandmarker
    from skimage import data

    landmarker = MediaPipeFaceLandmarker()
    image = data.astronaut()
    frames = [image, np.ascontiguousarray(image[20:420, 60:460])]
    cache = tmp_path_factory.mktemp("avatars")
    out = []
    for index, frame in enumerate(frames):
        face = landmarker.detect(frame)[0]
        info = AvatarInfo(f"astro{index}", "astronaut", "image", frame.shape[1], frame.shape[0], 1,
                          f"content-{index}", datetime.now(UTC))
        out.append(AvatarAssets(info, frame[None], 25.0, face.landmarks[None], "mediapipe478",
                                face.box[None], cache / info.id))
    landmarker.close()
    return out


def _settings(standin_dir: Path, **overrides) -> Settings:
    # short windows so a few frames exercise first window, cross-fades and the last window
    values = dict(checkpoints=standin_dir, ditto_runtime="pytorch", ditto_device="cpu", ditto_sampling_steps=2,
                  ditto_capacity_fps=1000.0, ditto_render_batch=8, ditto_first_frames=5, ditto_stride=10,
                  ditto_overlap=5)
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture(scope="module")
def renderer(standin_dir) -> DittoRenderer:
    made = DittoRenderer(_settings(standin_dir))
    yield made
    asyncio.run(made.aclose())


def _speech(frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(frames * SAMPLES_PER_FRAME) * 0.1).astype(np.float32)


async def _chunks(audio: np.ndarray, sizes=(1000, 333, 4000, 50)):
    position, k = 0, 0
    while position < audio.size:
        size = sizes[k % len(sizes)]
        yield audio[position : position + size]
        position += size
        k += 1


async def _render(session, audio: np.ndarray) -> np.ndarray:
    frames = [frame.data async for frame in session.render(_chunks(audio))]
    return np.stack(frames) if frames else np.zeros((0,), np.uint8)


async def test_a_turn_gives_one_frame_per_640_samples(renderer, astronaut_avatars) -> None:
    avatar = astronaut_avatars[0]
    session = await renderer.open_session(avatar, fps=25, seed=1)
    try:
        frames = await _render(session, _speech(23, 0))  # windows of 5, 10 and 8 frames
        assert frames.shape == (23, 512, 512, 3) and frames.dtype == np.uint8
        assert (session.height, session.width) == (512, 512)
        again = await _render(session, _speech(3, 1))  # the session stays usable; shorter than a window
        assert again.shape[0] == 3
        idle = await session.idle_frames(4)
        assert len(idle) == 4 and np.array_equal(idle[0].data, avatar.frames[0])
        # far from the face the paste-back leaves the avatar's own pixels
        np.testing.assert_array_equal(frames[:, 500, 5], np.repeat(avatar.frames[0, 500, 5][None], 23, 0))
        assert (await _render(session, np.zeros(0, np.float32))).shape == (0,)
    finally:
        await session.aclose()


async def test_renderer_is_made_from_settings_and_describes_itself(renderer) -> None:
    assert renderer.name == "ditto" and renderer.sample_rate == 16000
    assert renderer.capacity_fps() == 1000.0
    assert renderer.models()


async def test_other_frame_rates_are_refused(renderer, astronaut_avatars) -> None:
    with pytest.raises(InvalidInput):
        await renderer.open_session(astronaut_avatars[0], fps=30)


@pytest.mark.slow
async def test_concurrent_sessions_of_two_avatars_get_what_they_get_alone(standin_dir, astronaut_avatars) -> None:
    audio = [_speech(12, 10), _speech(9, 11)]
    alone = []
    for index in range(2):
        single = DittoRenderer(_settings(standin_dir))
        session = await single.open_session(astronaut_avatars[index], fps=25, seed=7 + index)
        alone.append(await _render(session, audio[index]))
        await session.aclose()
        await single.aclose()

    shared = DittoRenderer(_settings(standin_dir))
    sessions = [await shared.open_session(astronaut_avatars[i], fps=25, seed=7 + i) for i in range(2)]
    with shared.engine.paused():  # both sessions' first work lands in the same tick
        tasks = [asyncio.create_task(_render(s, a)) for s, a in zip(sessions, audio)]
        await asyncio.sleep(0.3)
    together = await asyncio.gather(*tasks)
    assert max(n for n, _ in shared.engine.stats.calls["hubert"]) >= 2  # both sessions' audio in one batch
    for index in range(2):
        assert together[index].shape == alone[index].shape == (len(audio[index]) // 640,
                                                               *astronaut_avatars[index].frames.shape[1:])
        difference = np.abs(together[index].astype(int) - alone[index].astype(int))
        assert difference.max() <= 2, difference.max()
    for session in sessions:
        await session.aclose()
    await shared.aclose()


async def test_engine_batch_equals_one_by_one_and_bad_job_fails_alone(renderer, astronaut_avatars) -> None:
    engine = renderer.engine
    avatars = [await renderer._acquire_avatar(a) for a in astronaut_avatars]
    rng = np.random.default_rng(5)
    d0 = rng.standard_normal(265).astype(np.float32) * 0.1
    requests = [
        FrameRequest(avatars[0], d0 + rng.standard_normal((3, 265)).astype(np.float32) * 0.05, d0, np.zeros(3, np.int64)),
        FrameRequest(avatars[1], d0 + rng.standard_normal((4, 265)).astype(np.float32) * 0.05, d0, np.zeros(4, np.int64)),
    ]
    net = renderer.networks
    plans = [WindowPlan(0, 0, 5, rng.standard_normal((net.seq_frames, net.cond_dim)).astype(np.float32),
                        rng.standard_normal(net.motion_dim).astype(np.float32)) for _ in range(2)]
    engine.stats.clear()
    with engine.paused():
        futures = [engine.submit_frames(r) for r in requests]
        windows = [engine.submit_window(plan, seed) for plan, seed in zip(plans, (11, 12))]
    batched = [f.result(timeout=120) for f in futures]
    batched_windows = [w.result(timeout=120) for w in windows]
    assert [n for n, _ in engine.stats.calls["lmdm_window"]] == [2]  # two sessions' windows, one batch
    assert [n for n, _ in engine.stats.calls["stitch_warp_decode"]] == [7]  # both avatars, one batch
    for plan, seed, motion in zip(plans, (11, 12), batched_windows):
        alone = engine.submit_window(plan, seed).result(timeout=120)
        np.testing.assert_allclose(motion, alone, rtol=1e-4, atol=1e-4)

    bad = FrameRequest(avatars[0], np.zeros((1, 265), np.float32), d0, np.array([5]))  # there is no template 5
    with engine.paused():  # 3 + 4 + 1 frames: one batch of 8, which fails and is re-run job by job
        again = [engine.submit_frames(r) for r in requests]
        bad_future = engine.submit_frames(bad)
    with pytest.raises(RenderError):
        bad_future.result(timeout=120)
    for first, second in zip(batched, again):
        assert np.abs(first.astype(int) - second.result(timeout=120).astype(int)).max() <= 1
    for request, frames in zip(requests, batched):
        alone = engine.submit_frames(request).result(timeout=120)
        assert frames.shape == alone.shape == (len(request.motion), *request.avatar.prepared.size, 3)
        assert np.abs(frames.astype(int) - alone.astype(int)).max() <= 1
    for avatar in astronaut_avatars:
        renderer._release_avatar(renderer._avatar_key(avatar))


@pytest.mark.slow
async def test_closing_one_session_mid_turn_leaves_the_other_untouched(standin_dir, astronaut_avatars) -> None:
    audio = _speech(12, 21)
    single = DittoRenderer(_settings(standin_dir))
    session = await single.open_session(astronaut_avatars[1], fps=25, seed=3)
    expected = await _render(session, audio)
    await single.aclose()

    shared = DittoRenderer(_settings(standin_dir))
    leaving = await shared.open_session(astronaut_avatars[0], fps=25, seed=2)
    staying = await shared.open_session(astronaut_avatars[1], fps=25, seed=3)

    async def leave_after(count: int) -> int:
        seen = 0
        stream = leaving.render(_chunks(_speech(60, 20)))
        async for _ in stream:
            seen += 1
            if seen == count:
                break
        await stream.aclose()
        await leaving.aclose()
        return seen

    seen, frames = await asyncio.gather(leave_after(3), _render(staying, audio))
    assert seen == 3
    assert frames.shape == expected.shape
    assert np.abs(frames.astype(int) - expected.astype(int)).max() <= 2
    assert shared.engine.load_fps() == 25  # the closed session gave its slot back
    await staying.aclose()
    await shared.aclose()


async def test_admission_refuses_past_capacity(standin_dir, astronaut_avatars) -> None:
    limited = DittoRenderer(_settings(standin_dir, ditto_capacity_fps=60.0))  # 0.85 x 60 = 51 frames/s: 2 sessions
    first = await limited.open_session(astronaut_avatars[0], fps=25)
    second = await limited.open_session(astronaut_avatars[1], fps=25)
    with pytest.raises(CapacityExhausted):
        await limited.open_session(astronaut_avatars[0], fps=25)
    await first.aclose()
    third = await limited.open_session(astronaut_avatars[0], fps=25)  # a freed slot is reusable
    for session in (second, third):
        await session.aclose()
    await limited.aclose()


@pytest.mark.slow
async def test_capacity_is_measured_when_not_configured(standin_dir) -> None:
    measured = DittoRenderer(_settings(standin_dir, ditto_capacity_fps=0.0, ditto_render_batch=2))
    try:
        assert 0 < measured.capacity_fps() < float("inf")
    finally:
        await measured.aclose()


async def test_engine_serves_the_earliest_deadline_first(renderer) -> None:
    from avatar_server.renderers.ditto.engine import DittoEngine, EngineOptions

    engine = DittoEngine(renderer.networks, EngineOptions(window_batch_sizes=(1,), sampling_steps=1, capacity_fps=100))
    try:
        net = renderer.networks
        plan = WindowPlan(0, 0, 5, np.zeros((net.seq_frames, net.cond_dim), np.float32),
                          np.zeros(net.motion_dim, np.float32))
        finished: list[str] = []
        with engine.paused():
            for name, deadline in (("late", 20.0), ("early", 10.0), ("middle", 15.0)):
                future = engine.submit_window(plan, 1, deadline)
                future.add_done_callback(lambda _, name=name: finished.append(name))
        await asyncio.to_thread(future.result, 120)
        while len(finished) < 3:
            await asyncio.sleep(0.01)
        assert finished == ["early", "middle", "late"]
    finally:
        engine.close()
