"""The one place where internal types become avatar.v1 protobuf messages."""

from __future__ import annotations

from avatar.v1 import avatar_pb2 as pb

from avatar_server.avatars.model import AvatarInfo
from avatar_server.core.clock import Span
from avatar_server.core.errors import AvatarError
from avatar_server.pipeline.events import (
    AudioOut,
    CaptionOut,
    SegmentOut,
    TextDelta,
    TurnEvent,
    TurnReport,
)


def span_pb(span: Span) -> pb.MediaSpan:
    return pb.MediaSpan(start=span.start, end=span.end)


def avatar_pb(info: AvatarInfo) -> pb.Avatar:
    message = pb.Avatar(
        id=info.id,
        display_name=info.display_name,
        source_type=info.source_type,
        width=info.width,
        height=info.height,
        frames=info.frames,
        content_sha256=info.content_sha256,
        builtin=info.builtin,
    )
    message.created.FromDatetime(info.created)
    return message


def event_pb(event: TurnEvent, session_id: str, turn_id: str, clock_rate: int) -> pb.ConverseResponse:
    """A pipeline event as a ConverseResponse."""
    response = pb.ConverseResponse(session_id=session_id, turn_id=turn_id, span=span_pb(event.span))
    match event:
        case TextDelta(text=text):
            response.text_delta.text = text
        case AudioOut(pcm=pcm):
            response.audio.pcm = pcm.astype("<i2").tobytes()
            response.audio.sample_rate = clock_rate
        case CaptionOut(text=text, sentence=sentence):
            response.caption.text = text
            response.caption.sentence = sentence
        case SegmentOut() as segment:
            response.video_segment.data = segment.data
            response.video_segment.sequence = segment.sequence
            response.video_segment.frames = segment.frames
            response.video_segment.first_frame = segment.first_frame
            response.video_segment.last_in_turn = segment.last_in_turn
    return response


def completed_pb(report: TurnReport, session_id: str, turn_id: str, clock_rate: int) -> pb.ConverseResponse:
    """The TurnCompleted event with its timings."""
    media_seconds = report.media_samples / clock_rate
    timings = report.timings
    return pb.ConverseResponse(
        session_id=session_id,
        turn_id=turn_id,
        span=span_pb(report.span),
        turn_completed=pb.TurnCompleted(
            text=report.text,
            frames=report.frames,
            media_seconds=media_seconds,
            realtime_factor=report.work_seconds / media_seconds if media_seconds else 0.0,
            timings=pb.TurnTimings(
                llm_first_token_ms=timings.llm_first_token_ms,
                first_text_ms=timings.first_text_ms,
                tts_first_audio_ms=timings.tts_first_audio_ms,
                first_audio_ms=timings.first_audio_ms,
                first_frame_ms=timings.first_frame_ms,
                first_segment_ms=timings.first_segment_ms,
                total_ms=timings.total_ms,
                first_segment_after_first_token_ms=timings.first_segment_after_first_token_ms,
            ),
        ),
    )


def error_pb(error: AvatarError, session_id: str, turn_id: str = "") -> pb.ConverseResponse:
    return pb.ConverseResponse(
        session_id=session_id,
        turn_id=turn_id,
        error=pb.Error(
            code=int(error.code), message=error.message, stage=error.stage, retriable=error.retriable
        ),
    )
