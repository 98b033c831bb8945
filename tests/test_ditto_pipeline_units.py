"""Ditto pipeline parts that need no networks: audio chunking, DDIM, windows, keypoints, crop, paste-back."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from avatar_server.renderers.ditto.audio_features import (
    CHUNK_SAMPLES,
    PRIMING_SAMPLES,
    SAMPLES_PER_FRAME,
    STEP_SAMPLES,
    AudioChunker,
    chunk_features,
)
from avatar_server.renderers.ditto.avatar_prep import mirror_index
from avatar_server.renderers.ditto.keypoints import (
    LIP_KEYPOINTS,
    MOTION_DIM,
    SourceFace,
    bins_to_degrees,
    drive_motion,
    driven_keypoints,
    rotation_matrices,
)
from avatar_server.renderers.ditto.motion_diffusion import (
    MotionStream,
    StreamOptions,
    ddim_steps,
    sample_motion,
    smooth_frames,
    window_noise,
)
from avatar_server.renderers.ditto.putback import PasteBack, release_mask
from avatar_server.renderers.ditto.registration.crop import (
    CropParameters,
    crop_transform,
    transform_points,
)
from avatar_server.renderers.ditto.registration.eyes import eye_conditions


# ----- audio ------------------------------------------------------------------------------------
def _chunks_for(audio: np.ndarray, splits: list[int]) -> list[np.ndarray]:
    chunker = AudioChunker()
    chunks = []
    for part in np.split(audio, splits):
        chunks += chunker.push(part)
    return chunks + chunker.finish()


def test_chunks_do_not_depend_on_how_audio_arrives() -> None:
    audio = np.random.default_rng(1).standard_normal(23 * SAMPLES_PER_FRAME).astype(np.float32)
    whole = _chunks_for(audio, [])
    pieces = _chunks_for(audio, [1, 700, 5000, 9001, 9002])
    assert len(whole) == len(pieces) == math.ceil(23 / 5)
    for a, b in zip(whole, pieces):
        np.testing.assert_array_equal(a, b)


def test_chunk_k_is_the_primed_audio_at_k_steps() -> None:
    audio = np.arange(1, 12 * SAMPLES_PER_FRAME + 1, dtype=np.float32)
    chunks = _chunks_for(audio, [3000])
    padded = np.concatenate([np.zeros(PRIMING_SAMPLES, np.float32), audio, np.zeros(CHUNK_SAMPLES, np.float32)])
    for k, chunk in enumerate(chunks):
        assert chunk.shape == (CHUNK_SAMPLES,)
        np.testing.assert_array_equal(chunk, padded[k * STEP_SAMPLES : k * STEP_SAMPLES + CHUNK_SAMPLES])


def test_first_chunk_needs_only_80ms_past_its_fifth_frame() -> None:
    chunker = AudioChunker()
    assert chunker.push(np.zeros(5 * SAMPLES_PER_FRAME + 2 * SAMPLES_PER_FRAME - 1, np.float32)) == []
    assert len(chunker.push(np.zeros(1, np.float32))) == 1


def test_chunk_features_average_hubert_frame_pairs() -> None:
    hubert = torch.arange(20, dtype=torch.float32).reshape(1, 20, 1).expand(2, 20, 3)
    features = chunk_features(hubert)
    assert features.shape == (2, 5, 3)
    assert features[0, :, 0].tolist() == [6.5, 8.5, 10.5, 12.5, 14.5]


# ----- DDIM -------------------------------------------------------------------------------------
class _LinearDenoiser(torch.nn.Module):
    """A small real network (random linear maps) standing in for LMDM in sampler tests."""

    def __init__(self, cond_dim: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mix = torch.nn.Linear(MOTION_DIM * 2 + cond_dim, MOTION_DIM)
        self.calls = 0

    def forward(self, x, cond_frame, cond, time):
        self.calls += 1
        frame = cond_frame[:, None].expand(-1, x.shape[1], -1)
        x_start = torch.tanh(self.mix(torch.cat([x, frame, cond], -1))) * (1 + time[:, None, None] / 1000)
        return x_start * 0.5, x_start


def test_ddim_runs_one_network_call_per_step_and_ends_on_x_start() -> None:
    steps = ddim_steps(10)
    assert [s.time for s in steps] == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert steps[-1].final and not any(s.final for s in steps[:-1])
    assert all(0 < s.sigma < 1 and 0 < s.sqrt_alpha_next <= 1 for s in steps[:-1])
    net = _LinearDenoiser(7)
    start, noise = window_noise(80, MOTION_DIM, 10, session_seed=3, window_index=0, device=torch.device("cpu"))
    out = sample_motion(net, steps, torch.zeros(1, MOTION_DIM), torch.ones(1, 80, 7), start[None], noise[None])
    assert net.calls == 10 and out.shape == (1, 80, MOTION_DIM) and torch.isfinite(out).all()


def test_ddim_batch_equals_windows_one_by_one() -> None:
    net, steps = _LinearDenoiser(5), ddim_steps(4)
    rng = torch.Generator().manual_seed(0)
    cond_frame, cond = torch.randn(3, MOTION_DIM, generator=rng), torch.randn(3, 80, 5, generator=rng)
    noises = [window_noise(80, MOTION_DIM, 4, session_seed=s, window_index=1, device=torch.device("cpu")) for s in (1, 2, 3)]
    start = torch.stack([n[0] for n in noises])
    step_noise = torch.stack([n[1] for n in noises])
    batched = sample_motion(net, steps, cond_frame, cond, start, step_noise)
    for i in range(3):
        alone = sample_motion(net, steps, cond_frame[i : i + 1], cond[i : i + 1], start[i : i + 1], step_noise[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def test_window_noise_is_fixed_per_session_and_fresh_per_window() -> None:
    cpu = torch.device("cpu")
    a0, a_steps0 = window_noise(80, 4, 3, session_seed=9, window_index=0, device=cpu)
    a1, a_steps1 = window_noise(80, 4, 3, session_seed=9, window_index=1, device=cpu)
    b0, b_steps0 = window_noise(80, 4, 3, session_seed=10, window_index=0, device=cpu)
    assert torch.equal(a_steps0, a_steps1) and not torch.equal(a0, a1)
    assert not torch.equal(a_steps0, b_steps0) and not torch.equal(a0, b0)


# ----- windows ----------------------------------------------------------------------------------
def _stream(options: StreamOptions, cond_extra: int = 3) -> MotionStream:
    return MotionStream(
        options,
        seq_frames=80,
        source_motion=np.full(MOTION_DIM, -1.0, np.float32),
        silence_feature=np.zeros(4, np.float32),
        cond_extra=np.arange(cond_extra, dtype=np.float32),
    )


def _run_turn(stream: MotionStream, total: int, arrive_per_step: int, window_value) -> tuple[list, np.ndarray]:
    """Feeds features `arrive_per_step` at a time, runs every ready window, returns plans and final motion."""
    plans, final, fed = [], [], 0
    while stream.committed < total:
        if fed < total:
            count = min(arrive_per_step, total - fed)
            stream.add_features(np.full((count, 4), 1.0, np.float32))
            fed += count
        while (plan := stream.next_window(total if fed >= total else None)) is not None:
            plans.append(plan)
            final.append(stream.accept(plan, window_value(plan)))
    return plans, np.concatenate(final)


@pytest.mark.parametrize("total", [1, 9, 10, 11, 79, 80, 81, 157, 400])
def test_windows_cover_every_frame_once_in_order(total: int) -> None:
    options = StreamOptions(overlap=10, stride=70, first_frames=10)
    plans, final = _run_turn(_stream(options), total, 5, lambda p: np.zeros((80, MOTION_DIM), np.float32))
    assert final.shape == (total, MOTION_DIM)
    starts = [p.start for p in plans]
    assert starts == sorted(starts) and sum(p.commit for p in plans) == total
    assert all(p.commit <= 80 for p in plans)
    if total > 10:
        assert plans[0].commit == 10  # the short first window leaves early


def test_first_window_runs_with_first_frames_of_features_and_pads_with_silence() -> None:
    stream = _stream(StreamOptions(first_frames=10))
    stream.add_features(np.ones((5, 4), np.float32))
    assert stream.next_window(None) is None
    stream.add_features(np.ones((5, 4), np.float32))
    plan = stream.next_window(None)
    assert plan is not None and plan.start == 0 and plan.commit == 10
    assert plan.cond.shape == (80, 7)
    np.testing.assert_array_equal(plan.cond[:10, :4], 1.0)
    np.testing.assert_array_equal(plan.cond[10:, :4], 0.0)  # silence feature
    np.testing.assert_array_equal(plan.cond[:, 4:], np.tile(np.arange(3), (80, 1)))
    np.testing.assert_array_equal(plan.cond_frame, -1.0)  # the source's motion hands over


def test_later_windows_hand_over_the_last_final_frame_and_cross_fade() -> None:
    options = StreamOptions(overlap=10, stride=20, first_frames=10, smoothing=1)
    values = iter(np.arange(100) * 10.0)
    plans, final = _run_turn(_stream(options), 200, 5, lambda p: np.full((80, MOTION_DIM), next(values), np.float32))
    assert [p.start for p in plans][:4] == [0, 10, 30, 50]
    np.testing.assert_array_equal(plans[1].cond_frame, final[9])
    # frames 10..19 fade from window 0's tail (0) to window 1 (10): strictly rising, inside (0, 10)
    fade = final[10:20, 0]
    assert np.all(np.diff(fade) > 0) and 0 < fade[0] < fade[-1] < 10
    np.testing.assert_array_equal(final[20:30, 0], 10.0)


def test_smoothing_touches_only_scale_pose_and_shift() -> None:
    motion = np.zeros((5, MOTION_DIM), np.float32)
    motion[2] = 3.0
    smoothed = smooth_frames(motion, 3)
    np.testing.assert_allclose(smoothed[1:4, 0], 1.0)
    np.testing.assert_array_equal(smoothed[:, 202:], motion[:, 202:])


def test_stream_options_reject_impossible_slides() -> None:
    with pytest.raises(ValueError):
        StreamOptions(overlap=10, stride=71).validate(80)
    with pytest.raises(ValueError):
        StreamOptions(first_frames=0).validate(80)


# ----- keypoints --------------------------------------------------------------------------------
def test_bins_to_degrees_reads_the_peak_bin() -> None:
    logits = torch.full((2, 66), -50.0)
    logits[0, 10], logits[1, 40] = 50.0, 50.0
    torch.testing.assert_close(bins_to_degrees(logits), torch.tensor([10 * 3 - 97.5, 40 * 3 - 97.5]))


def test_rotations_are_orthonormal() -> None:
    rot = rotation_matrices(torch.tensor([10.0, -30.0]), torch.tensor([45.0, 5.0]), torch.tensor([-20.0, 80.0]))
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-6, rtol=0)


def test_motion_is_relative_to_d0_and_only_lips_and_eyes_follow() -> None:
    rng = torch.Generator().manual_seed(4)
    source = SourceFace(torch.randn(1, MOTION_DIM, generator=rng), torch.randn(1, 63, generator=rng) * 0.1)
    d0 = torch.randn(1, MOTION_DIM, generator=rng)
    torch.testing.assert_close(driven_keypoints(d0.clone(), d0, source), source.keypoints())
    moved = d0.clone()
    moved[:, 202:] += 0.05  # expression of every keypoint changes
    exp = drive_motion(moved, d0, source)[:, 202:].reshape(21, 3)
    src_exp = source.motion[:, 202:].reshape(21, 3)
    for kp in range(21):
        changed = not torch.allclose(exp[kp], src_exp[kp])
        assert changed == (kp in LIP_KEYPOINTS or kp in (11, 13, 15, 16, 18))


# ----- crop and paste-back ----------------------------------------------------------------------
def _face_points(angle_deg: float, centre=(300.0, 250.0)) -> np.ndarray:
    """478 points on a synthetic upright face (eyes above lips), rotated by `angle_deg`."""
    rng = np.random.default_rng(0)
    points = rng.uniform(-60, 60, (478, 2))
    points[[33, 133]] = [[-40, -20], [-15, -20]]
    points[[263, 362]] = [[40, -20], [15, -20]]
    points[[159, 145, 386, 374]] = [[-27.5, -22], [-27.5, -18], [27.5, -22], [27.5, -18]]  # mid-lids
    points[[13, 14]] = [[0, 40], [0, 44]]
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return points @ rot.T + np.array(centre)


@pytest.mark.parametrize("angle", [0.0, 25.0, -40.0])
def test_crop_is_upright_centred_and_holds_the_face(angle: float) -> None:
    points = _face_points(angle)
    m_o2c, m_c2o = crop_transform(points, 512, CropParameters())
    crop = transform_points(points, m_o2c)
    np.testing.assert_allclose(transform_points(crop, m_c2o), points, atol=1e-2)
    eyes = (crop[[33, 133, 159, 145]].mean(0) + crop[[263, 362, 386, 374]].mean(0)) / 2
    lips = crop[[13, 14]].mean(0)
    assert abs(eyes[0] - lips[0]) < 1e-3 and lips[1] > eyes[1]  # eyes straight above the lips
    assert crop.min() > 0 and crop.max() < 512
    assert abs(crop[:, 0].mean() - 256) < 60


def test_eye_features_grow_with_open_lids() -> None:
    points = _face_points(0.0)
    points[[145, 159, 144, 160, 153, 158]] = [[-28, -18], [-28, -22], [-33, -18], [-33, -22], [-22, -18], [-22, -22]]
    def conditions(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        normalised = np.concatenate([pixels / 512.0, np.zeros((len(pixels), 1))], axis=1)
        opening, movement = eye_conditions(normalised[None])
        return opening[0], movement[0]

    closed, _ = conditions(points)
    points[[159, 160, 158], 1] -= 6
    opened, movement = conditions(points)
    assert opened[0] > closed[0] and opened[1] == closed[1] and movement.shape == (6,)


def test_mirror_index_walks_forth_and_back() -> None:
    assert [mirror_index(i, 3) for i in range(8)] == [0, 1, 2, 2, 1, 0, 0, 1]
    assert mirror_index(5, 1) == 0


def test_soft_mask_is_one_inside_and_fades_to_the_edge() -> None:
    mask = release_mask(512)
    assert mask[256, 256] == 1.0 and mask[0, 0] < 0.05 and np.all((mask >= 0) & (mask <= 1))
    assert mask[256, 5] < mask[256, 15] < mask[256, 40]


def test_paste_back_puts_the_render_where_the_crop_came_from() -> None:
    frame = np.zeros((1, 300, 400, 3), np.uint8)
    frame[..., 1] = 200
    crop_from_frame = np.array([[512 / 200, 0, -100 * 512 / 200], [0, 512 / 200, -50 * 512 / 200], [0, 0, 1]])
    paste = PasteBack.build(frame, np.linalg.inv(crop_from_frame)[None].astype(np.float32), 512, torch.device("cpu"))
    render = torch.zeros(1, 3, 512, 512)
    render[:, 0] = 1.0  # pure red face
    out = paste.paste(render, torch.zeros(1, dtype=torch.int64))
    assert out.shape == (1, 3, 300, 400)
    torch.testing.assert_close(out[0, :, 150, 200], torch.tensor([255.0, 0.0, 0.0]))  # crop centre
    torch.testing.assert_close(out[0, :, 10, 10], torch.tensor([0.0, 200.0, 0.0]))  # outside the crop
