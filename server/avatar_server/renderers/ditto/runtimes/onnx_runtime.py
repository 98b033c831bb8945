"""ONNX Runtime: the official ditto_onnx/*.onnx files on the CPU or CUDA execution provider.

warp_network.onnx holds its 3-D grid samples as a TensorRT-plugin op that ONNX Runtime cannot
run; it is rewritten in memory into standard ops (onnx_graph.py) before the session is made.
The official files are fixed at batch 1, so a batch runs row by row (files exported with a
dynamic batch axis run in one call). Data passes through host memory (numpy), outputs are float32.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import torch

from avatar_server.renderers.base import ModelDescription
from avatar_server.renderers.ditto.checkpoints import CheckpointsError, require_checkpoints
from avatar_server.renderers.ditto.networks.motion import MOTION_OUTPUTS
from avatar_server.renderers.ditto.onnx_graph import replace_custom_grid_samples
from avatar_server.renderers.ditto.runtimes.common import HubertOnnx, onnx_providers, resolve_device
from avatar_server.renderers.ditto.sizes import NetworkSizes

log = logging.getLogger(__name__)

IO_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "appearance_extractor": (("image",), ("pred",)),
    "motion_extractor": (("image",), MOTION_OUTPUTS),
    "warp_network": (("feature_3d", "kp_source", "kp_driving"), ("out",)),
    "decoder": (("feature",), ("output",)),
    "stitch_network": (("kp_source", "kp_driving"), ("out",)),
    "lmdm": (("x", "cond_frame", "cond", "time_cond"), ("pred_noise", "x_start")),
}
NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


class OnnxNetwork:
    """One network's ONNX Runtime session with name checks and batch-1 looping."""

    def __init__(self, network: str, path: Path, providers: list[str]) -> None:
        import onnxruntime

        self.network = network
        self.path = path
        try:
            model = onnx.load(str(path))
            if replace_custom_grid_samples(model):
                log.info("%s: custom 3-D grid sample rewritten into standard ONNX ops", path.name)
            self.session = onnxruntime.InferenceSession(model.SerializeToString(), providers=providers)
        except CheckpointsError:
            raise
        except Exception as error:  # onnx / onnxruntime raise their own exception types
            raise CheckpointsError(f"cannot load {path} with ONNX Runtime: {error}") from error
        expected_inputs, expected_outputs = IO_NAMES[network]
        inputs = tuple(i.name for i in self.session.get_inputs())
        outputs = tuple(o.name for o in self.session.get_outputs())
        if set(inputs) != set(expected_inputs) or not set(expected_outputs) <= set(outputs):
            raise CheckpointsError(
                f"{path}: expected inputs {list(expected_inputs)} and outputs {list(expected_outputs)}, "
                f"found inputs {list(inputs)} and outputs {list(outputs)}"
            )
        self.output_names = list(expected_outputs)
        self.input_types = {i.name: NUMPY_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()}
        self.batch_one = all(i.shape and i.shape[0] == 1 for i in self.session.get_inputs())
        self.provider = self.session.get_providers()[0]

    def input_shape(self, name: str) -> list[int | str | None]:
        return next(i.shape for i in self.session.get_inputs() if i.name == name)

    def output_shape(self, name: str) -> list[int | str | None]:
        return next(o.shape for o in self.session.get_outputs() if o.name == name)

    def __call__(self, **inputs: torch.Tensor) -> list[np.ndarray]:
        arrays = {name: t.detach().to("cpu").numpy().astype(self.input_types[name], copy=False) for name, t in inputs.items()}
        batch = next(iter(arrays.values())).shape[0]
        if not self.batch_one or batch == 1:
            return [np.asarray(o, np.float32) for o in self.session.run(self.output_names, arrays)]
        rows = [self.session.run(self.output_names, {n: a[i : i + 1] for n, a in arrays.items()}) for i in range(batch)]
        return [np.concatenate([np.asarray(row[k], np.float32) for row in rows]) for k in range(len(self.output_names))]


