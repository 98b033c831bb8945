"""A minimal fragmented-MP4 writer: the init segment (ftyp+moov) and moof+mdat media segments.

One H.264 video track and one AAC audio track share one timescale (the session's media
clock), so a segment's decode times are plain sample counts. Only what MediaSource and
ordinary demuxers need is written (ISO/IEC 14496-12 and -14).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

VIDEO_TRACK_ID = 1
AUDIO_TRACK_ID = 2

# Sample flags (ISO/IEC 14496-12 8.8.3.1): a sync sample depends on no other; others do.
SYNC_SAMPLE_FLAGS = 0x02000000
NON_SYNC_SAMPLE_FLAGS = 0x01010000

_UNITY_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def box(kind: bytes, *payload: bytes) -> bytes:
    """One box: 32-bit size, four-character type, payload."""
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    """A box with the version byte and 24-bit flags of a FullBox."""
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


@dataclass(frozen=True)
class VideoTrack:
    """An H.264 track: picture size and its avcC record."""

    width: int
    height: int
    avc_config: bytes


@dataclass(frozen=True)
class AudioTrack:
    """An AAC track: channel count, sample rate and its AudioSpecificConfig."""

    channels: int
    sample_rate: int
    audio_specific_config: bytes


@dataclass(frozen=True)
class Sample:
    """One coded sample (an access unit or an AAC frame) with its duration in timescale units."""

    data: bytes
    duration: int
    is_sync: bool = True


@dataclass(frozen=True)
class TrackRun:
    """A track's samples in one segment, starting at decode time `base_time`."""

    track_id: int
    base_time: int
    samples: Sequence[Sample]


def init_segment(timescale: int, video: VideoTrack, audio: AudioTrack) -> bytes:
    """ftyp + moov with empty sample tables and mvex, as MediaSource expects before any segment."""
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isom", b"iso6", b"avc1", b"mp41")
    mvhd = full_box(
        b"mvhd", 0, 0,
        struct.pack(">IIII", 0, 0, timescale, 0),  # creation, modification, timescale, duration
        struct.pack(">IH", 0x10000, 0x100), bytes(10),  # rate 1.0, volume 1.0, reserved
        _UNITY_MATRIX, bytes(24),  # matrix, pre_defined
        struct.pack(">I", AUDIO_TRACK_ID + 1),  # next_track_ID
    )
    mvex = box(b"mvex", _trex(VIDEO_TRACK_ID), _trex(AUDIO_TRACK_ID))
    moov = box(b"moov", mvhd, _video_trak(timescale, video), _audio_trak(timescale, audio), mvex)
    return ftyp + moov


def media_segment(sequence_number: int, runs: Sequence[TrackRun]) -> bytes:
    """moof + mdat holding `runs` (tracks with no samples are left out); sample data in run order."""
    runs = [run for run in runs if run.samples]
    mfhd = full_box(b"mfhd", 0, 0, struct.pack(">I", sequence_number))
    # The moof's size does not depend on the data offsets, so build it once to learn it.
    moof_size = len(box(b"moof", mfhd, *(_traf(run, 0) for run in runs)))
    offset = moof_size + 8  # past the mdat header
    trafs = []
    for run in runs:
        trafs.append(_traf(run, offset))
        offset += sum(len(sample.data) for sample in run.samples)
    payload = b"".join(sample.data for run in runs for sample in run.samples)
    return box(b"moof", mfhd, *trafs) + box(b"mdat", payload)


def _trex(track_id: int) -> bytes:
    # default sample description 1; durations, sizes and flags come with every trun.
    return full_box(b"trex", 0, 0, struct.pack(">IIIII", track_id, 1, 0, 0, 0))


def _traf(run: TrackRun, data_offset: int) -> bytes:
    # tfhd: default-base-is-moof, so trun data offsets count from the moof's first byte.
    tfhd = full_box(b"tfhd", 0, 0x020000, struct.pack(">I", run.track_id))
    tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", run.base_time))
    # trun: data-offset, sample-duration, sample-size and sample-flags present.
    entries = b"".join(
        struct.pack(
            ">III",
            sample.duration,
            len(sample.data),
            SYNC_SAMPLE_FLAGS if sample.is_sync else NON_SYNC_SAMPLE_FLAGS,
        )
        for sample in run.samples
    )
    trun = full_box(b"trun", 0, 0x000701, struct.pack(">Ii", len(run.samples), data_offset), entries)
    return box(b"traf", tfhd, tfdt, trun)


