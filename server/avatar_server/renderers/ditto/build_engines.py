"""Builds TensorRT 10+ engines for this GPU from the official ditto_onnx/*.onnx (`make engines`), no plugin needed.

The warp network's custom 3-D grid sample is rewritten into standard ONNX ops first (onnx_graph.py)
and those ops are pinned to fp32, so the TensorRT 8.6 plugin library is never loaded. Precisions
follow the official conversion: fp16 for appearance, warp, decoder and stitching; fp32 for the
motion extractor and the LMDM. Engines land in checkpoints/ditto_trt_sm<XY>_trt<M.m>/ under the
official file names, where the TensorRT runtime looks for them. HuBERT stays on ONNX Runtime.

    python -m avatar_server.renderers.ditto.build_engines --checkpoints checkpoints [--max-batch 8]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from avatar_server.renderers.ditto.checkpoints import (
    NETWORKS,
    ONNX_FILES,
    CheckpointsError,
    engine_dir_name,
    engine_file_name,
    engine_precision,
    require_checkpoints,
)
from avatar_server.renderers.ditto.onnx_graph import replace_custom_grid_samples

log = logging.getLogger(__name__)

GRID_SAMPLE_PREFIX = "grid_sample_3d_"
OPTIMIZATION_LEVEL = 5  # as the official conversion
WORKSPACE_BYTES = 8 << 30


@dataclass(frozen=True)
class BuildPlan:
    """What to build for one network: source ONNX, target engine, precision and input shape ranges."""

    network: str
    onnx_path: Path
    engine_path: Path
    fp16: bool
    profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)


def input_shapes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Graph input name -> dims (ints for static, names for dynamic ones)."""
    initializers = {init.name for init in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
    return shapes


def profile_for(shapes: dict[str, list[int | str]], *, max_batch: int, opt_batch: int | None = None) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Optimisation profile: static dims fixed; a dynamic first (batch) dim spans 1..max_batch.
    Any other dynamic dim is an error (the Ditto networks have none but HuBERT's audio length)."""
    profile = {}
    opt_batch = min(opt_batch or max_batch, max_batch)
    for name, dims in shapes.items():
        low, opt, high = [], [], []
        for axis, dim in enumerate(dims):
            if isinstance(dim, int) and dim > 0:
                low.append(dim), opt.append(dim), high.append(dim)
            elif axis == 0:
                low.append(1), opt.append(opt_batch), high.append(max_batch)
            else:
                raise CheckpointsError(f"input {name} has a dynamic dimension {axis} ({dim!r}) that no profile covers")
        profile[name] = (tuple(low), tuple(opt), tuple(high))
    return profile


def plan_builds(
    root: Path, out_dir: Path, *, precision: str = "fp16", max_batch: int = 8, networks: Sequence[str] | None = None
) -> list[BuildPlan]:
    """One BuildPlan per network (HuBERT excluded: it runs with ONNX Runtime)."""
    require_checkpoints(root, "onnx")
    plans = []
    for network in networks or [n for n in NETWORKS if n != "hubert"]:
        onnx_path = Path(root) / ONNX_FILES[network]
        model = onnx.load(str(onnx_path), load_external_data=False)
        plans.append(
            BuildPlan(
                network=network,
                onnx_path=onnx_path,
                engine_path=Path(out_dir) / engine_file_name(network, precision),
                fp16=engine_precision(network, precision) == "fp16",
                profile=profile_for(input_shapes(model), max_batch=max_batch),
            )
        )
    return plans


def prepared_onnx(plan: BuildPlan) -> bytes:
    """The ONNX bytes handed to the parser: custom grid samples replaced by standard ops."""
    model = onnx.load(str(plan.onnx_path))
    replaced = replace_custom_grid_samples(model, volumetric_standard=True)
    if replaced:
        log.info("%s: %d custom grid sample(s) rewritten", plan.network, replaced)
    return model.SerializeToString()


def configure(trt: Any, builder: Any, network: Any, plan: BuildPlan) -> Any:
    """Builder config for one plan (TensorRT 10 API): precision flags, fp32 pins on the grid-sample
    arithmetic, optimisation level, workspace and the shape profile."""
    config = builder.create_builder_config()
    config.builder_optimization_level = OPTIMIZATION_LEVEL
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if plan.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        for index in range(network.num_layers):
            layer = network.get_layer(index)
            floating = layer.num_outputs and layer.get_output(0).dtype in (trt.float32, trt.float16)
            if GRID_SAMPLE_PREFIX in layer.name and floating:
                layer.precision = trt.float32  # sampling coordinates and weights need fp32
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in plan.profile.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    return config


def build(plan: BuildPlan, trt: Any, logger: Any) -> None:
    """Parses, configures and serialises one engine to plan.engine_path."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(prepared_onnx(plan)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckpointsError(f"TensorRT could not parse {plan.onnx_path}: {errors}")
    serialized = builder.build_serialized_network(network, configure(trt, builder, network, plan))
    if serialized is None:
        raise CheckpointsError(f"TensorRT could not build an engine from {plan.onnx_path}")
    plan.engine_path.parent.mkdir(parents=True, exist_ok=True)
    plan.engine_path.write_bytes(bytes(serialized))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    parser.add_argument("--out", type=Path, default=None, help="engine folder (default: per GPU and TensorRT version)")
    parser.add_argument("--precision", choices=("fp16", "fp32"), default="fp16")
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch (used when the ONNX batch is dynamic)")
    parser.add_argument("--force", action="store_true", help="rebuild engines that exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        import tensorrt as trt
        import torch
    except ImportError as error:
        print(f"make engines needs tensorrt (10+) and torch with CUDA: {error}", file=sys.stderr)
        return 2
    from avatar_server.renderers.ditto.runtimes.tensorrt_runtime import require_tensorrt_version

    try:
        require_tensorrt_version(trt.__version__)
        if not torch.cuda.is_available():
            raise CheckpointsError("make engines needs a CUDA GPU (engines are built for the local GPU)")
        out = args.out or args.checkpoints / engine_dir_name(torch.cuda.get_device_capability(), trt.__version__)
        logger = trt.Logger(trt.Logger.WARNING)
        for plan in plan_builds(args.checkpoints, out, precision=args.precision, max_batch=args.max_batch):
            if plan.engine_path.exists() and not args.force:
                print(f"{plan.engine_path} exists, skipped")
                continue
            print(f"building {plan.engine_path} ({'fp16' if plan.fp16 else 'fp32'})")
            build(plan, trt, logger)
    except CheckpointsError as error:
        print(error.message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
