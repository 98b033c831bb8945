"""Rewrites the custom 3-D grid-sample op of warp_network.onnx into standard ONNX ops.

The official warp network holds its two volumetric grid samples as a custom op that only the
TensorRT 8.6 plugin (libgrid_sample_3d_plugin.so) implements; ONNX Runtime has no kernel for it
and TensorRT 10's own GridSample layer is 2-D only. Replacing each such node with a trilinear
interpolation made of Shape/Slice/Floor/GatherElements/arithmetic gives a graph that ONNX Runtime
(CPU or CUDA) and the TensorRT ONNX parser both run, with no plugin library.

Supported: bilinear (trilinear) interpolation, zeros padding, align_corners 0 or 1, float32
tensors X (N, C, D, H, W) and grid (N, d, h, w, 3) with xyz order, as torch's grid_sample.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from avatar_server.renderers.ditto.checkpoints import CheckpointsError

STANDARD_DOMAINS = ("", "ai.onnx")
BILINEAR_NAMES = {"bilinear", "linear", "trilinear", 0}
ZEROS_NAMES = {"zeros", "zero", "constant", 0}


def is_custom_grid_sample(node: onnx.NodeProto) -> bool:
    """True for a grid-sample op that is not the standard one (the plugin op, whatever its domain)."""
    standard = node.domain in STANDARD_DOMAINS and node.op_type == "GridSample"
    return "gridsample" in node.op_type.lower() and not standard


def custom_grid_sample_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The custom grid-sample nodes of a model's main graph."""
    return [node for node in model.graph.node if is_custom_grid_sample(node)]


def _volumetric_standard_grid_samples(model: onnx.ModelProto) -> set[str]:
    """Output names of standard GridSample nodes whose grid is 5-D (TensorRT's GridSample is 2-D only)."""
    candidates = [n for n in model.graph.node if n.op_type == "GridSample" and n.domain in STANDARD_DOMAINS]
    if not candidates:
        return set()
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {
        value.name: len(value.type.tensor_type.shape.dim)
        for value in [*inferred.graph.value_info, *inferred.graph.input]
        if value.type.tensor_type.HasField("shape")
    }
    return {n.output[0] for n in candidates if ranks.get(n.input[1]) == 5}


def _attribute(node: onnx.NodeProto, *names: str, default: object) -> object:
    for attribute in node.attribute:
        if attribute.name in names:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


