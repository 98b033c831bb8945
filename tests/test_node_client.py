"""The Node.js example client speaks to the real service (the contract outside Python)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import REPO
from service_helpers import decode_fmp4

NODE_DIR = REPO / "clients" / "node"


@pytest.mark.slow
def test_node_client_speak_writes_decodable_mp4(service_process, tmp_path) -> None:
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node/npm not installed")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR,
                       check=True, timeout=300)
    output = tmp_path / "node.mp4"
    result = subprocess.run(
        ["node", "say.js", "--server", service_process.target, "Hello from Node.", "-o", str(output)],
        cwd=NODE_DIR, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    media = decode_fmp4(output.read_bytes())
    assert media.video_frames == summary["frames"] > 0
    assert media.audio_samples > 0
