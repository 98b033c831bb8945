"""Helpers for driving Converse streams in tests: a request queue and event collectors."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import av
import grpc
from avatar.v1 import avatar_pb2 as pb


def slow_reader_channel(target: str) -> grpc.aio.Channel:
    """A channel whose HTTP/2 window does not grow (no BDP probing), as over a slow link:
    a stream its client stops reading soon pushes back on the server."""
    return grpc.aio.insecure_channel(
        target, options=[("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", 1 << 26)])


class Conversation:
    """A Converse call fed from a queue, so a test can send requests at any time."""

    def __init__(self, stub, config: pb.SessionConfig | None = None, *, metadata=()) -> None:  # type: ignore[no-untyped-def]
        self.requests: asyncio.Queue[pb.ConverseRequest | None] = asyncio.Queue()
        if config is not None:
            self.requests.put_nowait(pb.ConverseRequest(config=config))
        self.call = stub.Converse(self._stream(), metadata=metadata)
        self.events = aiter(self.call)

    async def _stream(self) -> AsyncIterator[pb.ConverseRequest]:
        while (request := await self.requests.get()) is not None:
            yield request

    def send(self, **fields: object) -> None:
        self.requests.put_nowait(pb.ConverseRequest(**fields))

    def say(self, text: str, turn_id: str = "") -> None:
        self.send(message=pb.UserMessage(text=text, turn_id=turn_id))

    async def next(self, timeout: float = 60.0) -> pb.ConverseResponse:
        return await asyncio.wait_for(anext(self.events), timeout)

    async def until(self, *kinds: str, timeout: float = 120.0) -> list[pb.ConverseResponse]:
        """Events up to and including the first of one of `kinds`."""
        seen = []
        while True:
            event = await self.next(timeout)
            seen.append(event)
            if event.WhichOneof("event") in kinds:
                return seen

    async def close(self) -> None:
        self.requests.put_nowait(None)
        self.call.cancel()


@dataclass
class DecodedMedia:
    """What an independent decoder (PyAV/FFmpeg) found in a fragmented MP4."""

    video_frames: int
    audio_samples: int
    audio_rate: int
    width: int
    height: int
    frames: list = field(default_factory=list)  # RGB arrays
    audio: list = field(default_factory=list)  # float arrays


def decode_fmp4(data: bytes, *, keep_frames: bool = False) -> DecodedMedia:
    container = av.open(io.BytesIO(data), format="mp4")
    video_frames = audio_samples = 0
    rate = width = height = 0
    frames, audio = [], []
    for frame in container.decode(*container.streams):
        if isinstance(frame, av.VideoFrame):
            video_frames += 1
            width, height = frame.width, frame.height
            if keep_frames:
                frames.append(frame.to_ndarray(format="rgb24"))
        else:
            audio_samples += frame.samples
            rate = frame.sample_rate
            if keep_frames:
                audio.append(frame.to_ndarray().reshape(-1))
    container.close()
    return DecodedMedia(video_frames, audio_samples, rate, width, height, frames, audio)
