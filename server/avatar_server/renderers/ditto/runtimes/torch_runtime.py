"""PyTorch runtime: our module definitions loaded from ditto_pytorch/models/*.pth, on CPU or CUDA.

appearance, warp and decode run in the compute dtype (fp16 weights on CUDA by default; the 3-D grid
samples stay fp32); motion, stitching and LMDM run in fp32 as the official ONNX/engines do. HuBERT
runs with ONNX Runtime (the only form it is released in).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from avatar_server.renderers.base import ModelDescription
from avatar_server.renderers.ditto.checkpoints import CheckpointsError, require_checkpoints
from avatar_server.renderers.ditto.loaders import is_tiny, load_network
from avatar_server.renderers.ditto.networks.motion import MOTION_OUTPUTS
from avatar_server.renderers.ditto.runtimes.common import HubertOnnx, resolve_device, resolve_dtype
from avatar_server.renderers.ditto.sizes import NetworkSizes

log = logging.getLogger(__name__)

RENDER_NETWORKS = ("appearance_extractor", "warp_network", "decoder")


def sizes_of(modules: dict[str, nn.Module]) -> NetworkSizes:
    """NetworkSizes of a loaded set; raises when files of different sizes were mixed."""
    app, warp, dec, motion, lmdm = (
        modules[name].size for name in ("appearance_extractor", "warp_network", "decoder", "motion_extractor", "lmdm")
    )
    tiny = {name: is_tiny(name, module) for name, module in modules.items()}
    if len(set(tiny.values())) > 1:
        raise CheckpointsError(
            "Ditto checkpoints mix official and tiny stand-in files: "
            + ", ".join(f"{name}={'tiny' if flag else 'full'}" for name, flag in tiny.items())
        )
    if (warp.volume_channels, warp.volume_depth) != (app.volume_channels, app.volume_depth):
        raise CheckpointsError("warp_network does not take the appearance_extractor's volume")
    if dec.input_channels != warp.output_channels:
        raise CheckpointsError("decoder does not take the warp_network's output")
    return NetworkSizes(
        feature_channels=app.volume_channels,
        feature_depth=app.volume_depth,
        warped_channels=warp.output_channels,
        num_kp=motion.num_kp,
        num_bins=motion.num_bins,
        motion_dim=lmdm.motion_dim,
        cond_dim=lmdm.cond_dim,
        seq_frames=lmdm.seq_frames,
    )


class TorchNetworks:
    """DittoNetworks on PyTorch modules (one shared copy; calls are thread-safe, inference only)."""

    runtime = "pytorch"

    def __init__(self, modules: dict[str, nn.Module], hubert: HubertOnnx, device: torch.device, dtype: torch.dtype) -> None:
        self.sizes = sizes_of(modules)
        self.device = device
        self.dtype = dtype
        self.motion_dim = self.sizes.motion_dim
        self.cond_dim = self.sizes.cond_dim
        self.seq_frames = self.sizes.seq_frames
        self.tiny = is_tiny("decoder", modules["decoder"])
        for name, module in modules.items():
            module.to(device=device, dtype=dtype if name in RENDER_NETWORKS else torch.float32)
        self._modules = modules
        self._hubert = hubert

    @classmethod
    def load(cls, root: Path, *, device: str = "auto", precision: str | None = None) -> TorchNetworks:
        files = require_checkpoints(root, "pytorch")
        torch_device = resolve_device(device)
        dtype = resolve_dtype(precision, torch_device)
        modules = {name: load_network(name, path) for name, path in files.networks.items() if name != "hubert"}
        hubert = HubertOnnx(files.networks["hubert"], torch_device)
        log.info("Ditto networks loaded from %s (pytorch, %s, %s)", root, torch_device, dtype)
        return cls(modules, hubert, torch_device, dtype)

    def _float(self, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        return tensor.to(self.device, dtype or torch.float32, non_blocking=True)

    def hubert(self, audio: torch.Tensor) -> torch.Tensor:
        return self._hubert(audio)

    @torch.inference_mode()
    def lmdm(
        self, x: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor, time: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] != self.seq_frames or cond.shape[1] != self.seq_frames:
            raise ValueError(f"LMDM windows are {self.seq_frames} frames, got x {tuple(x.shape)}, cond {tuple(cond.shape)}")
        return self._modules["lmdm"](
            self._float(x), self._float(cond_frame), self._float(cond), time.to(self.device, torch.int64)
        )

    @torch.inference_mode()
    def appearance(self, image: torch.Tensor) -> torch.Tensor:
        return self._modules["appearance_extractor"](self._float(image, self.dtype))

    @torch.inference_mode()
    def motion(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self._modules["motion_extractor"](self._float(image))
        return dict(zip(MOTION_OUTPUTS, outputs, strict=True))

    @torch.inference_mode()
    def warp(self, feature_3d: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        return self._modules["warp_network"](
            self._float(feature_3d, self.dtype), self._float(kp_source), self._float(kp_driving)
        )

    @torch.inference_mode()
    def decode(self, feature: torch.Tensor) -> torch.Tensor:
        return self._modules["decoder"](self._float(feature, self.dtype))

    @torch.inference_mode()
    def stitch(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        return self._modules["stitch_network"](self._float(kp_source), self._float(kp_driving))

    def describe(self) -> list[ModelDescription]:
        device = str(self.device)
        precision = {torch.float16: "fp16", torch.float32: "fp32"}[self.dtype]
        described = [
            ModelDescription(
                name=f"ditto/{name}" + (" (tiny stand-in)" if self.tiny else ""),
                runtime="pytorch",
                device=device,
                precision=precision if name in RENDER_NETWORKS else "fp32",
            )
            for name in self._modules
        ]
        described.append(ModelDescription("ditto/hubert", "onnxruntime", self._hubert.provider, "fp32"))
        return described