def _track_header(track_id: int, width: int, height: int, volume: int) -> bytes:
    return full_box(
        b"tkhd", 0, 0x000003,  # enabled, in movie
        struct.pack(">IIIII", 0, 0, track_id, 0, 0),  # creation, modification, id, reserved, duration
        bytes(8), struct.pack(">hhHH", 0, 0, volume, 0),  # reserved, layer, alternate group, volume
        _UNITY_MATRIX, struct.pack(">II", width << 16, height << 16),
    )


def _media(timescale: int, handler: bytes, name: bytes, media_header: bytes, sample_entry: bytes) -> bytes:
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, 0, 0x55C4, 0))  # 'und'
    hdlr = full_box(b"hdlr", 0, 0, bytes(4), handler, bytes(12), name + b"\x00")
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    empty_table = struct.pack(">I", 0)
    stbl = box(
        b"stbl",
        full_box(b"stsd", 0, 0, struct.pack(">I", 1), sample_entry),
        full_box(b"stts", 0, 0, empty_table),
        full_box(b"stsc", 0, 0, empty_table),
        full_box(b"stsz", 0, 0, empty_table, empty_table),
        full_box(b"stco", 0, 0, empty_table),
    )
    return box(b"mdia", mdhd, hdlr, box(b"minf", media_header, dinf, stbl))


def _video_trak(timescale: int, video: VideoTrack) -> bytes:
    avc1 = box(
        b"avc1",
        bytes(6), struct.pack(">H", 1),  # reserved, data_reference_index
        bytes(16), struct.pack(">HH", video.width, video.height),
        struct.pack(">II", 0x480000, 0x480000), bytes(4),  # 72 dpi, reserved
        struct.pack(">H", 1), bytes(32),  # frame_count, compressorname
        struct.pack(">Hh", 0x18, -1),  # depth, pre_defined
        box(b"avcC", video.avc_config),
    )
    vmhd = full_box(b"vmhd", 0, 1, bytes(8))
    media = _media(timescale, b"vide", b"VideoHandler", vmhd, avc1)
    return box(b"trak", _track_header(VIDEO_TRACK_ID, video.width, video.height, 0), media)


def _audio_trak(timescale: int, audio: AudioTrack) -> bytes:
    mp4a = box(
        b"mp4a",
        bytes(6), struct.pack(">H", 1),  # reserved, data_reference_index
        bytes(8), struct.pack(">HHHH", audio.channels, 16, 0, 0),
        struct.pack(">I", audio.sample_rate << 16),
        _esds(audio.audio_specific_config),
    )
    smhd = full_box(b"smhd", 0, 0, bytes(4))
    media = _media(timescale, b"soun", b"SoundHandler", smhd, mp4a)
    return box(b"trak", _track_header(AUDIO_TRACK_ID, 0, 0, 0x100), media)


def _descriptor(tag: int, payload: bytes) -> bytes:
    """An MPEG-4 descriptor with its size in 7-bit groups (ISO/IEC 14496-1 8.3.3)."""
    size = len(payload)
    groups = [size & 0x7F]
    size >>= 7
    while size:
        groups.append(0x80 | (size & 0x7F))
        size >>= 7
    return bytes([tag, *reversed(groups)]) + payload


def _esds(audio_specific_config: bytes) -> bytes:
    decoder_config = _descriptor(
        0x04,
        bytes([0x40, 0x15])  # MPEG-4 audio, audio stream
        + struct.pack(">I", 0)[1:]  # bufferSizeDB
        + struct.pack(">II", 0, 0)  # maxBitrate, avgBitrate (unknown)
        + _descriptor(0x05, audio_specific_config),
    )
    es = _descriptor(0x03, struct.pack(">HB", AUDIO_TRACK_ID, 0) + decoder_config + _descriptor(0x06, b"\x02"))
    return full_box(b"esds", 0, 0, es)
