"""Per-session encoder: rendered frames + PCM in, fragmented-MP4 segments for MediaSource out.

Everything is timed on the session's media clock (audio samples at `clock_rate`), the
timescale of both tracks. Frame f covers clock samples [f * spf, (f + 1) * spf), spf =
clock_rate // fps. Audio is aligned exactly: decoded audio at clock position t is the PCM
given for t. The AAC encoder emits `AAC_PRIMING` samples of padding before its input, so
the first `AAC_PRIMING` input samples of a stream (silence, as the pipeline guarantees) are
dropped and AAC packet k is placed at clock position origin + k * 1024. AAC holds back its
partial frame and one frame of look-ahead, so a segment's audio ends 2048 to 3071 samples
before its video; that audio goes out with the next segment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from avatar_server.core.errors import EncodeError
from avatar_server.core.frames import Frame
from avatar_server.media import fmp4, h264
from avatar_server.media.video_frames import X264_COLOUR_PARAMS, FrameConverter

AAC_FRAME_SAMPLES = 1024
AAC_PRIMING = 1024  # FFmpeg's native AAC encoder's initial padding (checked on every packet)
AAC_BIT_RATE = 48_000
_DROPPED_NAL_TYPES = frozenset({h264.NAL_SPS, h264.NAL_PPS, h264.NAL_AUD})  # SPS/PPS live in avcC


@dataclass(frozen=True)
class EncodedSegment:
    """One moof+mdat with the frames [first_frame, first_frame + frames) and the audio AAC had ready."""

    data: bytes
    sequence: int
    first_frame: int
    frames: int
    media_start: int  # clock samples: first_frame * samples_per_frame
    media_end: int  # clock samples: (first_frame + frames) * samples_per_frame


class SegmentEncoder:
    """Encodes one session's stream, segment by segment, on one continuous timeline.

    Blocking; call from a worker thread, one call at a time. An encoder made for a resumed
    session (`start_frame`, `start_sequence`) continues the earlier encoder's timeline.
    `cpu_meter`, if given, is called with the CPU seconds each call spent in the calling
    thread (colour conversion, x264, AAC): all of the encoder's work when `threads` is 1;
    with more, x264's own worker threads are not in it.
    """

    def __init__(
        self,
        *,
        width: int,
        height: int,
        fps: int,
        clock_rate: int,
        crf: int = 23,
        preset: str = "veryfast",
        threads: int = 1,
        start_frame: int = 0,
        start_sequence: int = 0,
        cpu_meter: Callable[[float], None] | None = None,
    ) -> None:
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise EncodeError(f"video size must be positive and even, got {width}x{height}")
        if fps <= 0 or clock_rate < fps:
            raise EncodeError(f"bad timing: fps={fps}, clock_rate={clock_rate}")
        if start_frame < 0 or start_sequence < 0:
            raise EncodeError("start_frame and start_sequence must not be negative")
        self.width = width
        self.height = height
        self.clock_rate = clock_rate
        self.samples_per_frame = clock_rate // fps
        self._converter = FrameConverter(width, height)
        self._video = _open_x264(width, height, fps, clock_rate, crf, preset, threads)
        self._audio = _open_aac(clock_rate)
        self._next_frame = start_frame
        self._next_sequence = start_sequence
        self._audio_origin = start_frame * self.samples_per_frame
        self._audio_to_drop = AAC_PRIMING
        self._audio_pending = np.zeros(0, dtype=np.float32)
        self._audio_frames_in = 0
        self._audio_packets_out = 0
        self._pending_video: list[fmp4.Sample] = []  # encoded frames of the segment being built
        self._closed = False
        self._cpu_meter = cpu_meter
        self._init_segment, self.mime_type = self._describe_stream()

    def init_segment(self) -> bytes:
        """ftyp+moov: append to a SourceBuffer (of `mime_type`) before any segment."""
        return self._init_segment

    def add_frame(self, frame: Frame) -> None:
        """Encodes one frame of the segment being built, now.

        Feeding frames as they are rendered spreads the encoder's work over the turn, and a
        turn that is cancelled has at most one frame in the encoder. A frame that cannot be
        converted raises before anything reaches x264.
        """
        with self._metered():
            self._encode_frame(self._convert(frame))

    @property
    def pending_frames(self) -> int:
        """Frames added since the last segment was finished."""
        return len(self._pending_video)

    def finish_segment(self, pcm: np.ndarray) -> EncodedSegment:
        """Closes the segment of the frames added so far, with their audio (int16 mono)."""
        if not self._pending_video:
            raise EncodeError("a segment needs at least one frame")
        self._check_pcm(pcm, len(self._pending_video))
        video_samples, self._pending_video = self._pending_video, []
        first_frame = self._next_frame
        audio_start = self._audio_origin + self._audio_packets_out * AAC_FRAME_SAMPLES
        with self._metered():
            audio_samples = self._encode_audio(pcm)
        spf = self.samples_per_frame
        data = fmp4.media_segment(
            self._next_sequence + 1,  # mfhd sequence numbers start at 1
            [
                fmp4.TrackRun(fmp4.VIDEO_TRACK_ID, first_frame * spf, video_samples),
                fmp4.TrackRun(fmp4.AUDIO_TRACK_ID, audio_start, audio_samples),
            ],
        )
        frames = len(video_samples)
        segment = EncodedSegment(
            data=data,
            sequence=self._next_sequence,
            first_frame=first_frame,
            frames=frames,
            media_start=first_frame * spf,
            media_end=(first_frame + frames) * spf,
        )
        self._next_frame += frames
        self._next_sequence += 1
        return segment

    def close(self) -> None:
        """Frees the codecs; audio AAC still held back is dropped (turns end in silence)."""
        self._closed = True
        self._video = None  # type: ignore[assignment]
        self._audio = None  # type: ignore[assignment]

    def _check_pcm(self, pcm: np.ndarray, frames: int) -> None:
        if self._closed:
            raise EncodeError("encoder is closed")
        if not isinstance(pcm, np.ndarray) or pcm.ndim != 1 or pcm.dtype != np.int16:
            raise EncodeError("pcm must be a 1-D int16 numpy array")
        if len(pcm) != frames * self.samples_per_frame:
            raise EncodeError(
                f"pcm has {len(pcm)} samples for {frames} frames; "
                f"expected {frames * self.samples_per_frame}"
            )

    @contextmanager
    def _metered(self) -> Iterator[None]:
        """Hands the CPU time of the enclosed work to `cpu_meter`."""
        began = time.thread_time()
        try:
            yield
        finally:
            if self._cpu_meter is not None:
                self._cpu_meter(time.thread_time() - began)

    def _convert(self, frame: Frame) -> av.VideoFrame:
        if self._closed:
            raise EncodeError("encoder is closed")
        return self._converter.to_yuv420p(frame)

    def _encode_frame(self, video_frame: av.VideoFrame) -> None:
        """x264 one frame (a key frame when it opens a segment); keeps its sample for the segment."""
        index = len(self._pending_video)
        video_frame.pts = (self._next_frame + index) * self.samples_per_frame
        video_frame.pict_type = (
            av.video.frame.PictureType.I if index == 0 else av.video.frame.PictureType.NONE
        )
        try:
            packets = self._video.encode(video_frame)
        except av.FFmpegError as error:
            raise EncodeError(f"H.264 encoding failed: {error}") from error
        if len(packets) != 1:
            raise EncodeError(f"x264 returned {len(packets)} packets for one frame (zerolatency expected)")
        packet = packets[0]
        if index == 0 and not packet.is_keyframe:
            raise EncodeError("x264 did not start the segment with a key frame")
        units = [u for u in h264.split_annexb(bytes(packet)) if h264.nal_type(u) not in _DROPPED_NAL_TYPES]
        self._pending_video.append(
            fmp4.Sample(h264.to_length_prefixed(units), self.samples_per_frame, packet.is_keyframe)
        )

    def _encode_audio(self, pcm: np.ndarray) -> list[fmp4.Sample]:
        audio = pcm.astype(np.float32) / 32768.0
        if self._audio_to_drop:
            dropped = min(self._audio_to_drop, len(audio))
            audio = audio[dropped:]
            self._audio_to_drop -= dropped
        pending = np.concatenate([self._audio_pending, audio])
        whole = len(pending) // AAC_FRAME_SAMPLES * AAC_FRAME_SAMPLES
        self._audio_pending = pending[whole:]
        samples = []
        try:
            for start in range(0, whole, AAC_FRAME_SAMPLES):
                chunk = pending[start : start + AAC_FRAME_SAMPLES].reshape(1, -1)
                audio_frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                audio_frame.sample_rate = self.clock_rate
                audio_frame.pts = self._audio_frames_in * AAC_FRAME_SAMPLES
                self._audio_frames_in += 1
                for packet in self._audio.encode(audio_frame):
                    expected_pts = self._audio_packets_out * AAC_FRAME_SAMPLES - AAC_PRIMING
                    if packet.pts != expected_pts:
                        raise EncodeError(f"AAC packet pts {packet.pts}, expected {expected_pts}")
                    samples.append(fmp4.Sample(bytes(packet), AAC_FRAME_SAMPLES))
                    self._audio_packets_out += 1
        except av.FFmpegError as error:
            raise EncodeError(f"AAC encoding failed: {error}") from error
        return samples

    def _describe_stream(self) -> tuple[bytes, str]:
        units = h264.split_annexb(bytes(self._video.extradata or b""))
        sps = [u for u in units if h264.nal_type(u) == h264.NAL_SPS]
        pps = [u for u in units if h264.nal_type(u) == h264.NAL_PPS]
        avc_config = h264.avc_decoder_configuration(sps, pps)
        audio_config = bytes(self._audio.extradata or b"")
        if len(audio_config) < 2:
            raise EncodeError("AAC encoder produced no AudioSpecificConfig")
        init = fmp4.init_segment(
            self.clock_rate,
            fmp4.VideoTrack(self.width, self.height, avc_config),
            fmp4.AudioTrack(1, self.clock_rate, audio_config),
        )
        audio_object_type = audio_config[0] >> 3
        codecs = f"{h264.parse_sps(sps[0]).codec_string}, mp4a.40.{audio_object_type}"
        return init, f'video/mp4; codecs="{codecs}"'


def _open_x264(
    width: int, height: int, fps: int, clock_rate: int, crf: int, preset: str, threads: int
) -> av.codec.context.CodecContext:
    """libx264 for live segments: no B-frames, no look-ahead, key frames only where forced."""
    context = av.CodecContext.create("libx264", "w")
    context.width = width
    context.height = height
    context.pix_fmt = "yuv420p"
    context.framerate = Fraction(fps)
    context.time_base = Fraction(1, clock_rate)
    context.thread_count = max(1, threads)
    context.flags |= av.codec.context.Flags.global_header  # SPS/PPS in extradata for avcC
    context.options = {
        "preset": preset,
        "tune": "zerolatency",
        "crf": str(crf),
        "bf": "0",
        "forced-idr": "1",
        "x264-params": f"scenecut=0:keyint=infinite:{X264_COLOUR_PARAMS}",
    }
    try:
        context.open()
    except (av.FFmpegError, ValueError) as error:
        raise EncodeError(f"cannot open x264 (preset={preset!r}, crf={crf}): {error}") from error
    return context


def _open_aac(clock_rate: int) -> av.codec.context.CodecContext:
    """FFmpeg's AAC-LC encoder, mono at the clock rate."""
    context = av.CodecContext.create("aac", "w")
    context.sample_rate = clock_rate
    context.layout = "mono"
    context.format = "fltp"
    context.time_base = Fraction(1, clock_rate)
    context.bit_rate = AAC_BIT_RATE
    try:
        context.open()
    except (av.FFmpegError, ValueError) as error:
        raise EncodeError(f"cannot open the AAC encoder at {clock_rate} Hz: {error}") from error
    return context
