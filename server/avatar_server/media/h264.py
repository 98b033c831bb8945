"""H.264 bitstream helpers: Annex-B to length-prefixed NAL units, SPS fields, avcC and codec string."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from avatar_server.core.errors import EncodeError

NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9

# Profiles whose SPS carries chroma format and bit depths (and whose avcC must repeat them).
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
_START_CODE = re.compile(b"\x00\x00\x01")


def split_annexb(stream: bytes) -> list[bytes]:
    """The NAL units of an Annex-B byte stream (start codes and trailing zero bytes removed)."""
    starts = [match.end() for match in _START_CODE.finditer(stream)]
    units = []
    for index, start in enumerate(starts):
        end = starts[index + 1] - 3 if index + 1 < len(starts) else len(stream)
        unit = stream[start:end].rstrip(b"\x00")
        if unit:
            units.append(unit)
    return units


def nal_type(unit: bytes) -> int:
    """The nal_unit_type of one NAL unit."""
    return unit[0] & 0x1F


def to_length_prefixed(units: list[bytes]) -> bytes:
    """NAL units as an MP4 sample: each preceded by its 4-byte big-endian length."""
    return b"".join(struct.pack(">I", len(unit)) + unit for unit in units)


class _BitReader:
    """Reads bits and Exp-Golomb codes from an RBSP (emulation prevention bytes removed)."""

    def __init__(self, rbsp: bytes) -> None:
        self._data = rbsp
        self._position = 0

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte_index = self._position >> 3
            if byte_index >= len(self._data):
                raise EncodeError("truncated H.264 parameter set")
            value = (value << 1) | ((self._data[byte_index] >> (7 - (self._position & 7))) & 1)
            self._position += 1
        return value

    def ue(self) -> int:
        leading_zeros = 0
        while self.bits(1) == 0:
            leading_zeros += 1
            if leading_zeros > 31:
                raise EncodeError("malformed Exp-Golomb code in H.264 parameter set")
        return (1 << leading_zeros) - 1 + self.bits(leading_zeros)


def _rbsp(unit: bytes) -> bytes:
    """The NAL payload without its header byte and with emulation prevention bytes removed."""
    return unit[1:].replace(b"\x00\x00\x03", b"\x00\x00")


@dataclass(frozen=True)
class SpsInfo:
    """The SPS fields avcC and the RFC 6381 codec string need."""

    profile_idc: int
    constraint_flags: int
    level_idc: int
    chroma_format_idc: int = 1
    bit_depth_luma_minus8: int = 0
    bit_depth_chroma_minus8: int = 0

    @property
    def codec_string(self) -> str:
        """E.g. "avc1.64001f" for High profile, level 3.1."""
        return f"avc1.{self.profile_idc:02x}{self.constraint_flags:02x}{self.level_idc:02x}"


def parse_sps(sps: bytes) -> SpsInfo:
    """Reads profile, level, chroma format and bit depths from an SPS NAL unit."""
    if len(sps) < 4 or nal_type(sps) != NAL_SPS:
        raise EncodeError("not an H.264 SPS")
    profile_idc, constraint_flags, level_idc = sps[1], sps[2], sps[3]
    if profile_idc not in _HIGH_PROFILES:
        return SpsInfo(profile_idc, constraint_flags, level_idc)
    reader = _BitReader(_rbsp(sps)[3:])
    reader.ue()  # seq_parameter_set_id
    chroma_format_idc = reader.ue()
    if chroma_format_idc == 3:
        reader.bits(1)  # separate_colour_plane_flag
    return SpsInfo(
        profile_idc,
        constraint_flags,
        level_idc,
        chroma_format_idc=chroma_format_idc,
        bit_depth_luma_minus8=reader.ue(),
        bit_depth_chroma_minus8=reader.ue(),
    )


def avc_decoder_configuration(sps_units: list[bytes], pps_units: list[bytes]) -> bytes:
    """The AVCDecoderConfigurationRecord (avcC payload) for these parameter sets, 4-byte NAL lengths."""
    if not sps_units or not pps_units:
        raise EncodeError("H.264 encoder produced no SPS/PPS")
    info = parse_sps(sps_units[0])
    record = bytearray([1, info.profile_idc, info.constraint_flags, info.level_idc, 0xFC | 3])
    record.append(0xE0 | len(sps_units))
    for unit in sps_units:
        record += struct.pack(">H", len(unit)) + unit
    record.append(len(pps_units))
    for unit in pps_units:
        record += struct.pack(">H", len(unit)) + unit
    if info.profile_idc in _HIGH_PROFILES:
        record.append(0xFC | info.chroma_format_idc)
        record.append(0xF8 | info.bit_depth_luma_minus8)
        record.append(0xF8 | info.bit_depth_chroma_minus8)
        record.append(0)  # numOfSequenceParameterSetExt
    return bytes(record)
