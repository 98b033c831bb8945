"""Media layer: frames + PCM on the session's media clock -> fragmented-MP4 segments and clips."""

from avatar_server.media.clip import encode_clip
from avatar_server.media.encoder import EncodedSegment, SegmentEncoder
from avatar_server.media.resample import StreamResampler, resample

__all__ = ["EncodedSegment", "SegmentEncoder", "StreamResampler", "encode_clip", "resample"]
