"""Makes the default avatar: the public-domain NASA astronaut portrait and its looping idle video.

Run from the repository root: `.venv/bin/python example/make_example.py`. The
portrait is `skimage.data.astronaut()` (Eileen Collins, NASA, public domain,
shipped inside scikit-image); the idle video is that portrait brought to life by
`avatar_server.renderers.lipsync.idle_motion` (blinks, a slow breathing sway), one
8-second period, so it loops without a seam.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import skimage.data
from avatar_server.avatars.landmarks import LAYOUTS, MediaPipeFaceLandmarker
from avatar_server.core.frames import Frame
from avatar_server.media.clip import encode_clip
from avatar_server.renderers.lipsync.idle_motion import IdleMotion

import make_analysis  # example/make_analysis.py, beside this script

HERE = Path(__file__).resolve().parent
FPS = 25
PERIOD_S = 8


def main() -> None:
    portrait = skimage.data.astronaut()
    height, width = portrait.shape[:2]
    landmarker = MediaPipeFaceLandmarker(max_faces=1)
    face = landmarker.detect(portrait)[0]
    motion = IdleMotion(
        face.landmarks,
        LAYOUTS[landmarker.layout],
        width,
        height,
        fps=FPS,
        period_frames=PERIOD_S * FPS,
    )
    frames = [Frame(motion.apply(portrait, index)) for index in range(motion.period_frames)]
    cv2.imwrite(
        str(HERE / "astronaut.png"),
        cv2.cvtColor(portrait, cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_PNG_COMPRESSION, 9],
    )
    (HERE / "base.mp4").write_bytes(encode_clip(frames, FPS, crf=24, preset="slow"))
    for name in ("astronaut.png", "base.mp4"):
        print(f"{name}: {(HERE / name).stat().st_size} bytes")
    make_analysis.main()  # the shipped analysis must describe the new bytes


if __name__ == "__main__":
    main()
