"""`avatar-client`: speak or chat with an avatar server; writes the reply as an MP4 with sound."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import grpc
from avatar.v1 import avatar_pb2 as pb
from avatar.v1 import avatar_pb2_grpc as pb_grpc

from avatar_client.mp4 import remux_fragments


class TurnRecorder:
    """Collects one turn's events: streams the text, keeps the video, prints the timings."""

    def __init__(self, *, echo_text: bool) -> None:
        self.echo_text = echo_text
        self.init = b""
        self.segments: list[bytes] = []
        self.text = ""
        self.completed: pb.TurnCompleted | None = None
        self.error: pb.Error | None = None
        self.cancelled = False

    def reset(self) -> None:
        self.segments.clear()
        self.text, self.completed, self.error, self.cancelled = "", None, None, False

    def take(self, event: pb.ConverseResponse) -> bool:
        """Records an event; True when the turn is over."""
        kind = event.WhichOneof("event")
        if kind == "video_init":
            self.init = event.video_init.data
        elif kind == "video_segment":
            self.segments.append(event.video_segment.data)
        elif kind == "text_delta":
            self.text += event.text_delta.text
            if self.echo_text:
                print(event.text_delta.text, end="", flush=True)
        elif kind == "turn_completed":
            self.completed = event.turn_completed
            return True
        elif kind == "turn_cancelled":
            self.cancelled = True
            return True
        elif kind == "error":
            self.error = event.error
            return bool(event.turn_id)
        return False

    def save(self, path: Path) -> None:
        if not (self.init and self.segments):
            return
        result = remux_fragments(self.init, self.segments, path)
        print(f"wrote {path} ({result.size_bytes} bytes, {result.duration_s:.2f} s)", file=sys.stderr)

    def report(self) -> None:
        if self.error is not None:
            print(f"error [{self.error.stage}] code={self.error.code}: {self.error.message}", file=sys.stderr)
        if self.completed is None:
            return
        c, t = self.completed, self.completed.timings
        print(
            f"turn: {c.media_seconds:.2f} s of speech, {c.frames} frames, realtime factor {c.realtime_factor:.2f}\n"
            f"  first text {t.first_text_ms:.0f} ms, first audio {t.first_audio_ms:.0f} ms, "
            f"first frame {t.first_frame_ms:.0f} ms, first segment {t.first_segment_ms:.0f} ms, "
            f"total {t.total_ms:.0f} ms",
            file=sys.stderr,
        )


def _channel(args: argparse.Namespace) -> grpc.aio.Channel:
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    if args.tls or args.ca_file:
        root = Path(args.ca_file).read_bytes() if args.ca_file else None
        return grpc.aio.secure_channel(args.server, grpc.ssl_channel_credentials(root), options=options)
    return grpc.aio.insecure_channel(args.server, options=options)


def _metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {args.api_key}"),) if args.api_key else ()


def _config(args: argparse.Namespace) -> pb.SessionConfig:
    return pb.SessionConfig(avatar=args.avatar, voice=args.voice, language=args.language)


async def say(args: argparse.Namespace) -> int:
    recorder = TurnRecorder(echo_text=False)
    async with _channel(args) as channel:
        stub = pb_grpc.AvatarServiceStub(channel)
        call = stub.Speak(pb.SpeakRequest(config=_config(args), text=args.text), metadata=_metadata(args))
        async for event in call:
            if recorder.take(event):
                break
    recorder.save(Path(args.output))
    recorder.report()
    return 0 if recorder.completed else 1


async def chat(args: argparse.Namespace) -> int:
    recorder = TurnRecorder(echo_text=True)
    requests: asyncio.Queue[pb.ConverseRequest | None] = asyncio.Queue()

    async def request_stream():  # type: ignore[no-untyped-def]
        yield pb.ConverseRequest(config=_config(args))
        while (request := await requests.get()) is not None:
            yield request

    async with _channel(args) as channel:
        stub = pb_grpc.AvatarServiceStub(channel)
        call = stub.Converse(request_stream(), metadata=_metadata(args))
        events = aiter(call)
        started = await anext(events)
        if started.WhichOneof("event") != "session_started":
            print(f"unexpected first event: {started}", file=sys.stderr)
            return 1
        info = started.session_started
        print(f"session {started.session_id}: renderer={info.renderer} llm={info.llm} tts={info.tts} "
              f"voice={info.voice}", file=sys.stderr)
        messages = [args.message] if args.message else None
        turn = 0
        while True:
            if messages is not None:
                if not messages:
                    break
                text = messages.pop(0)
            else:
                try:
                    text = await asyncio.to_thread(input, "you> ")
                except EOFError:
                    break
                if not text.strip():
                    continue
            recorder.reset()
            await requests.put(pb.ConverseRequest(message=pb.UserMessage(text=text)))
            async for event in events:
                if recorder.take(event):
                    break
            print()
            turn += 1
            output = Path(args.output)
            if messages is None and turn > 1:
                output = output.with_name(f"{output.stem}-{turn}{output.suffix}")
            recorder.save(output)
            recorder.report()
        await requests.put(None)
        call.cancel()
    return 0 if recorder.completed else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="avatar-client", description="Talk to an avatar server.")
    parser.add_argument("--server", default=os.environ.get("AVATAR_SERVER", "localhost:50051"))
    parser.add_argument("--api-key", default=os.environ.get("AVATAR_API_KEY", ""),
                        help="API key (env AVATAR_API_KEY)")
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's roots")
    parser.add_argument("--ca-file", help="PEM file of the CA that signed the server's certificate")
    parser.add_argument("--avatar", default="")
    parser.add_argument("--voice", default="")
    parser.add_argument("--language", default="")
    commands = parser.add_subparsers(dest="command", required=True)
    say_parser = commands.add_parser("say", help="the avatar speaks TEXT (no language model)")
    say_parser.add_argument("text")
    say_parser.add_argument("-o", "--output", default="say.mp4")
    chat_parser = commands.add_parser("chat", help="one turn with MESSAGE, or interactive without")
    chat_parser.add_argument("message", nargs="?")
    chat_parser.add_argument("-o", "--output", default="reply.mp4")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        code = asyncio.run(say(args) if args.command == "say" else chat(args))
    except grpc.aio.AioRpcError as error:
        print(f"avatar-client: {error.code().name}: {error.details()}", file=sys.stderr)
        code = 2
    print(f"({time.perf_counter() - started:.2f} s)", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
