"""SegmentEncoder: fMP4 segments that decode (PyAV and ffmpeg), stay on one clock and keep A/V aligned."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import av
import numpy as np
import pytest
from avatar_server.core.errors import EncodeError, StatusCode
from avatar_server.core.frames import Frame
from avatar_server.media import EncodedSegment, SegmentEncoder
from media_helpers import encode_segment

FPS = 25
RATE = 16000
SPF = RATE // FPS  # 640 clock samples per frame
SIZE = 64
FFPROBE = shutil.which("ffprobe")
FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(
    not (FFPROBE and FFMPEG), reason="ffprobe/ffmpeg not installed (apt-get install -y ffmpeg)"
)


def make_encoder(**overrides: int) -> SegmentEncoder:
    options = dict(width=SIZE, height=SIZE, fps=FPS, clock_rate=RATE, preset="ultrafast")
    options.update(overrides)
    return SegmentEncoder(**options)  # type: ignore[arg-type]


def gray_frame(level: int) -> Frame:
    return Frame(np.full((SIZE, SIZE, 3), level, dtype=np.uint8))


def click_track(total_samples: int, positions: list[int]) -> np.ndarray:
    """Silence with a 10 ms 1 kHz burst starting at each clock position."""
    pcm = np.zeros(total_samples, dtype=np.int16)
    burst = (20000 * np.sin(2 * np.pi * 1000 * (np.arange(160) + 0.5) / RATE)).astype(np.int16)
    for position in positions:
        pcm[position : position + len(burst)] = burst[: total_samples - position]
    return pcm


def encode_stream(
    encoder: SegmentEncoder, lengths: list[int], first_frame: int, flashes: set[int], pcm: np.ndarray
) -> list[EncodedSegment]:
    """Encodes segments of `lengths` frames: white at `flashes`, dark grey ramp elsewhere."""
    segments, frame, offset = [], first_frame, 0
    for count in lengths:
        frames = [gray_frame(255 if f in flashes else (f * 3) % 80) for f in range(frame, frame + count)]
        segments.append(encode_segment(encoder, frames, pcm[offset : offset + count * SPF]))
        frame += count
        offset += count * SPF
    return segments


def parse_segment(data: bytes) -> dict:
    """mfhd sequence number and, per track id, (tfdt, [(duration, size, flags), ...]); checks mdat."""
    result: dict = {"tracks": {}}
    position, mdat_size, sample_bytes = 0, None, 0

    def boxes(start: int, end: int):
        while start < end:
            size, kind = struct.unpack(">I4s", data[start : start + 8])
            yield kind, start + 8, start + size
            start += size

    for kind, start, end in boxes(0, len(data)):
        if kind == b"mdat":
            mdat_size = end - start
            continue
        assert kind == b"moof", kind
        for child, c_start, c_end in boxes(start, end):
            if child == b"mfhd":
                result["sequence"] = struct.unpack(">I", data[c_start + 4 : c_start + 8])[0]
                continue
            fields = dict((k, (s, e)) for k, s, e in boxes(c_start, c_end))
            track_id = struct.unpack(">I", data[fields[b"tfhd"][0] + 4 : fields[b"tfhd"][0] + 8])[0]
            tfdt = struct.unpack(">Q", data[fields[b"tfdt"][0] + 4 : fields[b"tfdt"][0] + 12])[0]
            trun = fields[b"trun"][0]
            count = struct.unpack(">I", data[trun + 4 : trun + 8])[0]
            samples = [struct.unpack(">III", data[trun + 12 + 12 * i : trun + 24 + 12 * i]) for i in range(count)]
            sample_bytes += sum(size for _, size, _ in samples)
            result["tracks"][track_id] = (tfdt, samples)
        position = end
    assert mdat_size == sample_bytes and position > 0
    return result


def write_stream(path: Path, init: bytes, segments: list[EncodedSegment]) -> Path:
    path.write_bytes(init + b"".join(segment.data for segment in segments))
    return path


def ffprobe_packets(path: Path) -> list[dict]:
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-show_entries", "packet=stream_index,pts,duration,flags", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)["packets"]


def decode_pyav(path: Path) -> tuple[list[tuple[int, float]], np.ndarray]:
    """[(pts, mean luma)] per video frame, and the decoded audio placed on the clock by its pts."""
    with av.open(str(path)) as container:
        video = [(frame.pts, float(frame.to_ndarray(format="gray").mean())) for frame in container.decode(video=0)]
    with av.open(str(path)) as container:
        frames = [(frame.pts, frame.to_ndarray()[0]) for frame in container.decode(audio=0)]
    timeline = np.zeros(max(pts + len(samples) for pts, samples in frames), dtype=np.float32)
    for pts, samples in frames:
        timeline[pts : pts + len(samples)] = samples
    return video, timeline


def decode_ffmpeg_audio(path: Path) -> np.ndarray:
    """The audio track decoded by the ffmpeg CLI as int16 from clock position 0, gaps filled by timestamp."""
    raw = subprocess.run(
        [FFMPEG, "-v", "error", "-copyts", "-i", str(path), "-map", "0:a",
         "-af", "aresample=async=1:min_hard_comp=0.001:first_pts=0",
         "-f", "s16le", "-ac", "1", "-ar", str(RATE), "-"],
        check=True, capture_output=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.int16)


def onsets(signal: np.ndarray, threshold: float) -> list[int]:
    """Indices where |signal| first exceeds `threshold` after at least 1000 quiet samples."""
    loud = np.flatnonzero(np.abs(signal) > threshold)
    return loud[np.r_[True, np.diff(loud) > 1000]].tolist() if len(loud) else []


def test_mime_type_names_the_codecs_in_the_init_segment() -> None:
    encoder = make_encoder()
    init = encoder.init_segment()
    assert init[4:8] == b"ftyp" and b"moov" in init and b"avcC" in init and b"esds" in init
    codecs = encoder.mime_type.split('codecs="')[1].rstrip('"').split(", ")
    profile, constraints, level = (int(codecs[0][5 + 2 * i : 7 + 2 * i], 16) for i in range(3))
    avcc = init[init.index(b"avcC") + 4 :]
    assert codecs[0].startswith("avc1.") and tuple(avcc[1:4]) == (profile, constraints, level)
    assert codecs[1] == "mp4a.40.2"
    assert encoder.samples_per_frame == SPF
    encoder.close()


def test_segments_carry_the_sample_clock_and_a_key_frame_first() -> None:
    encoder = make_encoder()
    lengths = [25, 7, 1, 40]
    pcm = click_track(sum(lengths) * SPF, [])
    segments = encode_stream(encoder, lengths, 0, set(), pcm)
    audio_end = 0
    for index, (segment, count) in enumerate(zip(segments, lengths)):
        first = sum(lengths[:index])
        assert (segment.sequence, segment.first_frame, segment.frames) == (index, first, count)
        assert (segment.media_start, segment.media_end) == (first * SPF, (first + count) * SPF)
        parsed = parse_segment(segment.data)
        assert parsed["sequence"] == index + 1
        video_tfdt, video = parsed["tracks"][1]
        assert video_tfdt == first * SPF and len(video) == count
        assert all(duration == SPF for duration, _, _ in video)
        assert [flags for _, _, flags in video] == [0x02000000] + [0x01010000] * (count - 1)
        if 2 in parsed["tracks"]:  # a 1-frame segment may complete no AAC frame
            audio_tfdt, audio = parsed["tracks"][2]
            assert audio_tfdt == audio_end
            assert all(duration == 1024 for duration, _, _ in audio)
            audio_end += 1024 * len(audio)
    # AAC holds back the partial frame plus its one-frame look-ahead and the dropped priming.
    assert 2048 <= segments[-1].media_end - audio_end < 3072


def test_the_cpu_meter_gets_the_encoding_threads_cpu_time_of_every_call() -> None:
    readings: list[float] = []
    encoder = make_encoder(cpu_meter=readings.append)
    lengths = [25, 25]
    began = time.thread_time()
    encode_stream(encoder, lengths, 0, set(), click_track(sum(lengths) * SPF, [100, 9000]))
    spent = time.thread_time() - began
    assert len(readings) == sum(lengths) + len(lengths)  # every add_frame and finish_segment
    assert all(reading >= 0 for reading in readings)
    # x264 runs in this thread (threads=1): the meter counts part of this thread's time, never more.
    assert 0 < sum(readings) <= spent + 1e-3


def test_scene_cuts_inside_a_segment_make_no_key_frames() -> None:
    encoder = make_encoder()
    rng = np.random.default_rng(1)
    frames = [Frame(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(20)]
    segment = encode_segment(encoder, frames, np.zeros(20 * SPF, dtype=np.int16))
    flags = [flags for _, _, flags in parse_segment(segment.data)["tracks"][1][1]]
    assert flags.count(0x02000000) == 1 and flags[0] == 0x02000000


@needs_ffmpeg
def test_stream_decodes_with_ffmpeg_with_exact_frames_and_durations(tmp_path: Path) -> None:
    encoder = make_encoder()
    lengths = [25, 13, 37]
    segments = encode_stream(encoder, lengths, 0, set(), click_track(75 * SPF, [8000, 30000]))
    path = write_stream(tmp_path / "stream.mp4", encoder.init_segment(), segments)
    decode = subprocess.run(
        [FFMPEG, "-v", "error", "-xerror", "-i", str(path), "-f", "null", "-"], capture_output=True, text=True
    )
    assert decode.returncode == 0 and decode.stderr == ""
    packets = ffprobe_packets(path)
    video = [p for p in packets if p["stream_index"] == 0]
    audio = [p for p in packets if p["stream_index"] == 1]
    assert [int(p["pts"]) for p in video] == [f * SPF for f in range(75)]
    assert {int(p["duration"]) for p in video} == {SPF}
    assert [i for i, p in enumerate(video) if p["flags"].startswith("K")] == [0, 25, 38]
    assert [int(p["pts"]) for p in audio] == [k * 1024 for k in range(len(audio))]
    assert 2048 <= 75 * SPF - 1024 * len(audio) < 3072
    frames = subprocess.run(
        [FFPROBE, "-v", "error", "-count_frames", "-select_streams", "v", "-show_entries",
         "stream=nb_read_frames,width,height", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout
    stream = json.loads(frames)["streams"][0]
    assert (int(stream["nb_read_frames"]), stream["width"], stream["height"]) == (75, SIZE, SIZE)


def test_stream_decodes_with_pyav_with_the_pictures_given(tmp_path: Path) -> None:
    encoder = make_encoder(preset="veryfast")
    lengths = [10, 30, 5]
    segments = encode_stream(encoder, lengths, 0, {12, 41}, click_track(45 * SPF, []))
    video, audio = decode_pyav(write_stream(tmp_path / "s.mp4", encoder.init_segment(), segments))
    assert [pts for pts, _ in video] == [f * SPF for f in range(45)]
    expected = [255 if f in {12, 41} else (f * 3) % 80 for f in range(45)]
    assert np.abs(np.array([luma for _, luma in video]) - expected).max() < 4
    audio_packets = sum(len(parse_segment(s.data)["tracks"].get(2, (0, []))[1]) for s in segments)
    assert len(audio) == 1024 * audio_packets


def test_yuv420p_frames_are_encoded_as_given(tmp_path: Path) -> None:
    encoder = make_encoder()
    planes = np.full((SIZE * 3 // 2, SIZE), 128, dtype=np.uint8)
    planes[:SIZE] = 200
    segment = encode_segment(encoder, [Frame(planes, "yuv420p")] * 3, np.zeros(3 * SPF, dtype=np.int16))
    path = write_stream(tmp_path / "y.mp4", encoder.init_segment(), [segment])
    with av.open(str(path)) as container:
        decoded = [frame.to_ndarray(format="yuv420p") for frame in container.decode(video=0)]
    assert len(decoded) == 3 and abs(float(decoded[0][:SIZE].mean()) - 200) < 2


def assert_aligned(path: Path, flashes: list[int], first_frame: int = 0) -> None:
    """Asserts flashes and clicks decode at the same clock positions (PyAV and ffmpeg), to 1 ms."""
    video, audio = decode_pyav(path)
    flash_positions = [pts for pts, luma in video if luma > 128]
    assert flash_positions == [f * SPF for f in flashes]
    pyav_clicks = onsets(audio, 0.1)
    start = first_frame * SPF
    pyav_clicks = [click for click in pyav_clicks if click >= start + 1024]  # past a fresh encoder's priming
    assert len(pyav_clicks) == len(flash_positions)
    for click, flash in zip(pyav_clicks, flash_positions):
        assert abs(click - flash) <= 16, f"audio click at {click}, flash at {flash}"
    if FFMPEG:
        ffmpeg_clicks = [c for c in onsets(decode_ffmpeg_audio(path), 3000) if c >= start + 1024]
        assert len(ffmpeg_clicks) == len(flash_positions)
        for click, flash in zip(ffmpeg_clicks, flash_positions):
            assert abs(click - flash) <= 16, f"ffmpeg: audio click at {click}, flash at {flash}"


def test_audio_and_video_are_aligned_to_the_sample(tmp_path: Path) -> None:
    flashes = [5, 31, 32 + 17, 90]
    encoder = make_encoder()
    lengths = [25, 25, 3, 47]
    pcm = click_track(100 * SPF, [f * SPF for f in flashes])
    segments = encode_stream(encoder, lengths, 0, set(flashes), pcm)
    assert_aligned(write_stream(tmp_path / "a.mp4", encoder.init_segment(), segments), flashes)


def test_a_resumed_encoder_continues_the_timeline_and_the_alignment(tmp_path: Path) -> None:
    flashes = [10, 44, 60, 77]
    pcm = click_track(100 * SPF, [f * SPF for f in flashes])
    first = make_encoder()
    before = encode_stream(first, [25, 25], 0, set(flashes), pcm[: 50 * SPF])
    first.close()
    resumed = make_encoder(start_frame=50, start_sequence=2)
    after = encode_stream(resumed, [20, 30], 50, set(flashes), pcm[50 * SPF :])
    assert resumed.init_segment() == first.init_segment()
    assert [(s.sequence, s.first_frame, s.media_start) for s in after] == [(2, 50, 50 * SPF), (3, 70, 70 * SPF)]
    parsed = [parse_segment(s.data) for s in after]
    assert [p["sequence"] for p in parsed] == [3, 4]
    assert [p["tracks"][1][0] for p in parsed] == [50 * SPF, 70 * SPF]
    assert parsed[0]["tracks"][2][0] == 50 * SPF  # audio restarts at the resume point, aligned
    path = write_stream(tmp_path / "r.mp4", first.init_segment(), before + after)
    with av.open(str(path)) as container:
        assert [frame.pts for frame in container.decode(video=0)] == [f * SPF for f in range(100)]
    assert_aligned(path, flashes)
    # The resumed stream on its own (a client joining late) is aligned the same way.
    assert_aligned(write_stream(tmp_path / "r2.mp4", resumed.init_segment(), after), [60, 77], first_frame=50)


LONG_RUN_MINUTES = int(os.environ.get("AVATAR_MEDIA_LONG_MINUTES", "10"))  # 30 for the full check


def test_a_long_stream_keeps_audio_and_video_ends_together() -> None:
    """Minutes of 64x64 media: tfdt/trun of every segment continue, audio never drifts from video."""
    encoder = make_encoder()
    frames = [Frame(np.full((SIZE * 3 // 2, SIZE), 90, dtype=np.uint8), "yuv420p")] * FPS
    tone = (3000 * np.sin(2 * np.pi * 220 * np.arange(RATE) / RATE)).astype(np.int16)
    silence = np.zeros(RATE, dtype=np.int16)
    video_end = audio_end = 0
    for second in range(LONG_RUN_MINUTES * 60):
        segment = encode_segment(encoder, frames, tone if second % 7 == 3 else silence)
        parsed = parse_segment(segment.data)
        video_tfdt, video = parsed["tracks"][1]
        assert parsed["sequence"] == second + 1 and video_tfdt == video_end
        video_end += sum(duration for duration, _, _ in video)
        audio_tfdt, audio = parsed["tracks"][2]
        assert audio_tfdt == audio_end
        audio_end += sum(duration for duration, _, _ in audio)
        assert 2048 <= video_end - audio_end < 3072
    assert video_end == LONG_RUN_MINUTES * 60 * RATE == segment.media_end


@pytest.mark.parametrize("width, height", [(63, 64), (64, 65), (0, 64)])
def test_odd_or_empty_sizes_are_refused(width: int, height: int) -> None:
    with pytest.raises(EncodeError) as raised:
        SegmentEncoder(width=width, height=height, fps=FPS, clock_rate=RATE)
    assert raised.value.code == StatusCode.INTERNAL and raised.value.stage == "encode"


def test_bad_frames_and_audio_are_refused_and_the_encoder_stays_usable() -> None:
    encoder = make_encoder()
    with pytest.raises(EncodeError, match="shape"):
        encoder.add_frame(Frame(np.zeros((SIZE, SIZE + 2, 3), np.uint8)))
    with pytest.raises(EncodeError):
        encoder.add_frame(Frame(np.zeros((SIZE, SIZE), np.uint8), "gray"))  # type: ignore[arg-type]
    assert encoder.pending_frames == 0  # a refused frame never reaches x264
    with pytest.raises(EncodeError, match="at least one frame"):
        encoder.finish_segment(np.zeros(0, np.int16))
    encoder.add_frame(gray_frame(10))
    encoder.add_frame(gray_frame(10))
    for pcm in [np.zeros(2 * SPF - 1, np.int16), np.zeros(2 * SPF + 1, np.int16),
                np.zeros(2 * SPF, np.float32), np.zeros((2 * SPF, 1), np.int16)]:
        with pytest.raises(EncodeError):
            encoder.finish_segment(pcm)
    assert encoder.pending_frames == 2  # refused audio leaves the segment open
    segment = encoder.finish_segment(np.zeros(2 * SPF, np.int16))
    assert (segment.sequence, segment.first_frame) == (0, 0)
    tfdt, video = parse_segment(segment.data)["tracks"][1]
    assert tfdt == 0 and len(video) == 2
    encoder.close()
    with pytest.raises(EncodeError, match="closed"):
        encoder.add_frame(gray_frame(10))


def test_unknown_preset_is_an_encode_error() -> None:
    with pytest.raises(EncodeError, match="preset"):
        make_encoder(preset="warp-speed")  # type: ignore[arg-type]
