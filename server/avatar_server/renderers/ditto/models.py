"""The Ditto networks behind one interface, whichever runtime (PyTorch, ONNX Runtime, TensorRT) runs them.

The streaming pipeline codes against `DittoNetworks`, `load_networks` and `load_ditto_config` only.
One `DittoNetworks` holds ONE shared copy of the weights on one device; sessions keep their own state
elsewhere and may call it from several worker threads at once (calls share no mutable state).

Shapes below are those of the official checkpoints ("full"). Stand-in checkpoints written with
`avatar-checkpoints standin --size tiny` keep every outer width (image sizes, 21 keypoints, motion 265,
HuBERT 1024, condition 1103, 80 frames) but shrink the inner ones: the appearance volume and the warped
feature have fewer channels. Read them from `networks.sizes` (a `NetworkSizes`) instead of hard-coding
(C=32, D=16) or 256; tiny stand-ins have random weights and render noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from avatar_server.renderers.base import ModelDescription
from avatar_server.renderers.ditto.checkpoints import CheckpointsError, require_checkpoints
from avatar_server.renderers.ditto.config import DittoConfig, load_ditto_config
from avatar_server.renderers.ditto.sizes import NetworkSizes

if TYPE_CHECKING:
    import torch

__all__ = [
    "CheckpointsError",
    "DittoConfig",
    "DittoNetworks",
    "NetworkSizes",
    "engine_devices",
    "load_ditto_config",
    "load_networks",
    "require_checkpoints",
    "resolve_frame_format",
]


class DittoNetworks(Protocol):
    """One shared set of Ditto networks on one device. Batch-first torch tensors in and out.

    Inputs may be on any device and of any float dtype: they are moved to `device` (and cast as each
    network needs). Outputs are on `device`. `hubert`, `lmdm`, `motion` and `stitch` return float32;
    `appearance`, `warp` and `decode` return `dtype` (they only feed each other and the final image).
    Any batch size B >= 1 is accepted; a runtime whose files are fixed at batch 1 (the official ONNX
    and engines) runs the batch item by item, so batching pays only with the PyTorch runtime or
    engines built with a batch range (see build_engines.py). Calls run synchronously: call them from
    worker threads, never on the event loop. All calls are inference-only (no autograd).
    """

    device: torch.device
    dtype: torch.dtype  # compute dtype of appearance/warp/decode: fp16 on CUDA by default, fp32 on CPU
    runtime: str  # "pytorch" | "onnx" | "tensorrt"
    sizes: NetworkSizes
    motion_dim: int  # 265
    cond_dim: int  # per-frame LMDM condition width, read from the LMDM weights (1103 for the release)
    seq_frames: int  # 80

    def hubert(self, audio: torch.Tensor) -> torch.Tensor:
        """Streaming HuBERT: (B, 6480) float32 16 kHz mono in [-1, 1] -> (B, 20, 1024) float32, 50 Hz.

        The official model exists only as ONNX; every runtime runs it with ONNX Runtime. Turning the
        20 frames into 5 video-rate features ([-14:-4] averaged in pairs) is the caller's job.
        """
        ...

    def lmdm(
        self, x: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor, time: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One guided DDIM denoising step of the motion diffusion model.

        x (B, L, 265) noisy motion, cond_frame (B, 265), cond (B, L, cond_dim), time (B,) int64 in
        [0, 999]; L must equal `seq_frames` (80). Returns (pred_noise, x_start), both (B, L, 265)
        float32, with classifier-free guidance weight 2 already applied inside (the unconditioned and
        conditioned passes run as one batch of 2B in PyTorch), exactly as the official ONNX computes
        it: x_start = unc + 2 * (cond - unc); pred_noise = (x - sqrt(a_t) x_start) / sqrt(1 - a_t)
        with the cosine schedule's cumulative alpha a_t (1000 steps; the table is
        `avatar_server.renderers.ditto.networks.lmdm.cosine_alphas_cumprod()`).
        """
        ...

    def appearance(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) RGB in 0..1 -> appearance volume (B, 32, 16, 64, 64) in `dtype`."""
        ...

    def motion(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, 256, 256) RGB 0..1 -> raw motion-extractor outputs, float32.

        Keys: "pitch", "yaw", "roll" (B, 66) logits over pose bins (softmax, expected index * 3 - 97.5
        gives degrees: the caller does this); "t" (B, 3); "exp" (B, 63); "scale" (B, 1);
        "kp" (B, 63) canonical keypoints (21 x 3, flattened).
        """
        ...

    def warp(
        self, feature_3d: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor
    ) -> torch.Tensor:
        """Warps the appearance volume (B, 32, 16, 64, 64) from kp_source to kp_driving (each (B, 21, 3))
        -> (B, 256, 64, 64) in `dtype` (occlusion already applied). The 3-D grid sample runs in fp32
        where the runtime allows it."""
        ...

    def decode(self, feature: torch.Tensor) -> torch.Tensor:
        """(B, 256, 64, 64) warped feature -> (B, 3, 512, 512) RGB in 0..1 (`dtype`, after sigmoid)."""
        ...

    def stitch(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """Stitching network: (B, 21, 3), (B, 21, 3) -> the STITCHED driving keypoints (B, 21, 3), float32.

        This is the official ONNX output ("out"): the MLP's 65 outputs are already applied,
        kp_driving + delta[:63] (per keypoint xyz) with delta[63:65] added to every keypoint's x, y.
        """
        ...

    def describe(self) -> list[ModelDescription]:
        """One entry per network (name, runtime, device, precision) for ServerInfo."""
        ...


def load_networks(
    checkpoints: Path,
    *,
    runtime: str,
    device: str = "auto",
    precision: str | None = None,
    engine_dir: Path | None = None,
) -> DittoNetworks:
    """Loads the networks of a checkpoints folder (official layout) with one runtime.

    runtime: "pytorch" (ditto_pytorch/models/*.pth), "onnx" (ditto_onnx/*.onnx) or "tensorrt"
    (engines built by `make engines` into checkpoints/ditto_trt_sm<XY>_trt<M.m>/, or `engine_dir`).
    device: "auto" (cuda if available), "cpu", "cuda" or "cuda:N". precision: None (fp16 on CUDA,
    fp32 on CPU), "fp32" or "fp16" (ONNX: fp32 only). HuBERT always runs with ONNX Runtime.
    Raises CheckpointsError (FAILED_PRECONDITION, stage "startup") naming every missing or
    malformed file and how to get the real weights, before anything heavy is loaded. Slow (seconds
    to a minute): call it once per process, off the event loop.
    """
    root = Path(checkpoints)
    if runtime == "pytorch":
        from avatar_server.renderers.ditto.runtimes.torch_runtime import TorchNetworks

        return TorchNetworks.load(root, device=device, precision=precision)
    if runtime == "onnx":
        from avatar_server.renderers.ditto.runtimes.onnx_runtime import OnnxNetworks

        return OnnxNetworks.load(root, device=device, precision=precision)
    if runtime == "tensorrt":
        from avatar_server.renderers.ditto.runtimes.tensorrt_runtime import TensorRTNetworks

        return TensorRTNetworks.load(root, device=device, precision=precision, engine_dir=engine_dir)
    raise CheckpointsError(f"unknown Ditto runtime {runtime!r}: use pytorch, onnx or tensorrt")


def network_options_from_settings(settings: Any) -> dict[str, Any]:
    """load_networks keyword arguments from the service settings (runtime, device, precision, engine_dir).

    The device is the first of `settings.ditto.device`'s list; DittoRenderer loads one set per device."""
    return {
        "runtime": settings.ditto.runtime,
        "device": engine_devices(settings.ditto.device)[0],
        "precision": None if settings.ditto.precision == "auto" else settings.ditto.precision,
        "engine_dir": settings.ditto.engine_dir,
    }


def engine_devices(spec: str) -> list[str]:
    """The devices to run one engine each on: "auto" -> every visible CUDA device (else ["cpu"]);
    otherwise a comma list ("cuda:0,cuda:1"; "cpu,cpu" gives two CPU engines, for tests)."""
    if spec.strip() == "auto":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{index}" for index in range(count)] or ["cpu"]
    devices = [part.strip() for part in spec.split(",")]
    if not all(devices):
        raise CheckpointsError(f"empty entry in Ditto device list {spec!r}: use e.g. cuda:0,cuda:1")
    return devices


def resolve_frame_format(setting: str, device: torch.device) -> str:
    """ "auto" -> yuv420p on CUDA (the encoder's input, converted on the GPU), rgb24 elsewhere."""
    if setting == "auto":
        return "yuv420p" if device.type == "cuda" else "rgb24"
    return setting