class _Builder:
    """Emits uniquely named nodes and constants for one replaced op."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}/{hint}_{self.count}"

    def const(self, value: np.ndarray, hint: str = "const") -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attributes: object) -> str:
        output = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attributes))
        return output


def _trilinear(builder: _Builder, volume: str, grid: str, output: str, align_corners: bool) -> None:
    b = builder
    i64 = lambda *values: b.const(np.array(values, dtype=np.int64), "i64")  # noqa: E731
    f32 = lambda value: b.const(np.array([value], dtype=np.float32), "f32")  # noqa: E731

    volume_shape = b.op("Shape", [volume])
    grid_shape = b.op("Shape", [grid])
    dims = {
        axis: b.op("Slice", [volume_shape, i64(index), i64(index + 1)], f"dim_{axis}")
        for index, axis in enumerate("NCDHW")
    }
    sizes = {axis: b.op("Cast", [dims[axis]], f"size_{axis}", to=TensorProto.FLOAT) for axis in "DHW"}
    one = f32(1.0)
    zero = f32(0.0)
    half = f32(0.5)

    # grid (N, d, h, w, 3) -> coordinates (N, 1, P) per axis, in voxel units
    flat_grid = b.op("Reshape", [grid, i64(0, -1, 3)], "flat_grid")
    channels_first = b.op("Transpose", [flat_grid], "grid_t", perm=[0, 2, 1])
    coords, lower, upper_limit = {}, {}, {}
    for index, axis in zip(range(3), "WHD", strict=True):  # grid order is x (W), y (H), z (D)
        g = b.op("Slice", [channels_first, i64(index), i64(index + 1), i64(1)], f"g{axis}")
        size = sizes[axis]
        size_minus_one = b.op("Sub", [size, one])
        if align_corners:
            position = b.op("Mul", [b.op("Mul", [b.op("Add", [g, one]), half]), size_minus_one])
        else:
            position = b.op("Mul", [b.op("Sub", [b.op("Mul", [b.op("Add", [g, one]), size]), one]), half])
        coords[axis] = position
        lower[axis] = b.op("Floor", [position], f"floor_{axis}")
        upper_limit[axis] = size_minus_one

    flat_volume = b.op("Reshape", [volume, i64(0, 0, -1)], "flat_volume")  # (N, C, D*H*W)
    expand_to_channels = b.op("Concat", [i64(1), dims["C"], i64(1)], axis=0)
    accumulated = None
    for corner in itertools.product((0, 1), repeat=3):
        weight, index, valid = None, None, None
        for offset, axis in zip(corner, "DHW", strict=True):
            at = lower[axis] if offset == 0 else b.op("Add", [lower[axis], one])
            fraction = b.op("Sub", [coords[axis], lower[axis]])
            axis_weight = b.op("Sub", [one, fraction]) if offset == 0 else fraction
            inside = b.op(
                "Not", [b.op("Or", [b.op("Less", [at, zero]), b.op("Greater", [at, upper_limit[axis]])])]
            )
            clamped = b.op("Min", [b.op("Max", [at, zero]), upper_limit[axis]])
            weight = axis_weight if weight is None else b.op("Mul", [weight, axis_weight])
            valid = inside if valid is None else b.op("And", [valid, inside])
            if index is None:
                index = clamped
            else:
                index = b.op("Add", [b.op("Mul", [index, sizes[axis]]), clamped])
        weight = b.op("Mul", [weight, b.op("Cast", [valid], to=TensorProto.FLOAT)])
        gather_index = b.op("Expand", [b.op("Cast", [index], to=TensorProto.INT64), expand_to_channels])
        sampled = b.op("GatherElements", [flat_volume, gather_index], axis=2)
        term = b.op("Mul", [sampled, weight])
        accumulated = term if accumulated is None else b.op("Add", [accumulated, term])

    grid_spatial = b.op("Slice", [grid_shape, i64(1), i64(4)], "grid_spatial")
    output_shape = b.op("Concat", [dims["N"], dims["C"], grid_spatial], axis=0)
    b.nodes.append(helper.make_node("Reshape", [accumulated, output_shape], [output], name=f"{b.prefix}/out"))


def replace_custom_grid_samples(model: onnx.ModelProto, *, volumetric_standard: bool = False) -> int:
    """Replaces every custom grid-sample node in place (and, with `volumetric_standard`, standard
    GridSample nodes on 5-D grids, for TensorRT); returns how many were replaced."""
    graph = model.graph
    standard_5d = _volumetric_standard_grid_samples(model) if volumetric_standard else set()
    rewritten: list[onnx.NodeProto] = []
    replaced = 0
    for node in list(graph.node):
        if not is_custom_grid_sample(node) and not (node.output and node.output[0] in standard_5d):
            rewritten.append(node)
            continue
        mode = _attribute(node, "mode", "interpolation_mode", default="bilinear")
        padding = _attribute(node, "padding_mode", default="zeros")
        align = bool(_attribute(node, "align_corners", default=0))
        if mode not in BILINEAR_NAMES or padding not in ZEROS_NAMES:
            raise CheckpointsError(
                f"grid-sample node {node.name or node.op_type!r}: mode {mode!r} / padding {padding!r} "
                "not supported (only bilinear with zeros padding)"
            )
        if len(node.input) < 2 or len(node.output) != 1:
            raise CheckpointsError(f"grid-sample node {node.name or node.op_type!r} has unexpected inputs/outputs")
        builder = _Builder(f"grid_sample_3d_{replaced}")
        _trilinear(builder, node.input[0], node.input[1], node.output[0], align)
        rewritten.extend(builder.nodes)
        graph.initializer.extend(builder.initializers)
        replaced += 1
    if replaced:
        del graph.node[:]
        graph.node.extend(rewritten)
        used_domains = {node.domain for node in graph.node}
        kept = [entry for entry in model.opset_import if entry.domain in STANDARD_DOMAINS or entry.domain in used_domains]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    return replaced
