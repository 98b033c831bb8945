"""A full turn over gRPC with `renderer=ditto` on tiny CPU stand-in checkpoints (random weights).

Stand-ins have the official file layout and key names with reduced widths, so the
loader -> pipeline -> encoder path runs for real on a CPU; the frames look like
noise, which is expected.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from avatar.v1 import avatar_pb2 as pb
from conftest import running_service
from service_helpers import Conversation, decode_fmp4


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from avatar_server.renderers.ditto.standin import write_standin

    folder = tmp_path_factory.mktemp("ditto-tiny")
    write_standin(folder, size="tiny", onnx=False)
    return folder


@pytest.mark.slow
async def test_converse_turn_with_ditto_on_cpu_standins(data_dir, tiny_checkpoints) -> None:
    async with running_service(data_dir, renderer="ditto", checkpoints=tiny_checkpoints,
                               ditto_runtime="pytorch", ditto_device="cpu",
                               ditto_sampling_steps=2, ditto_capacity_fps=1000.0,
                               ditto_first_frames=5, ditto_stride=10, ditto_overlap=5,
                               ditto_template_frames=3) as service:  # a 200-frame prep is not this test's subject
        info = await service.stub.GetServerInfo(pb.GetServerInfoRequest())
        assert info.renderer == "ditto" and {m.runtime for m in info.models} >= {"pytorch"}
        talk = Conversation(service.stub, pb.SessionConfig())
        opening = await talk.until("video_init")
        started = opening[0].session_started
        assert started.renderer == "ditto"
        info = await service.stub.GetServerInfo(pb.GetServerInfoRequest())
        # Stand-ins carry the release's face models, whose random weights find no face like mediapipe's:
        # the avatar falls back to mediapipe landmarks, and ServerInfo says so.
        assert info.face_registration.startswith("release face models")
        assert "mediapipe 478 landmarks" in info.face_registration
        assert info.renderer_options["sampling_timesteps"] == "2 (setting AVATAR_DITTO_SAMPLING_STEPS)"
        assert info.renderer_options["crop_scale"] == "2.3 (default)"
        talk.say("Hello from Ditto.")
        events = await talk.until("turn_completed", "error", timeout=600)
        assert events[-1].HasField("turn_completed"), events[-1]
        completed = events[-1].turn_completed
        segments = [e.video_segment.data for e in events if e.HasField("video_segment")]
        media = decode_fmp4(opening[-1].video_init.data + b"".join(segments))
        # One frame per 1/25 s of the turn's audio on the media clock.
        assert media.video_frames == completed.frames == round(completed.media_seconds * 25)
        assert (media.width, media.height) == (started.width, started.height)
        await talk.close()
