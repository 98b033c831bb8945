"""Paste-back: their PutBack (mask from get_mask, cv2 warps, the cython blend) vs our PasteBack.

Their blend is the real one: pyximport builds their blend.pyx (cython) on first use.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from avatar_server.renderers.ditto.putback import PasteBack, release_mask


def _rotated_crop(frame_size: tuple[int, int], centre: tuple[float, float]) -> np.ndarray:
    """A crop -> frame affine (3x3 float32) like a registration's: rotated, scaled, its centre at
    `centre` (fractions of the frame's width and height)."""
    height, width = frame_size
    angle, scale = 0.21, 1.37
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    m = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float64)
    m[:2, 2] = np.array([width * centre[0], height * centre[1]]) - m[:2, :2] @ np.array([256.0, 256.0])
    return m.astype(np.float32)


def test_mask_equals_theirs(ditto_reference, fidelity_table) -> None:
    get_mask = ditto_reference.module("core.utils.get_mask").get_mask
    fidelity_table.check("paste-back: mask", release_mask(512), get_mask(512, 512, 0.9, 0.9)[:, :, 0],
                         tolerance=0.0, kind="absolute")


@pytest.mark.parametrize("placement", [(0.52, 0.31), (0.08, 0.9)], ids=["inside", "over the edge"])
def test_paste_back_equals_their_putback(placement, ditto_reference, fidelity_table) -> None:
    putback = ditto_reference.module("core.atomic_components.putback")
    frame = cv2.cvtColor(cv2.imread(str(ditto_reference.root / "example" / "image.png")), cv2.COLOR_BGR2RGB)
    frame = np.ascontiguousarray(frame[:1080, :1430])  # a non-square frame with even sides
    rng = np.random.default_rng(7)
    smooth = cv2.GaussianBlur(rng.random((512, 512, 3)).astype(np.float32), (0, 0), 9)
    render = np.clip(smooth * 3 - 1 + rng.normal(0, 0.05, smooth.shape), 0, 1).astype(np.float32)
    m_c2o = _rotated_crop(frame.shape[:2], placement)

    theirs = putback.PutBack()(frame, render * 255.0, m_c2o)  # their decoder hands clip(0, 1) * 255
    paste = PasteBack.build(frame[None], m_c2o[None], 512, torch.device("cpu"))
    ours = paste.paste(torch.from_numpy(render).permute(2, 0, 1)[None], torch.tensor([0]))
    ours = ours[0].permute(1, 2, 0).numpy()
    differing = float(np.mean(ours != theirs))
    where = "crop inside the frame" if placement[0] > 0.5 else "crop over the frame's edge"
    fidelity_table.check(f"paste-back: frame, 8-bit levels, {where}", ours, theirs, tolerance=1.0, kind="absolute",
                         note=f"{differing:.1e} of values differ")
    assert differing < 1e-4
