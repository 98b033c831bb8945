"""encode_clip (ordinary faststart MP4) and resample (band-limited PCM rate conversion)."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from avatar_server.core.errors import EncodeError
from avatar_server.core.frames import Frame
from avatar_server.media import StreamResampler, encode_clip, resample

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def ramp_frames(count: int, width: int = 64, height: int = 48) -> list[Frame]:
    return [Frame(np.full((height, width, 3), 4 * index, dtype=np.uint8)) for index in range(count)]


def top_level_boxes(data: bytes) -> list[bytes]:
    kinds, position = [], 0
    while position < len(data):
        size = int.from_bytes(data[position : position + 4], "big")
        kinds.append(data[position + 4 : position + 8])
        position += size
    return kinds


def test_clip_with_audio_is_a_faststart_mp4_that_decodes() -> None:
    pcm = (8000 * np.sin(2 * np.pi * 300 * np.arange(30 * 640) / 16000)).astype(np.int16)
    data = encode_clip(ramp_frames(30), 25, pcm, 16000)
    kinds = top_level_boxes(data)
    assert kinds[0] == b"ftyp" and kinds.index(b"moov") < kinds.index(b"mdat")
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
        video = [frame.to_ndarray(format="gray") for frame in container.decode(video=0)]
    assert len(video) == 30 and video[0].shape == (48, 64)
    assert np.abs(np.array([frame.mean() for frame in video]) - 4 * np.arange(30)).max() < 4
    with av.open(io.BytesIO(data)) as container:
        audio = np.concatenate([frame.to_ndarray()[0] for frame in container.decode(audio=0)])
    assert abs(len(audio) - len(pcm)) < 1024 and 0.15 < np.abs(audio).max() < 0.35


def test_clip_without_audio_has_only_video() -> None:
    data = encode_clip([Frame(np.zeros((48 * 3 // 2, 64), np.uint8), "yuv420p")] * 5, 10)
    with av.open(io.BytesIO(data)) as container:
        assert len(container.streams.audio) == 0
        assert sum(1 for _ in container.decode(video=0)) == 5
        assert float(container.duration) / av.time_base == pytest.approx(0.5, abs=0.01)


def test_clip_refuses_bad_input() -> None:
    with pytest.raises(EncodeError):
        encode_clip([], 25)
    with pytest.raises(EncodeError):
        encode_clip(ramp_frames(2, width=63), 25)
    with pytest.raises(EncodeError):
        encode_clip(ramp_frames(2), 25, np.zeros(1280, np.float64))
    with pytest.raises(EncodeError):
        encode_clip([*ramp_frames(1), *ramp_frames(1, width=32)], 25)


def tone(frequency: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * frequency * np.arange(int(rate * seconds)) / rate)


def test_resample_keeps_a_tone_and_its_timing() -> None:
    source = (10000 * tone(440, 24000)).astype(np.int16)
    out = resample(source, 24000, 16000)
    assert out.dtype == np.int16 and len(out) == 16000
    expected = 10000 * tone(440, 16000)
    assert np.abs(out[200:-200] - expected[200:-200]).max() < 40  # < 0.5 % of the amplitude


def test_resample_removes_what_the_new_rate_cannot_hold() -> None:
    out = resample(tone(10000, 24000).astype(np.float32), 24000, 16000)  # 10 kHz > 8 kHz Nyquist
    assert out.dtype == np.float32 and len(out) == 16000
    assert np.sqrt(np.mean(out[200:-200] ** 2)) < 0.01  # would alias to 6 kHz at full level


def test_resample_upsamples_odd_ratios_and_clips_int16() -> None:
    out = resample(np.full(441, 32767, np.int16), 44100, 16000)
    assert len(out) == 160 and out.dtype == np.int16 and out.max() == 32767
    assert len(resample(np.zeros(100, np.float32), 16000, 48000)) == 300
    assert len(resample(np.zeros(100, np.int16), 24000, 16000)) == 67  # ceil(66.7)
    same = np.arange(5, dtype=np.int16)
    assert np.array_equal(resample(same, 16000, 16000), same)


def test_resample_refuses_bad_input() -> None:
    with pytest.raises(EncodeError):
        resample(np.zeros(10, np.int16), 0, 16000)
    with pytest.raises(EncodeError):
        resample(np.zeros((10, 2), np.int16), 24000, 16000)
    with pytest.raises(EncodeError):
        resample(np.zeros(10, np.int32), 24000, 16000)


@pytest.mark.parametrize("from_rate, to_rate", [(24000, 16000), (22050, 16000), (16000, 48000), (16000, 16000)])
def test_stream_resampler_matches_the_whole_clip_whatever_the_chunks(from_rate: int, to_rate: int) -> None:
    rng = np.random.default_rng(from_rate + to_rate)
    source = (rng.standard_normal(9001) * 6000).clip(-32768, 32767).astype(np.int16)
    stream = StreamResampler(from_rate, to_rate)
    pieces, position = [], 0
    while position < len(source):
        size = int(rng.integers(0, 700))
        pieces.append(stream.push(source[position : position + size]))
        position = min(position + size, len(source))
        # Output keeps up with input, but for the filter's short look-ahead (< 2 ms at these rates).
        assert sum(map(len, pieces)) >= position * to_rate / from_rate - 0.002 * to_rate
    pieces.append(stream.flush())
    streamed = np.concatenate(pieces)
    whole = resample(source, from_rate, to_rate)
    assert streamed.dtype == np.int16 and len(streamed) == len(whole) == -(-len(source) * to_rate // from_rate)
    assert np.abs(streamed.astype(int) - whole).max() <= 1


def test_stream_resampler_refuses_mixed_types_and_pushes_after_flush() -> None:
    stream = StreamResampler(24000, 16000)
    stream.push(np.zeros(10, np.float32))
    with pytest.raises(EncodeError):
        stream.push(np.zeros(10, np.int16))
    assert len(stream.flush()) == 7
    with pytest.raises(EncodeError):
        stream.push(np.zeros(10, np.float32))
    with pytest.raises(EncodeError):
        StreamResampler(0, 16000)


@pytest.mark.skipif(not (SHARED / "fixtures" / "ditto_example_speech_24k.wav").exists(), reason="no shared fixtures")
def test_resample_real_speech_keeps_its_spectrum_below_8k() -> None:
    with wave.open(str(SHARED / "fixtures" / "ditto_example_speech_24k.wav")) as clip:
        assert clip.getsampwidth() == 2
        speech = np.frombuffer(clip.readframes(clip.getnframes()), np.int16)[:: clip.getnchannels()]
        rate = clip.getframerate()
    out = resample(speech, rate, 16000)
    assert len(out) == -(-len(speech) * 16000 // rate)
    # Energy below 7 kHz survives; compare with the source's energy in the same band.
    source_band = np.abs(np.fft.rfft(speech.astype(np.float64)))[: int(7000 * len(speech) / rate)]
    out_band = np.abs(np.fft.rfft(out.astype(np.float64)))[: int(7000 * len(out) / 16000)]
    source_energy = np.sum(source_band**2) / len(speech)
    out_energy = np.sum(out_band**2) / len(out) * (rate / 16000)
    assert out_energy == pytest.approx(source_energy, rel=0.05)
