"""Draws the README's picture: the default avatar's mouth closed, open, wide and round (docs/lipsync_strip.png).

Run from the repository root after `example/make_example.py`:
`.venv/bin/python example/make_strip.py`. Each tile is the lip-sync renderer's
own drawing of frame 0 of the idle video for one mouth pose, cropped to the face.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import cv2
import numpy as np
from avatar_server.avatars.registry import AvatarRegistry
from avatar_server.renderers.lipsync.mouth_track import MouthPose
from avatar_server.renderers.lipsync.renderer import PreparedAvatar

ROOT = Path(__file__).resolve().parents[1]
POSES = {
    "closed (rest)": MouthPose(),
    "open": MouthPose(open=0.9),
    "wide": MouthPose(open=0.5, wide=1.0),
    "round": MouthPose(open=0.6, round=1.0),
}


async def load_default_avatar(data_dir: Path):
    registry = AvatarRegistry(data_dir, max_upload_bytes=50 * 1024 * 1024)
    await registry.start()
    return await registry.load(registry.default_id)


def main() -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        assets = asyncio.run(load_default_avatar(Path(data_dir)))
    avatar = PreparedAvatar(assets, fps=25)
    x0, y0, x1, y1 = (int(v) for v in assets.crop_box)
    tiles = []
    for label, pose in POSES.items():
        tile = cv2.resize(
            avatar.draw(0, pose)[y0:y1, x0:x1], (256, 256), interpolation=cv2.INTER_AREA
        )
        tile = cv2.cvtColor(tile, cv2.COLOR_RGB2BGR)
        cv2.putText(
            tile, label, (8, 246), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA
        )
        tiles.append(tile)
    out = ROOT / "docs" / "lipsync_strip.png"
    cv2.imwrite(str(out), np.concatenate(tiles, axis=1), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"{out}: {out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
