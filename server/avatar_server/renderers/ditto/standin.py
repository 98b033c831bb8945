"""Writes STAND-IN Ditto checkpoints: the official layout and tensor names, random weights (renders noise).

`full` stand-ins have exactly the official tensor names, shapes and dtypes (for GPU benchmarks: the
cost is the real one); `tiny` ones keep the names, the file layout and every outer width but shrink
inner widths and some kernels, so a whole frame runs on a CPU in a fraction of a second (tiny shapes
are NOT the official shapes). The HuBERT audio encoder has the release's ONNX inputs and outputs and,
in `full`, HuBERT-large's size (networks/hubert_standin.py); the face registration models (det_10g,
2d106det, landmark203) have the release's names and I/O with small bodies (standin_aux.py). The cfg
pickles have the release's file names and key layout. Nothing here resembles the trained networks.
"""

from __future__ import annotations

import io
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from avatar_server.renderers.ditto import checkpoints as layout
from avatar_server.renderers.ditto.loaders import SPECS
from avatar_server.renderers.ditto.networks import hubert_standin
from avatar_server.renderers.ditto.networks.decoder import SpadeDecoder
from avatar_server.renderers.ditto.standin_aux import aux_standins

StandInSize = Literal["tiny", "full"]
ONNX_OPSET = 17
CUSTOM_GRID_SAMPLE = "ditto_standin::GridSample3D"  # the official op's exact domain/name are not public

README = """STAND-IN Ditto checkpoints ({size}), written by `avatar-checkpoints standin`.
Random weights: the avatar renders as noise. {shapes}
Real weights: git lfs install && git clone {repo} <dir>
"""


def is_standin(root: Path, size: StandInSize | None = None) -> bool:
    """True when `root` holds stand-in checkpoints written here (of `size`, when given)."""
    marker = Path(root) / "STANDIN.txt"
    if not marker.is_file():
        return False
    first_line = marker.read_text(errors="replace").splitlines()[:1]
    return bool(first_line) and (size is None or f"({size})" in first_line[0])


def build_standin_networks(size: StandInSize, seed: int = 0) -> dict[str, nn.Module]:
    """The six networks with random weights in the given size (decoder still spectral-normed)."""
    torch.manual_seed(seed)
    modules = {}
    for network, spec in SPECS.items():
        module = spec.build(spec.tiny if size == "tiny" else spec.full).eval()
        if isinstance(module, SpadeDecoder):
            _settle_spectral_vectors(module)
        modules[network] = module
    return modules


def _settle_spectral_vectors(decoder: SpadeDecoder, iterations: int = 15) -> None:
    """Power-iterates the stored u, v so sigma is the top singular value, as trained files have it."""
    with torch.no_grad():
        for block in decoder.residual_blocks():
            for conv in block.spectral_convs():
                matrix = conv.weight_orig.flatten(1)
                v = torch.nn.functional.normalize(torch.randn(matrix.shape[1]), dim=0)
                for _ in range(iterations):
                    u = torch.nn.functional.normalize(matrix @ v, dim=0)
                    v = torch.nn.functional.normalize(matrix.t() @ u, dim=0)
                conv.weight_u.copy_(u)
                conv.weight_v.copy_(v)


def official_container(network: str, state_dict: dict[str, torch.Tensor]) -> Any:
    """Wraps a state dict the way the official file stores it."""
    if network == "stitch_network":
        return {"retarget_shoulder": {f"module.{key}": value for key, value in state_dict.items()}}
    if network == "lmdm":
        return {"model_state_dict": state_dict}
    return state_dict


def _grid_sample_symbolic(g: Any, volume: Any, grid: Any, mode: Any, padding: Any, align: Any) -> Any:
    out = g.op(CUSTOM_GRID_SAMPLE, volume, grid, interpolation_mode_i=0, padding_mode_i=0, align_corners_i=0)
    volume_sizes, grid_sizes = volume.type().sizes(), grid.type().sizes()
    if volume_sizes and grid_sizes:
        out.setType(volume.type().with_sizes([volume_sizes[0], volume_sizes[1], *grid_sizes[1:4]]))
    return out


def _example_inputs(network: str, modules: dict[str, nn.Module]) -> tuple[tuple[torch.Tensor, ...], list[str], list[str]]:
    app = modules["appearance_extractor"].size
    kp = torch.rand(1, 21, 3) - 0.5
    lmdm_size = modules["lmdm"].size
    image = torch.rand(1, 3, 256, 256)
    table = {
        "appearance_extractor": ((image,), ["image"], ["pred"]),
        "motion_extractor": ((image,), ["image"], ["pitch", "yaw", "roll", "t", "exp", "scale", "kp"]),
        "warp_network": (
            (torch.randn(1, app.volume_channels, app.volume_depth, 64, 64), kp, kp + 0.01),
            ["feature_3d", "kp_source", "kp_driving"],
            ["out"],
        ),
        "decoder": ((torch.randn(1, modules["decoder"].size.input_channels, 64, 64),), ["feature"], ["output"]),
        "stitch_network": ((kp, kp + 0.01), ["kp_source", "kp_driving"], ["out"]),
        "lmdm": (
            (
                torch.randn(1, lmdm_size.seq_frames, lmdm_size.motion_dim),
                torch.randn(1, lmdm_size.motion_dim),
                torch.randn(1, lmdm_size.seq_frames, lmdm_size.cond_dim),
                torch.tensor([999], dtype=torch.int64),
            ),
            ["x", "cond_frame", "cond", "time_cond"],
            ["pred_noise", "x_start"],
        ),
    }
    return table[network]


