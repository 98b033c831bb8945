"""TensorRT runtime (TensorRT 10+): engines built from the official ONNX by `make engines`, or prebuilt ones.

Kept thin on purpose: tensorrt.Runtime -> deserialize_cuda_engine -> one IExecutionContext per
engine, inputs and outputs bound as torch CUDA tensors (set_input_shape / set_tensor_address)
and run with execute_async_v3 on the current torch stream. The logic around it (engine folder and
file names, TensorRT version check, profile/shape checks, batch splitting) is plain Python and is
tested without TensorRT. HuBERT runs with ONNX Runtime, as in every runtime.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from avatar_server.renderers.base import ModelDescription
from avatar_server.renderers.ditto.checkpoints import (
    BUILD_ENGINES_HINT,
    PREBUILT_ENGINE_DIR,
    CheckpointsError,
    engine_dir_name,
    engine_precision,
    require_checkpoints,
)
from avatar_server.renderers.ditto.networks.motion import MOTION_OUTPUTS
from avatar_server.renderers.ditto.runtimes.common import HubertOnnx, resolve_device
from avatar_server.renderers.ditto.runtimes.onnx_runtime import IO_NAMES
from avatar_server.renderers.ditto.sizes import NetworkSizes

log = logging.getLogger(__name__)

MIN_TENSORRT_MAJOR = 10
TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "INT64": torch.int64, "INT32": torch.int32, "BOOL": torch.bool}


def require_tensorrt_version(version: str) -> None:
    """Refuses TensorRT older than 10 (the API this runtime uses, and what `make engines` builds with)."""
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise CheckpointsError(f"cannot read the TensorRT version {version!r}") from None
    if major < MIN_TENSORRT_MAJOR:
        raise CheckpointsError(f"TensorRT {version} is too old: the Ditto TensorRT runtime needs 10 or newer")


def select_engine_dir(
    root: Path, engine_dir: Path | None, *, compute_capability: tuple[int, int], tensorrt_version: str
) -> Path:
    """The engine folder to load: the one given, else the one `make engines` builds for this GPU and
    TensorRT version. The released ditto_trt_Ampere_Plus engines are TensorRT 8.6 and never chosen."""
    if engine_dir is not None:
        return Path(engine_dir)
    local = Path(root) / engine_dir_name(compute_capability, tensorrt_version)
    if not local.is_dir() and (Path(root) / PREBUILT_ENGINE_DIR).is_dir():
        raise CheckpointsError(
            f"no engines for this GPU and TensorRT {tensorrt_version} in {local}; the released "
            f"{PREBUILT_ENGINE_DIR} engines were built with TensorRT 8.6.1 and do not load in TensorRT 10. "
            + BUILD_ENGINES_HINT
        )
    return local


@dataclass(frozen=True)
class ShapeRange:
    """One input's optimisation-profile range (min, opt, max), as read from an engine."""

    minimum: tuple[int, ...]
    optimum: tuple[int, ...]
    maximum: tuple[int, ...]

    def accepts(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.minimum) and all(
            low <= size <= high for low, size, high in zip(self.minimum, shape, self.maximum, strict=True)
        )

    @property
    def max_batch(self) -> int:
        return self.maximum[0]


def check_input_shapes(network: str, ranges: Mapping[str, ShapeRange], shapes: Mapping[str, Sequence[int]]) -> None:
    """Raises a precise error when an input shape is outside the engine's profile (batch excluded)."""
    for name, shape in shapes.items():
        allowed = ranges.get(name)
        if allowed is None:
            raise CheckpointsError(f"{network} engine has no input {name!r}")
        row_shape = (min(shape[0], allowed.max_batch), *shape[1:])
        if not allowed.accepts(row_shape):
            raise ValueError(
                f"{network}: input {name} shape {list(shape)} is outside the engine profile "
                f"{list(allowed.minimum)}..{list(allowed.maximum)}"
            )


def batch_chunks(batch: int, max_batch: int) -> list[slice]:
    """Row slices of at most `max_batch` rows covering a batch (engines built at batch 1 run row by row)."""
    step = max(1, max_batch)
    return [slice(start, min(start + step, batch)) for start in range(0, batch, step)]


