"""The logic around the TensorRT runtime and `make engines`, tested without TensorRT (which cannot run here).

Engine naming and folders, version checks, profile and shape selection, missing-engine errors and
the builder choices. The builder test drives `configure` with a FAKE tensorrt module (labelled
below) that records calls: real TensorRT needs an NVIDIA GPU and NVIDIA's own package index.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from avatar_server.renderers.ditto import checkpoints as layout  # noqa: E402
from avatar_server.renderers.ditto.build_engines import (  # noqa: E402
    BuildPlan,
    configure,
    plan_builds,
    profile_for,
)
from avatar_server.renderers.ditto.checkpoints import CheckpointsError  # noqa: E402
from avatar_server.renderers.ditto.runtimes.tensorrt_runtime import (  # noqa: E402
    ShapeRange,
    TensorRTNetworks,
    batch_chunks,
    check_input_shapes,
    require_tensorrt_version,
    select_engine_dir,
)


def test_engine_files_use_the_official_names_and_precisions() -> None:
    assert layout.engine_file_name("warp_network", "fp16") == "warp_network_fp16.engine"
    assert layout.engine_file_name("lmdm", "fp16") == "lmdm_v0.4_hubert_fp32.engine"
    assert layout.engine_file_name("motion_extractor", "fp16") == "motion_extractor_fp32.engine"
    assert layout.engine_file_name("decoder", "fp32") == "decoder_fp32.engine"
    assert layout.engine_dir_name((9, 0), "10.7.0.23") == "ditto_trt_sm90_trt10.7"


def test_tensorrt_before_10_is_refused() -> None:
    require_tensorrt_version("10.0.1")
    require_tensorrt_version("10.13.2.6")
    with pytest.raises(CheckpointsError, match="8.6.1 is too old"):
        require_tensorrt_version("8.6.1")


def test_engine_folder_selection(tmp_path: Path) -> None:
    chosen = select_engine_dir(tmp_path, None, compute_capability=(8, 9), tensorrt_version="10.3.0")
    assert chosen == tmp_path / "ditto_trt_sm89_trt10.3"
    assert select_engine_dir(tmp_path, tmp_path / "mine", compute_capability=(8, 9), tensorrt_version="10.3") == (
        tmp_path / "mine"
    )
    (tmp_path / layout.PREBUILT_ENGINE_DIR).mkdir()
    with pytest.raises(CheckpointsError, match="TensorRT 8.6.1 and do not load in TensorRT 10.*make engines"):
        select_engine_dir(tmp_path, None, compute_capability=(9, 0), tensorrt_version="10.7")


def test_missing_engines_are_named_with_the_build_command(tmp_path: Path) -> None:
    engines = tmp_path / "ditto_trt_sm90_trt10.7"
    engines.mkdir()
    (engines / "decoder_fp16.engine").write_bytes(b"x")
    (tmp_path / layout.ONNX_FILES["hubert"]).parent.mkdir(parents=True)
    (tmp_path / layout.ONNX_FILES["hubert"]).write_bytes(b"x")
    with pytest.raises(CheckpointsError) as caught:
        layout.require_checkpoints(tmp_path, "tensorrt", engine_dir=engines, precision="fp16")
    message = caught.value.message
    assert "missing ditto_trt_sm90_trt10.7/warp_network_fp16.engine" in message
    assert "missing ditto_trt_sm90_trt10.7/lmdm_v0.4_hubert_fp32.engine" in message
    assert "decoder_fp16" not in message and "make engines" in message


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_tensorrt_runtime_without_tensorrt_says_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(CheckpointsError, match="needs the tensorrt Python package"):
        TensorRTNetworks.load(tmp_path)


def test_profiles_fix_static_dims_and_span_a_dynamic_batch() -> None:
    static = profile_for({"image": [1, 3, 256, 256]}, max_batch=8)
    assert static == {"image": ((1, 3, 256, 256),) * 3}
    dynamic = profile_for({"feature": ["batch", 256, 64, 64]}, max_batch=8, opt_batch=4)
    assert dynamic == {"feature": ((1, 256, 64, 64), (4, 256, 64, 64), (8, 256, 64, 64))}
    with pytest.raises(CheckpointsError, match="dynamic dimension 2"):
        profile_for({"cond": [1, 80, "width"]}, max_batch=1)


def test_input_shapes_are_checked_against_the_profile_and_batches_split() -> None:
    ranges = {"feature": ShapeRange((1, 256, 64, 64), (1, 256, 64, 64), (1, 256, 64, 64))}
    check_input_shapes("decoder", ranges, {"feature": (5, 256, 64, 64)})  # batch runs row by row
    with pytest.raises(ValueError, match=r"decoder: input feature shape \[2, 128, 64, 64\]"):
        check_input_shapes("decoder", ranges, {"feature": (2, 128, 64, 64)})
    with pytest.raises(CheckpointsError, match="no input 'image'"):
        check_input_shapes("decoder", ranges, {"image": (1, 3, 256, 256)})
    assert batch_chunks(5, 1) == [slice(i, i + 1) for i in range(5)]
    assert batch_chunks(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]


@pytest.fixture(scope="module")
def onnx_standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ditto_onnx/ folder of minimal graphs with the official input names and batch-1 shapes."""
    from avatar_server.renderers.ditto.runtimes.onnx_runtime import IO_NAMES
    from onnx import TensorProto, helper

    shapes = {
        "image": [1, 3, 256, 256], "feature_3d": [1, 2, 4, 64, 64], "kp_source": [1, 21, 3], "kp_driving": [1, 21, 3],
        "feature": [1, 4, 64, 64], "x": [1, 80, 265], "cond_frame": [1, 265], "cond": [1, 80, 1103], "time_cond": [1],
    }
    folder = tmp_path_factory.mktemp("ditto_onnx")
    for network, relative in layout.ONNX_FILES.items():
        inputs, outputs = IO_NAMES.get(network, (("input_values",), ("encoding_out",)))
        first = inputs[0]
        graph = helper.make_graph(
            [helper.make_node("Identity", [first], [name]) for name in outputs],
            network,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes.get(n, [1, "samples"])) for n in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        )
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(helper.make_model(graph), str(path))
    return folder


