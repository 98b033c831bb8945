"""Device and precision choices, and the HuBERT ONNX session, shared by every runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from avatar_server.renderers.ditto.checkpoints import CheckpointsError


def resolve_device(device: str) -> torch.device:
    """"auto" -> the first CUDA device when there is one, else CPU; "cuda" / "cuda:N" must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointsError(f"Ditto device {device!r} asked for, but this PyTorch sees no CUDA device")
    if resolved.type not in ("cpu", "cuda"):
        raise CheckpointsError(f"unsupported Ditto device {device!r}: use auto, cpu, cuda or cuda:N")
    return resolved


def resolve_dtype(precision: str | None, device: torch.device) -> torch.dtype:
    """None -> fp16 on CUDA, fp32 on CPU; "fp16" on a CPU is refused (no fast kernels there)."""
    if precision is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        if device.type != "cuda":
            raise CheckpointsError("Ditto precision fp16 needs a CUDA device; use fp32 on CPU")
        return torch.float16
    raise CheckpointsError(f"unknown Ditto precision {precision!r}: use fp16 or fp32")


def onnx_providers(device: torch.device) -> list[str]:
    """ONNX Runtime providers for a device: CUDA first when asked for and installed, CPU always."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class HubertOnnx:
    """The streaming HuBERT ONNX (input_values (1, samples) -> encoding_out (frames, 1024)), run per batch row."""

    def __init__(self, path: Path, device: torch.device) -> None:
        import onnxruntime

        self.path = path
        self.device = device
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=onnx_providers(device))
        except Exception as error:  # onnxruntime raises its own exception types
            raise CheckpointsError(f"cannot load {path} with ONNX Runtime: {error}") from error
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != ["input_values"]:
            raise CheckpointsError(f"{path}: expected one input 'input_values', found {inputs}")
        self.output_name = self.session.get_outputs()[0].name
        self.provider = self.session.get_providers()[0]

    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        rows = audio.detach().to("cpu", torch.float32).numpy()
        features = []
        for row in rows:
            (encoding,) = self.session.run([self.output_name], {"input_values": row[None, :]})
            features.append(encoding.reshape(-1, encoding.shape[-1]))
        return torch.from_numpy(np.stack(features)).to(self.device)