class TrtEngine:
    """One deserialized engine and its execution context (calls serialised by a lock)."""

    def __init__(self, network: str, path: Path, trt: Any, runtime: Any, device: torch.device) -> None:
        self.network = network
        self.path = path
        self.device = device
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise CheckpointsError(
                f"TensorRT could not load {path}: engines only load in the TensorRT version and GPU "
                f"family that built them. {BUILD_ENGINES_HINT}"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {name: self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT for name in names}
        self.inputs = [name for name in names if is_input[name]]
        self.outputs = [name for name in names if not is_input[name]]
        expected_inputs, expected_outputs = IO_NAMES[network]
        if set(self.inputs) != set(expected_inputs) or not set(expected_outputs) <= set(self.outputs):
            raise CheckpointsError(f"{path}: tensors {names} are not those of {network}")
        self.output_names = list(expected_outputs)
        self.dtypes = {name: TORCH_DTYPES[self.engine.get_tensor_dtype(name).name] for name in names}
        self.ranges = {
            name: ShapeRange(*(tuple(dims) for dims in self.engine.get_tensor_profile_shape(name, 0)))
            for name in self.inputs
        }
        self.max_batch = min(r.max_batch for r in self.ranges.values())
        self.lock = threading.Lock()

    def __call__(self, **inputs: torch.Tensor) -> list[torch.Tensor]:
        check_input_shapes(self.network, self.ranges, {n: tuple(t.shape) for n, t in inputs.items()})
        batch = next(iter(inputs.values())).shape[0]
        parts = [self._run({n: t[rows] for n, t in inputs.items()}) for rows in batch_chunks(batch, self.max_batch)]
        return [torch.cat([part[i] for part in parts]) for i in range(len(self.output_names))]

    def _run(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        bound = {name: t.to(self.device, self.dtypes[name]).contiguous() for name, t in inputs.items()}
        with self.lock:
            for name, tensor in bound.items():
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
            outputs = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                self.context.set_tensor_address(name, outputs[name].data_ptr())
            stream = torch.cuda.current_stream(self.device)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution of {self.network} failed")
            stream.synchronize()
        return [outputs[name].float() for name in self.output_names]


class TensorRTNetworks:
    """DittoNetworks on TensorRT engines (CUDA only)."""

    runtime = "tensorrt"

    def __init__(self, engines: dict[str, TrtEngine], hubert: HubertOnnx, device: torch.device, sizes: NetworkSizes, precision: str) -> None:
        self._engines = engines
        self._hubert = hubert
        self.device = device
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.precision = precision
        self.sizes = sizes
        self.motion_dim = sizes.motion_dim
        self.cond_dim = sizes.cond_dim
        self.seq_frames = sizes.seq_frames

    @classmethod
    def load(
        cls, root: Path, *, device: str = "auto", precision: str | None = None, engine_dir: Path | None = None
    ) -> TensorRTNetworks:
        try:
            import tensorrt as trt
        except ImportError:
            raise CheckpointsError(
                "the Ditto TensorRT runtime needs the tensorrt Python package (10 or newer) and a CUDA GPU"
            ) from None
        require_tensorrt_version(trt.__version__)
        torch_device = resolve_device("cuda" if device == "auto" else device)
        if torch_device.type != "cuda":
            raise CheckpointsError("the Ditto TensorRT runtime runs on CUDA devices only")
        precision = precision or "fp16"
        capability = torch.cuda.get_device_capability(torch_device)
        folder = select_engine_dir(root, engine_dir, compute_capability=capability, tensorrt_version=trt.__version__)
        files = require_checkpoints(root, "tensorrt", engine_dir=folder, precision=precision)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with torch.cuda.device(torch_device):
            engines = {
                name: TrtEngine(name, path, trt, runtime, torch_device)
                for name, path in files.networks.items()
                if name != "hubert"
            }
        hubert = HubertOnnx(files.networks["hubert"], torch_device)
        return cls(engines, hubert, torch_device, sizes_from_engines(engines), precision)

    def hubert(self, audio: torch.Tensor) -> torch.Tensor:
        return self._hubert(audio)

    def lmdm(self, x: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred_noise, x_start = self._engines["lmdm"](x=x, cond_frame=cond_frame, cond=cond, time_cond=time)
        return pred_noise, x_start

    def appearance(self, image: torch.Tensor) -> torch.Tensor:
        return self._engines["appearance_extractor"](image=image)[0].to(self.dtype)

    def motion(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self._engines["motion_extractor"](image=image)
        return {name: value.reshape(image.shape[0], -1) for name, value in zip(MOTION_OUTPUTS, outputs, strict=True)}

    def warp(self, feature_3d: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        return self._engines["warp_network"](feature_3d=feature_3d, kp_source=kp_source, kp_driving=kp_driving)[0].to(self.dtype)

    def decode(self, feature: torch.Tensor) -> torch.Tensor:
        return self._engines["decoder"](feature=feature)[0].to(self.dtype)

    def stitch(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        return self._engines["stitch_network"](kp_source=kp_source, kp_driving=kp_driving)[0]

    def describe(self) -> list[ModelDescription]:
        described = [
            ModelDescription(f"ditto/{name}", "tensorrt", str(self.device), engine_precision(name, self.precision))
            for name in self._engines
        ]
        described.append(ModelDescription("ditto/hubert", "onnxruntime", self._hubert.provider, "fp32"))
        return described


def sizes_from_engines(engines: Mapping[str, TrtEngine]) -> NetworkSizes:
    """NetworkSizes from the engines' profile shapes."""
    feature = engines["warp_network"].ranges["feature_3d"].maximum
    decoder_in = engines["decoder"].ranges["feature"].maximum
    cond = engines["lmdm"].ranges["cond"].maximum
    return NetworkSizes(
        feature_channels=feature[1],
        feature_depth=feature[2],
        feature_size=feature[3],
        warped_channels=decoder_in[1],
        image_size=decoder_in[2] * 8,
        motion_dim=engines["lmdm"].ranges["x"].maximum[2],
        cond_dim=cond[2],
        seq_frames=cond[1],
    )
