"""Writes `example/analysis.npz`: the built-in avatar's face analysis, made by the real analyser.

Run from the repository root after changing the example (`make example-analysis`; also run by
`make_example.py`). The avatar registry uses this file instead of running the face landmarker
when the example's bytes are the ones it was made from (their SHA-256 is stored in it), so a
machine without MediaPipe still serves the built-in avatar. tests/test_avatars_registry.py
checks that it matches what the analyser gives today.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from avatar_server.avatars.analysis import analyse_faces, save_analysis
from avatar_server.avatars.landmarks import MediaPipeFaceLandmarker
from avatar_server.avatars.media_input import decode_media
from avatar_server.avatars.registry import EXAMPLE_ANALYSIS, example_source

HERE = Path(__file__).resolve().parent


def main() -> None:
    source = example_source(HERE)
    if source is None:
        raise SystemExit(f"no example avatar source in {HERE}")
    data = source.read_bytes()
    media = decode_media(data, "")  # as the registry decodes the built-in avatar
    analysis = analyse_faces(media.frames, MediaPipeFaceLandmarker())
    target = HERE / EXAMPLE_ANALYSIS
    save_analysis(target, analysis, source_sha256=hashlib.sha256(data).hexdigest())
    print(f"{target.name}: {len(media.frames)} frames of {source.name}, {target.stat().st_size} bytes")


if __name__ == "__main__":
    main()
