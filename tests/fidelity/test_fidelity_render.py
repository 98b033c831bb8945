"""Warp and decode on the full-size stand-ins: their WarpF3D / DecodeF3D (PyTorch wrappers, fp32)
against our networks, on one appearance volume and one pair of keypoints (one frame each: a
full-size warp + decode is about 1.2 TFLOP, seconds on a CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from avatar_server.renderers.ditto import checkpoints as layout
from fidelity.reference_harness import reference_fp32


@pytest.fixture(scope="module")
def warp_inputs(our_networks):
    """An appearance volume of a noise image and source / driving keypoints near the canonical range."""
    generator = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 256, 256, generator=generator)
    with torch.inference_mode():
        f_s = our_networks.appearance(image).float().numpy()
    x_s = (torch.rand(1, 21, 3, generator=generator) - 0.5).numpy() * 0.6
    x_d = x_s + (torch.rand(1, 21, 3, generator=generator).numpy() - 0.5) * 0.05
    return f_s, x_s.astype(np.float32), x_d.astype(np.float32)


@pytest.fixture(scope="module")
def warped(ditto_reference, standin_full, our_networks, warp_inputs):
    warp_mod = ditto_reference.module("core.atomic_components.warp_f3d")
    f_s, x_s, x_d = warp_inputs
    with reference_fp32():
        theirs = warp_mod.WarpF3D(ditto_reference.network_cfg(standin_full, layout.PTH_FILES["warp_network"]))(f_s, x_s, x_d)
    with torch.inference_mode():
        ours = our_networks.warp(*(torch.from_numpy(a) for a in warp_inputs)).float().numpy()
    return ours, theirs


def test_warp_equals_theirs(warped, fidelity_table) -> None:
    fidelity_table.check("warp: warped feature (1, 256, 64, 64)", *warped)


def test_decode_equals_theirs(ditto_reference, standin_full, our_networks, warped, fidelity_table) -> None:
    decode_mod = ditto_reference.module("core.atomic_components.decode_f3d")
    feature = warped[1]  # their warp's output feeds both decoders
    with reference_fp32():
        theirs = decode_mod.DecodeF3D(ditto_reference.network_cfg(standin_full, layout.PTH_FILES["decoder"]))(feature)
    with torch.inference_mode():
        ours = our_networks.decode(torch.from_numpy(feature)).float()
    ours = (ours[0].permute(1, 2, 0).clamp(0, 1) * 255).numpy()  # their wrapper hands HWC clip(0, 1) * 255
    fidelity_table.check("decode: image (512, 512, 3) in 0..255", ours, theirs)