def _static(shape: list[int | str | None], index: int, name: str) -> int:
    value = shape[index] if len(shape) > index else None
    if not isinstance(value, int):
        raise CheckpointsError(f"{name}: dimension {index} must be static, found {value!r}")
    return value


class OnnxNetworks:
    """DittoNetworks on ONNX Runtime sessions (thread-safe: sessions allow concurrent runs)."""

    runtime = "onnx"

    def __init__(self, sessions: dict[str, OnnxNetwork], hubert: HubertOnnx, device: torch.device) -> None:
        self._sessions = sessions
        self._hubert = hubert
        self.device = device
        self.dtype = torch.float32
        pred = sessions["appearance_extractor"].output_shape("pred")
        cond = sessions["lmdm"].input_shape("cond")
        image = sessions["decoder"].output_shape("output")
        self.sizes = NetworkSizes(
            feature_channels=_static(pred, 1, "appearance_extractor pred"),
            feature_depth=_static(pred, 2, "appearance_extractor pred"),
            feature_size=_static(pred, 3, "appearance_extractor pred"),
            warped_channels=_static(sessions["warp_network"].output_shape("out"), 1, "warp_network out"),
            image_size=_static(image, 2, "decoder output"),
            num_bins=_static(sessions["motion_extractor"].output_shape("pitch"), 1, "motion_extractor pitch"),
            motion_dim=_static(sessions["lmdm"].input_shape("x"), 2, "lmdm x"),
            cond_dim=_static(cond, 2, "lmdm cond"),
            seq_frames=_static(cond, 1, "lmdm cond"),
        )
        self.motion_dim = self.sizes.motion_dim
        self.cond_dim = self.sizes.cond_dim
        self.seq_frames = self.sizes.seq_frames

    @classmethod
    def load(cls, root: Path, *, device: str = "auto", precision: str | None = None) -> OnnxNetworks:
        if precision not in (None, "fp32"):
            raise CheckpointsError("the ONNX runtime runs the official fp32 files; use precision fp32 (or none)")
        files = require_checkpoints(root, "onnx")
        torch_device = resolve_device(device)
        providers = onnx_providers(torch_device)
        sessions = {
            name: OnnxNetwork(name, path, providers) for name, path in files.networks.items() if name != "hubert"
        }
        hubert = HubertOnnx(files.networks["hubert"], torch_device)
        log.info("Ditto networks loaded from %s (onnxruntime, %s)", root, providers[0])
        return cls(sessions, hubert, torch_device)

    def _out(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device)

    def hubert(self, audio: torch.Tensor) -> torch.Tensor:
        return self._hubert(audio)

    def lmdm(
        self, x: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor, time: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pred_noise, x_start = self._sessions["lmdm"](x=x, cond_frame=cond_frame, cond=cond, time_cond=time.to(torch.int64))
        return self._out(pred_noise), self._out(x_start)

    def appearance(self, image: torch.Tensor) -> torch.Tensor:
        return self._out(self._sessions["appearance_extractor"](image=image)[0])

    def motion(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self._sessions["motion_extractor"](image=image)
        batch = image.shape[0]
        return {name: self._out(value.reshape(batch, -1)) for name, value in zip(MOTION_OUTPUTS, outputs, strict=True)}

    def warp(self, feature_3d: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        return self._out(self._sessions["warp_network"](feature_3d=feature_3d, kp_source=kp_source, kp_driving=kp_driving)[0])

    def decode(self, feature: torch.Tensor) -> torch.Tensor:
        return self._out(self._sessions["decoder"](feature=feature)[0])

    def stitch(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        return self._out(self._sessions["stitch_network"](kp_source=kp_source, kp_driving=kp_driving)[0])

    def describe(self) -> list[ModelDescription]:
        described = [
            ModelDescription(f"ditto/{name}", "onnxruntime", session.provider, "fp32")
            for name, session in self._sessions.items()
        ]
        described.append(ModelDescription("ditto/hubert", "onnxruntime", self._hubert.provider, "fp32"))
        return described
