"""Turns a session's fMP4 init + media segments into one ordinary, seekable MP4 (no re-encode)."""

from __future__ import annotations

import io

import av


def fragments_to_mp4(fragments: bytes) -> bytes:
    """Remuxes a fragmented MP4 (init segment followed by media segments) into a faststart MP4.

    Packets are copied as they are; their timestamps are shifted so the file
    starts at zero (a reply in the middle of a session starts later on the
    session's media clock).
    """
    source = av.open(io.BytesIO(fragments), format="mp4")
    output_buffer = io.BytesIO()
    target = av.open(output_buffer, mode="w", format="mp4", options={"movflags": "faststart"})
    try:
        mapping = {}
        for stream in source.streams:
            if stream.type in ("video", "audio"):
                mapping[stream.index] = target.add_stream_from_template(stream)
        offsets: dict[int, int] = {}
        for packet in source.demux(*[s for s in source.streams if s.index in mapping]):
            if packet.dts is None:
                continue
            offset = offsets.setdefault(packet.stream.index, packet.dts)
            packet.dts -= offset
            packet.pts = packet.pts - offset if packet.pts is not None else None
            packet.stream = mapping[packet.stream.index]
            target.mux(packet)
    finally:
        target.close()
        source.close()
    return output_buffer.getvalue()
