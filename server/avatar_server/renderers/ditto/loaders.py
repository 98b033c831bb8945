"""Loads the official .pth files into our modules with exact key and shape checking.

Each file's container quirk is undone first (stitch weights under `retarget_shoulder` with an
optional `module.` prefix; LMDM under `model_state_dict`), then every tensor name and shape must
match the module exactly: a missing, extra or mis-shaped tensor is a CheckpointsError naming it.
Two size variants exist: the official one ("full") and our CPU stand-in ("tiny"); one anchor
tensor per file tells which, and the LMDM condition width is read from the file.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avatar_server.renderers.ditto.checkpoints import CheckpointsError
from avatar_server.renderers.ditto.networks import appearance, decoder, lmdm, motion, stitch, warp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkSpec:
    """How to build one network: module class, its two size variants, and the anchor tensor telling them apart."""

    build: Callable[[Any], nn.Module]
    full: Any
    tiny: Any
    anchor: str
    anchor_dim: int
    container: str | None = None  # key holding the state dict inside the file, if any


SPECS: dict[str, NetworkSpec] = {
    "appearance_extractor": NetworkSpec(
        appearance.AppearanceExtractor, appearance.FULL, appearance.TINY, "first.conv.weight", 0
    ),
    "motion_extractor": NetworkSpec(
        motion.MotionExtractor, motion.FULL, motion.TINY, "detector.downsample_layers.0.0.weight", 0
    ),
    "warp_network": NetworkSpec(warp.WarpNetwork, warp.FULL, warp.TINY, "fourth.weight", 0),
    "decoder": NetworkSpec(decoder.SpadeDecoder, decoder.FULL, decoder.TINY, "fc.weight", 1),
    "stitch_network": NetworkSpec(
        stitch.StitchNetwork, stitch.FULL, stitch.TINY, "mlp.0.weight", 0, container="retarget_shoulder"
    ),
    "lmdm": NetworkSpec(
        lmdm.MotionDiffusion, lmdm.FULL, lmdm.TINY, "input_projection.weight", 0, container="model_state_dict"
    ),
}


def read_state_dict(path: Path, network: str) -> dict[str, torch.Tensor]:
    """The tensors of one .pth file as the module expects them (container unwrapped, `module.` stripped)."""
    raw = _torch_load(path)
    container = SPECS[network].container
    if container is not None:
        if not isinstance(raw, Mapping) or container not in raw:
            found = sorted(raw)[:8] if isinstance(raw, Mapping) else type(raw).__name__
            raise CheckpointsError(f"{path}: expected the weights under key {container!r}, found {found}")
        raw = raw[container]
    if not isinstance(raw, Mapping):
        raise CheckpointsError(f"{path}: expected a state dict, found {type(raw).__name__}")
    tensors = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointsError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        tensors[key.removeprefix("module.") if network == "stitch_network" else key] = value
    return tensors


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # The official loader unpickles fully; a file from the checkpoints folder is trusted as much.
        log.warning("%s holds more than tensors; loading it with full unpickling", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as error:
        raise CheckpointsError(f"cannot read {path}: {error}") from error


def size_of(network: str, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The size variant a state dict belongs to (full when the anchor says neither)."""
    spec = SPECS[network]
    anchor = tensors.get(spec.anchor)
    size = spec.full
    if anchor is not None and anchor.dim() > spec.anchor_dim:
        width = anchor.shape[spec.anchor_dim]
        expected = _shape_of(spec.build(spec.tiny), spec.anchor)[spec.anchor_dim]
        if width == expected:
            size = spec.tiny
    if network == "lmdm":
        projection = tensors.get("cond_projection.weight")
        null_embed = tensors.get("null_cond_embed")
        if projection is not None and projection.dim() == 2:
            size = dataclasses.replace(size, cond_dim=int(projection.shape[1]))
        if null_embed is not None and null_embed.dim() == 3:
            size = dataclasses.replace(size, seq_frames=int(null_embed.shape[1]))
    return size


def _shape_of(module: nn.Module, key: str) -> tuple[int, ...]:
    return tuple(module.state_dict()[key].shape)


def check_state_dict(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], path: Path) -> None:
    """Raises CheckpointsError listing every missing, unexpected and mis-shaped tensor."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    wrong = [
        f"{key} has shape {list(found[key].shape)}, expected {list(expected[key].shape)}"
        for key in expected
        if key in found and tuple(found[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append("missing tensors: " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        problems.append(
            "unexpected tensors: " + ", ".join(unexpected[:20]) + (" ..." if len(unexpected) > 20 else "")
        )
    if wrong:
        problems.append("; ".join(wrong[:20]))
    if problems:
        raise CheckpointsError(f"{path} does not match the Ditto network: " + "; ".join(problems))


def load_network(network: str, path: Path) -> nn.Module:
    """Builds the network in the size its file holds, loads it strictly and returns it in eval mode (fp32, CPU)."""
    tensors = read_state_dict(path, network)
    spec = SPECS[network]
    module = spec.build(size_of(network, tensors))
    check_state_dict(module.state_dict(), tensors, path)
    module.load_state_dict(tensors, strict=True)
    module.eval()
    if isinstance(module, decoder.SpadeDecoder):
        module.fold_spectral_norm()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def is_tiny(network: str, module: nn.Module) -> bool:
    """True when a loaded module is the tiny stand-in variant."""
    size = getattr(module, "size")
    spec = SPECS[network]
    if network == "lmdm":
        return size.latent == spec.tiny.latent
    return size == spec.tiny
