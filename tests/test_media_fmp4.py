"""The fMP4 box writer and H.264 helpers, checked by parsing their bytes back."""

from __future__ import annotations

import struct

import pytest
from avatar_server.core.errors import EncodeError
from avatar_server.media import fmp4, h264

CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"mvex", b"moof", b"traf", b"dinf"}


def walk(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of every box, depth first, descending into containers."""
    end = len(data) if end is None else end
    boxes = []
    while start < end:
        size, kind = struct.unpack(">I4s", data[start : start + 8])
        assert size >= 8 and start + size <= end, f"bad box {kind!r} size {size}"
        boxes.append((kind, start + 8, start + size))
        if kind in CONTAINERS:
            boxes += walk(data, start + 8, start + size)
        start += size
    return boxes


def test_media_segment_offsets_point_at_each_tracks_samples() -> None:
    video = [fmp4.Sample(b"V0" * 5, 640, True), fmp4.Sample(b"v1" * 3, 640, False)]
    audio = [fmp4.Sample(b"A" * 7, 1024), fmp4.Sample(b"B" * 2, 1024)]
    data = fmp4.media_segment(
        9,
        [fmp4.TrackRun(1, 6400, video), fmp4.TrackRun(2, 5120, audio), fmp4.TrackRun(2, 0, [])],
    )
    boxes = walk(data)
    kinds = [kind for kind, _, _ in boxes]
    assert kinds == [b"moof", b"mfhd", b"traf", b"tfhd", b"tfdt", b"trun", b"traf", b"tfhd", b"tfdt", b"trun", b"mdat"]
    (_, mfhd, _) = boxes[1]
    assert struct.unpack(">I", data[mfhd + 4 : mfhd + 8])[0] == 9
    moof_start = 0
    tfdts = [struct.unpack(">Q", data[s + 4 : s + 12])[0] for k, s, _ in boxes if k == b"tfdt"]
    assert tfdts == [6400, 5120]
    for (kind, start, _), samples in zip([b for b in boxes if b[0] == b"trun"], [video, audio]):
        flags = struct.unpack(">I", data[start : start + 4])[0] & 0xFFFFFF
        count, offset = struct.unpack(">Ii", data[start + 4 : start + 12])
        assert flags == 0x701 and count == len(samples)
        position = moof_start + offset
        for index, sample in enumerate(samples):
            duration, size, sample_flags = struct.unpack(">III", data[start + 12 + 12 * index : start + 24 + 12 * index])
            assert (duration, size) == (sample.duration, len(sample.data))
            assert sample_flags == (fmp4.SYNC_SAMPLE_FLAGS if sample.is_sync else fmp4.NON_SYNC_SAMPLE_FLAGS)
            assert data[position : position + size] == sample.data
            position += size
    assert data.endswith(b"A" * 7 + b"B" * 2)


def test_init_segment_carries_both_sample_entries() -> None:
    avc_config = b"\x01\x64\x00\x1f\xff\xe1\x00\x04\x67\x64\x00\x1f\x01\x00\x02\x68\xee"
    init = fmp4.init_segment(
        16000, fmp4.VideoTrack(512, 288, avc_config), fmp4.AudioTrack(1, 16000, b"\x14\x08")
    )
    boxes = walk(init)
    kinds = [kind for kind, _, _ in boxes]
    assert kinds[:2] == [b"ftyp", b"moov"]
    assert kinds.count(b"trak") == 2 and kinds.count(b"trex") == 2
    mdhd_timescales = [struct.unpack(">I", init[s + 12 : s + 16])[0] for k, s, _ in boxes if k == b"mdhd"]
    assert mdhd_timescales == [16000, 16000]
    stsd = [s for k, s, _ in boxes if k == b"stsd"]
    video_entry = init[stsd[0] + 8 + 4 : stsd[0] + 8 + 8]
    audio_entry = init[stsd[1] + 8 + 4 : stsd[1] + 8 + 8]
    assert (video_entry, audio_entry) == (b"avc1", b"mp4a")
    assert avc_config in init
    # esds: ES descriptor > decoder config (AAC, 0x40) > decoder specific info holding the ASC.
    assert b"\x05\x02\x14\x08" in init and b"\x04\x11\x40\x15" in init
    width, height = struct.unpack(">HH", init[stsd[0] + 8 + 8 + 24 : stsd[0] + 8 + 8 + 28])
    assert (width, height) == (512, 288)


def test_descriptor_sizes_over_127_bytes_use_several_size_bytes() -> None:
    assert fmp4._descriptor(5, b"x" * 200)[:3] == bytes([5, 0x81, 0x48])
    assert fmp4._descriptor(5, b"x" * 3)[:2] == bytes([5, 3])


def test_split_annexb_handles_three_and_four_byte_start_codes() -> None:
    stream = b"\x00\x00\x00\x01\x67\xaa\x00\x00\x01\x68\xbb\x00\x00\x00\x01\x65\xcc\x00\x00"
    assert h264.split_annexb(stream) == [b"\x67\xaa", b"\x68\xbb", b"\x65\xcc"]
    assert h264.to_length_prefixed([b"\x65\xcc"]) == b"\x00\x00\x00\x02\x65\xcc"


def test_parse_sps_reads_high_profile_fields_through_emulation_prevention() -> None:
    # High profile (100), level 3.1; seq_parameter_set_id ue=0 ('1'), chroma_format_idc ue=1
    # ('010'), bit depths ue=0 ('1','1'): bits 1 010 1 1 00 -> 0xAC.
    sps = bytes([0x67, 100, 0x00, 0x1F]) + b"\xac"
    info = h264.parse_sps(sps)
    assert (info.profile_idc, info.level_idc, info.chroma_format_idc) == (100, 31, 1)
    assert (info.bit_depth_luma_minus8, info.bit_depth_chroma_minus8) == (0, 0)
    assert info.codec_string == "avc1.64001f"
    # Level 0 makes "00 00" before the payload, so an emulation prevention byte must be skipped.
    info = h264.parse_sps(bytes([0x67, 100, 0x00, 0x00, 0x03, 0xAC]))
    assert (info.level_idc, info.chroma_format_idc, info.bit_depth_luma_minus8) == (0, 1, 0)
    # chroma_format_idc=2 ('011'), bit depth luma 2 ('011'), chroma 0: 1 011 011 1 -> 0xB7
    info = h264.parse_sps(bytes([0x67, 122, 0x00, 0x28, 0xB7]))
    assert (info.chroma_format_idc, info.bit_depth_luma_minus8, info.bit_depth_chroma_minus8) == (2, 2, 0)
    assert h264.parse_sps(bytes([0x67, 66, 0xC0, 0x1E])).codec_string == "avc1.42c01e"
    with pytest.raises(EncodeError):
        h264.parse_sps(b"\x68\x00\x00\x00")


def test_rbsp_removes_emulation_prevention_bytes() -> None:
    assert h264._rbsp(b"\x67\x00\x00\x03\x01\x00\x00\x03\x00") == b"\x00\x00\x01\x00\x00\x00"


def test_avc_config_for_high_profile_appends_chroma_and_bit_depth() -> None:
    sps, pps = bytes([0x67, 100, 0x00, 0x1F, 0xAC]), b"\x68\xee\x3c\x80"
    record = h264.avc_decoder_configuration([sps], [pps])
    assert record[:6] == bytes([1, 100, 0, 0x1F, 0xFF, 0xE1])
    assert record[6:8] == b"\x00\x05" and record[8:13] == sps
    assert record[13] == 1 and record[14:16] == b"\x00\x04" and record[16:20] == pps
    assert record[20:] == bytes([0xFD, 0xF8, 0xF8, 0])
    with pytest.raises(EncodeError):
        h264.avc_decoder_configuration([], [pps])
