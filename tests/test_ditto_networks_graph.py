"""The custom 3-D grid-sample op, rewritten into standard ONNX ops, computes what torch's grid_sample does."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from avatar_server.renderers.ditto.checkpoints import CheckpointsError  # noqa: E402
from avatar_server.renderers.ditto.onnx_graph import (  # noqa: E402
    custom_grid_sample_nodes,
    replace_custom_grid_samples,
)
from onnx import TensorProto, helper  # noqa: E402


def _custom_model(align_corners: int, mode: object = 0, domain: str = "plugin", op: str = "GridSample3D") -> onnx.ModelProto:
    """A graph like the official warp network's: X, grid -> custom grid sample -> x2."""
    sample = helper.make_node(
        op, ["X", "grid"], ["sampled"], domain=domain, name="GridSample_0",
        interpolation_mode=mode, padding_mode=0, align_corners=align_corners,
    )
    double = helper.make_node("Add", ["sampled", "sampled"], ["Y"])
    graph = helper.make_graph(
        [sample, double], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", "c", "d", "h", "w"]),
         helper.make_tensor_value_info("grid", TensorProto.FLOAT, ["n", "d2", "h2", "w2", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n", "c", "d2", "h2", "w2"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])


@pytest.mark.parametrize("align_corners", [0, 1])
def test_rewritten_grid_sample_matches_torch(align_corners: int) -> None:
    model = _custom_model(align_corners)
    with pytest.raises(Exception):  # onnxruntime has no kernel for the plugin op
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert replace_custom_grid_samples(model) == 1
    assert custom_grid_sample_nodes(model) == [] and {o.domain for o in model.opset_import} == {""}
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    volume = torch.randn(3, 4, 5, 6, 7, generator=generator)
    grid = torch.rand(3, 2, 8, 9, 3, generator=generator) * 2.6 - 1.3  # some samples fall outside
    (ours,) = session.run(None, {"X": volume.numpy(), "grid": grid.numpy()})
    expected = 2 * torch.nn.functional.grid_sample(volume, grid, align_corners=bool(align_corners))
    assert ours.shape == (3, 4, 2, 8, 9)
    np.testing.assert_allclose(ours, expected.numpy(), atol=1e-5)


def test_unsupported_sampling_modes_are_refused_by_name() -> None:
    model = _custom_model(0, mode="nearest")
    with pytest.raises(CheckpointsError, match="GridSample_0.*nearest"):
        replace_custom_grid_samples(model)


def test_a_plugin_op_in_the_default_domain_is_rewritten_too() -> None:
    model = _custom_model(0, domain="", op="GridSample3D")
    assert replace_custom_grid_samples(model) == 1


def test_standard_volumetric_grid_sample_is_rewritten_only_for_tensorrt() -> None:
    model = _custom_model(0, domain="", op="GridSample")
    del model.graph.node[0].attribute[:]
    assert replace_custom_grid_samples(model) == 0  # ONNX Runtime runs the standard op itself
    assert replace_custom_grid_samples(model, volumetric_standard=True) == 1