def export_onnx(module: nn.Module, inputs: tuple[torch.Tensor, ...], input_names: list[str],
                output_names: list[str], dynamic_axes: dict[str, dict[int, str]] | None = None,
                path: Path | None = None) -> bytes:
    """TorchScript ONNX export at batch 1 (like the official files); 5-D grid samples become the custom op.

    Returns the model's bytes, or writes them to `path` (and returns b""), which saves one copy of
    a large model in memory. Initializers keep the module's parameter names (no constant folding)."""
    torch.onnx.register_custom_op_symbolic("::grid_sampler", _grid_sample_symbolic, ONNX_OPSET)
    target: Any = io.BytesIO() if path is None else str(path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, inputs, target, input_names=input_names, output_names=output_names,
            opset_version=ONNX_OPSET, dynamo=False, dynamic_axes=dynamic_axes, do_constant_folding=False,
        )
    return target.getvalue() if path is None else b""


def _cfg(cond_dim: int, *, runtime: str, online: bool) -> dict[str, Any]:
    """A cfg dict in the release's key layout (the one the authors' parse_cfg reads)."""
    trt = runtime == "trt"

    def entry(network: str) -> dict[str, Any]:
        path = layout.PTH_FILES[network].split("/", 1)[1]  # relative to ditto_pytorch/
        if trt:
            path = layout.engine_file_name(network, "fp16")
        return {"model_path": path, "device": "cuda"}

    def aux(relative: str, engine: str) -> dict[str, Any]:
        return {"model_path": engine if trt else relative.split("/", 1)[1], "device": "cuda"}

    return {
        "base_cfg": {
            "insightface_det_cfg": aux(layout.DETECTOR_AUX, "det_10g_fp16.engine"),
            "landmark106_cfg": aux(layout.LANDMARK106_AUX, "2d106det_fp16.engine"),
            "landmark203_cfg": aux(layout.LANDMARK203_AUX, "landmark203_fp16.engine"),
            "landmark478_cfg": {"blaze_face_model_path": "", "face_mesh_model_path": "", "device": "cuda",
                                "task_path": layout.FACE_LANDMARKER_AUX.split("/", 1)[1]},
            "appearance_extractor_cfg": entry("appearance_extractor"),
            "motion_extractor_cfg": entry("motion_extractor"),
            "stitch_network_cfg": entry("stitch_network"),
            "warp_network_cfg": entry("warp_network"),
            "decoder_cfg": entry("decoder"),
            "hubert_cfg": aux(layout.HUBERT_AUX, "hubert_fp32.engine"),
        },
        "audio2motion_cfg": {
            **entry("lmdm"),
            "motion_feat_dim": 265,
            "audio_feat_dim": cond_dim,
            "seq_frames": 80,
            "use_emo": True,
            "use_sc": True,
            "use_eye_open": True,
            "use_eye_ball": True,
            "w2f_type": "hubert",
        },
        # the release's run options are not public; these are the authors' code defaults
        "default_kwargs": {"online_mode": online, "sampling_timesteps": 50, "overlap_v2": 10},
    }


def write_hubert(path: Path, size: StandInSize, seed: int = 0) -> None:
    """Writes hubert_streaming_fix_kv.onnx: `input_values` (1, samples) -> `encoding_out` (frames, 1024)."""
    torch.manual_seed(seed)
    module = hubert_standin.HubertStandIn(hubert_standin.FULL if size == "full" else hubert_standin.TINY).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(module, (torch.zeros(1, 6480),), ["input_values"], ["encoding_out"],
                dynamic_axes={"input_values": {1: "samples"}, "encoding_out": {0: "frames"}}, path=path)


def write_standin(root: Path, size: StandInSize = "tiny", *, seed: int = 0, onnx: bool = True) -> list[Path]:
    """Writes a complete stand-in checkpoints tree under `root`; returns the files written."""
    if size not in ("tiny", "full"):
        raise ValueError(f"stand-in size must be tiny or full, not {size!r}")
    root = Path(root)
    modules = build_standin_networks(size, seed)
    written: list[Path] = []

    def save_bytes(relative: str, data: bytes) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)

    for network, module in modules.items():
        buffer = io.BytesIO()
        torch.save(official_container(network, module.state_dict()), buffer)
        save_bytes(layout.PTH_FILES[network], buffer.getvalue())

    cond_dim = modules["lmdm"].size.cond_dim
    for relative, runtime, online in (
        (layout.CFG_ONLINE, "trt", True),
        (layout.CFG_OFFLINE, "trt", False),
        (layout.CFG_PYTORCH, "pytorch", False),
    ):
        save_bytes(relative, pickle.dumps(_cfg(cond_dim, runtime=runtime, online=online)))

    write_hubert(root / layout.HUBERT_AUX, size, seed)
    written.append(root / layout.HUBERT_AUX)
    torch.manual_seed(seed + 1)
    aux_files = {Path(rel).stem: rel for rel in layout.REGISTRATION_AUX_FILES}
    for name, (module, example, input_names, output_names, axes) in aux_standins().items():
        save_bytes(aux_files[name], export_onnx(module, (example,), input_names, output_names, axes))
    if onnx:
        modules["decoder"].fold_spectral_norm()
        for network, module in modules.items():
            inputs, input_names, output_names = _example_inputs(network, modules)
            save_bytes(layout.ONNX_FILES[network], export_onnx(module, inputs, input_names, output_names))
        shutil.copyfile(root / layout.HUBERT_AUX, root / layout.ONNX_FILES["hubert"])
        written.append(root / layout.ONNX_FILES["hubert"])

    shapes = "Tensor names and shapes are the official ones." if size == "full" else (
        "Tensor names are the official ones; widths are reduced (tiny != official shapes)."
    )
    save_bytes("STANDIN.txt", README.format(size=size, shapes=shapes, repo=layout.HUGGINGFACE_REPO).encode())
    return written
