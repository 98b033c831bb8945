"""Our full-size Ditto modules reproduce every tensor name and shape of the official .pth files.

The reference table (official_shapes.py) was listed from the official module definitions, which
load the released files with strict key checking. Tiny stand-ins keep the names, not the shapes.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from avatar_server.renderers.ditto.loaders import SPECS, size_of  # noqa: E402
from ditto_official_shapes import OFFICIAL_STATE_DICT_SHAPES  # noqa: E402

FILES = {
    "appearance_extractor": "appearance_extractor.pth",
    "motion_extractor": "motion_extractor.pth",
    "warp_network": "warp_network.pth",
    "decoder": "decoder.pth",
    "stitch_network": "stitch_network.pth",
    "lmdm": "lmdm_v0.4_hubert.pth",
}
# Learnable parameters of the official networks (BN statistics, spectral u/v and rotary tables excluded).
# Counted on the official module definitions (LMDM with the released condition width 1103).
OFFICIAL_PARAMETERS = {
    "appearance_extractor": 836_224,
    "motion_extractor": 28_118_728,
    "warp_network": 45_529_829,
    "decoder": 55_365_388,
    "stitch_network": 45_249,
    "lmdm": 47_788_297,
}


@pytest.mark.parametrize("network", list(FILES))
def test_full_size_module_matches_the_official_state_dict(network: str) -> None:
    spec = SPECS[network]
    module = spec.build(spec.full)
    ours = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    reference = OFFICIAL_STATE_DICT_SHAPES[FILES[network]]
    assert sorted(set(reference) - set(ours)) == []
    assert sorted(set(ours) - set(reference)) == []
    assert {k: v for k, v in ours.items() if reference[k] != v} == {}
    assert sum(p.numel() for p in module.parameters()) == OFFICIAL_PARAMETERS[network]


@pytest.mark.parametrize("network", list(FILES))
def test_tiny_variant_keeps_every_name_but_not_the_shapes(network: str) -> None:
    spec = SPECS[network]
    tiny = spec.build(spec.tiny).state_dict()
    reference = OFFICIAL_STATE_DICT_SHAPES[FILES[network]]
    assert list(tiny) == list(spec.build(spec.full).state_dict())
    assert set(tiny) == set(reference)
    tiny_elements = sum(math.prod(v.shape) for v in tiny.values())
    assert tiny_elements < sum(math.prod(s) for s in reference.values())
    assert size_of(network, tiny) == spec.tiny


def test_lmdm_condition_width_is_read_from_the_file() -> None:
    tensors = {
        "cond_projection.weight": torch.zeros(512, 1059),
        "null_cond_embed": torch.zeros(1, 80, 512),
        "input_projection.weight": torch.zeros(512, 530),
    }
    size = size_of("lmdm", tensors)
    assert (size.cond_dim, size.seq_frames, size.latent) == (1059, 80, 512)