def test_build_plans_cover_every_network_but_hubert(onnx_standin: Path, tmp_path: Path) -> None:
    plans = {plan.network: plan for plan in plan_builds(onnx_standin, tmp_path, precision="fp16", max_batch=8)}
    assert set(plans) == set(layout.NETWORKS) - {"hubert"}
    assert {name for name, plan in plans.items() if plan.fp16} == {
        "appearance_extractor", "warp_network", "decoder", "stitch_network"
    }
    assert plans["lmdm"].engine_path == tmp_path / "lmdm_v0.4_hubert_fp32.engine"
    assert plans["warp_network"].profile["feature_3d"][2] == (1, 2, 4, 64, 64)  # batch-1 file: static profile


class FakeTrt:
    """FAKE tensorrt module (records builder calls; real TensorRT cannot run on this machine)."""

    float32, float16 = "float32", "float16"
    MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")
    BuilderFlag = SimpleNamespace(FP16="fp16", OBEY_PRECISION_CONSTRAINTS="obey")


class FakeLayer:
    def __init__(self, name: str, dtype: str) -> None:
        self.name, self.num_outputs, self.precision = name, 1, None
        self._output = SimpleNamespace(dtype=dtype)

    def get_output(self, index: int) -> SimpleNamespace:
        return self._output


class FakeBuilder:
    def __init__(self) -> None:
        self.config = SimpleNamespace(flags=[], profiles=[], pools={})
        self.config.set_flag = self.config.flags.append
        self.config.add_optimization_profile = self.config.profiles.append
        self.config.set_memory_pool_limit = self.config.pools.__setitem__

    def create_builder_config(self) -> SimpleNamespace:
        return self.config

    def create_optimization_profile(self) -> SimpleNamespace:
        profile = SimpleNamespace(shapes={})
        profile.set_shape = lambda name, low, opt, high: profile.shapes.__setitem__(name, (low, opt, high))
        return profile


def test_builder_config_pins_the_grid_sample_arithmetic_to_fp32() -> None:
    layers = [FakeLayer("conv_1", "float32"), FakeLayer("grid_sample_3d_0/mul_7", "float32"),
              FakeLayer("grid_sample_3d_0/cast_9", "int64")]
    network = SimpleNamespace(num_layers=len(layers), get_layer=layers.__getitem__)
    shapes = {"feature_3d": ((1, 32, 16, 64, 64),) * 3}
    builder = FakeBuilder()
    config = configure(FakeTrt, builder, network, BuildPlan("warp_network", Path("w.onnx"), Path("w.engine"), True, shapes))
    assert config.flags == ["fp16", "obey"] and config.builder_optimization_level == 5
    assert [layer.precision for layer in layers] == [None, "float32", None]
    assert config.profiles[0].shapes == shapes
    fp32_builder = FakeBuilder()
    configure(FakeTrt, fp32_builder, network, BuildPlan("lmdm", Path("l.onnx"), Path("l.engine"), False, {}))
    assert fp32_builder.config.flags == []
