"""Loading Ditto checkpoints in the official layout with the PyTorch and ONNX runtimes (tiny stand-ins, CPU).

Stand-ins have random weights (they render noise); tests check what can fail: every official file
name is loaded by its runtime, both runtimes compute the same thing from the same weights, and bad
files are refused with a message naming the problem.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from avatar_server.core.errors import StatusCode  # noqa: E402
from avatar_server.renderers.ditto import checkpoints as layout  # noqa: E402
from avatar_server.renderers.ditto.checkpoints_cli import main as checkpoints_cli  # noqa: E402
from avatar_server.renderers.ditto.config import ConfigError  # noqa: E402
from avatar_server.renderers.ditto.loaders import SPECS, load_network  # noqa: E402
from avatar_server.renderers.ditto.models import (  # noqa: E402
    CheckpointsError,
    load_ditto_config,
    load_networks,
)
from avatar_server.renderers.ditto.onnx_graph import custom_grid_sample_nodes  # noqa: E402
from avatar_server.renderers.ditto.standin import official_container  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """Tiny networks run many small ops: one thread avoids oversubscribing a shared CI box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny stand-in .pth files, cfgs and HuBERT (no ONNX export: fast)."""
    folder = tmp_path_factory.mktemp("ditto_tiny")
    assert checkpoints_cli(["standin", "--size", "tiny", "--no-onnx", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def standin_with_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The complete tiny tree, ONNX files included (exporting takes tens of seconds on a small CPU)."""
    folder = tmp_path_factory.mktemp("ditto_tiny_onnx")
    assert checkpoints_cli(["standin", "--size", "tiny", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def torch_networks(standin: Path):
    return load_networks(standin, runtime="pytorch", device="cpu")


def _inputs(networks, batch: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    sizes = networks.sizes
    kp = torch.rand(batch, 21, 3, generator=generator) - 0.5
    return {
        "image": torch.rand(batch, 3, 256, 256, generator=generator),
        "kp_source": kp,
        "kp_driving": kp + 0.05 * torch.randn(batch, 21, 3, generator=generator),
        "audio": 0.1 * torch.randn(batch, 6480, generator=generator),
        "x": torch.randn(batch, 80, 265, generator=generator),
        "cond_frame": torch.randn(batch, 265, generator=generator),
        "cond": torch.randn(batch, 80, sizes.cond_dim, generator=generator),
        "time": torch.tensor([999, 40][:batch]),
    }


@pytest.mark.slow
def test_standin_writes_every_official_file_name(standin_with_onnx: Path) -> None:
    expected = [*layout.PTH_FILES.values(), *layout.ONNX_FILES.values(), layout.HUBERT_AUX, *layout.CFG_FILES]
    assert [name for name in expected if not (standin_with_onnx / name).is_file()] == []
    warp = onnx.load(str(standin_with_onnx / layout.ONNX_FILES["warp_network"]))
    assert len(custom_grid_sample_nodes(warp)) == 2  # like the official file: a plugin op ORT cannot run


def test_pytorch_runtime_loads_every_pth_and_runs_each_network(torch_networks) -> None:
    names = {model.name.split(" ")[0] for model in torch_networks.describe()}
    assert names == {f"ditto/{network}" for network in layout.NETWORKS}
    sizes = torch_networks.sizes
    data = _inputs(torch_networks)
    volume = torch_networks.appearance(data["image"])
    assert volume.shape == (2, sizes.feature_channels, sizes.feature_depth, 64, 64)
    motion = torch_networks.motion(data["image"])
    assert {k: tuple(v.shape) for k, v in motion.items()} == {
        "pitch": (2, 66), "yaw": (2, 66), "roll": (2, 66), "t": (2, 3), "exp": (2, 63), "scale": (2, 1), "kp": (2, 63)
    }
    warped = torch_networks.warp(volume, data["kp_source"], data["kp_driving"])
    assert warped.shape == (2, sizes.warped_channels, 64, 64)
    image = torch_networks.decode(warped)
    assert image.shape == (2, 3, 512, 512) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert torch_networks.stitch(data["kp_source"], data["kp_driving"]).shape == (2, 21, 3)
    assert torch_networks.hubert(data["audio"]).shape == (2, 20, 1024)
    pred_noise, x_start = torch_networks.lmdm(data["x"], data["cond_frame"], data["cond"], data["time"])
    assert pred_noise.shape == x_start.shape == (2, 80, 265)
    assert torch.isfinite(pred_noise).all() and torch.isfinite(x_start).all()


@pytest.mark.slow
def test_onnx_runtime_loads_every_onnx_and_agrees_with_pytorch(standin_with_onnx: Path) -> None:
    torch_networks = load_networks(standin_with_onnx, runtime="pytorch", device="cpu")
    onnx_networks = load_networks(standin_with_onnx, runtime="onnx", device="cpu")
    assert {m.name for m in onnx_networks.describe()} == {f"ditto/{network}" for network in layout.NETWORKS}
    assert onnx_networks.sizes == torch_networks.sizes
    data = _inputs(torch_networks)

    def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
        return a.shape == b.shape and float((a - b).abs().max()) <= tol * (1 + float(a.abs().max()))

    volume = torch_networks.appearance(data["image"])
    assert close(volume, onnx_networks.appearance(data["image"]))
    ours, theirs = torch_networks.motion(data["image"]), onnx_networks.motion(data["image"])
    assert all(close(ours[key], theirs[key]) for key in ours)
    warped = torch_networks.warp(volume, data["kp_source"], data["kp_driving"])
    assert close(warped, onnx_networks.warp(volume, data["kp_source"], data["kp_driving"]))
    assert close(torch_networks.decode(warped), onnx_networks.decode(warped))
    assert close(torch_networks.stitch(data["kp_source"], data["kp_driving"]),
                 onnx_networks.stitch(data["kp_source"], data["kp_driving"]))
    assert close(torch_networks.hubert(data["audio"]), onnx_networks.hubert(data["audio"]))
    ours_lmdm = torch_networks.lmdm(data["x"], data["cond_frame"], data["cond"], data["time"])
    theirs_lmdm = onnx_networks.lmdm(data["x"], data["cond_frame"], data["cond"], data["time"])
    assert close(ours_lmdm[1], theirs_lmdm[1]) and close(ours_lmdm[0], theirs_lmdm[0], tol=1e-3)


def test_lmdm_applies_guidance_and_derives_the_noise_from_x_start(torch_networks) -> None:
    data = _inputs(torch_networks, batch=1)
    pred_noise, x_start = torch_networks.lmdm(data["x"], data["cond_frame"], data["cond"], data["time"])
    alpha = float(__import__("avatar_server.renderers.ditto.networks.lmdm", fromlist=["x"]).cosine_alphas_cumprod()[999])
    expected_noise = (data["x"] - alpha**0.5 * x_start) / (1 - alpha) ** 0.5
    assert float((pred_noise - expected_noise).abs().max()) < 1e-3
    other = torch_networks.lmdm(data["x"], data["cond_frame"], data["cond"] * 0, data["time"])[1]
    assert float((other - x_start).abs().max()) > 1e-4  # the audio condition matters


def _tensors(standin: Path, network: str) -> dict[str, torch.Tensor]:
    return load_network(network, standin / layout.PTH_FILES[network]).state_dict()


def test_pth_loader_rejects_a_renamed_tensor_naming_it(standin: Path, tmp_path: Path) -> None:
    raw = torch.load(standin / layout.PTH_FILES["appearance_extractor"], weights_only=True)
    raw["second.kernel"] = raw.pop("second.weight")
    torch.save(raw, tmp_path / "appearance_extractor.pth")
    with pytest.raises(CheckpointsError) as caught:
        load_network("appearance_extractor", tmp_path / "appearance_extractor.pth")
    assert "missing tensors: second.weight" in caught.value.message
    assert "unexpected tensors: second.kernel" in caught.value.message
    assert caught.value.code == StatusCode.FAILED_PRECONDITION


def test_pth_loader_rejects_a_wrong_shape_naming_it(standin: Path, tmp_path: Path) -> None:
    raw = torch.load(standin / layout.PTH_FILES["lmdm"], weights_only=True)
    weight = raw["model_state_dict"]["seqTransDecoder.stack.3.film2.block.1.weight"]
    raw["model_state_dict"]["seqTransDecoder.stack.3.film2.block.1.weight"] = weight[:-1]
    torch.save(raw, tmp_path / "lmdm.pth")
    with pytest.raises(CheckpointsError) as caught:
        load_network("lmdm", tmp_path / "lmdm.pth")
    assert f"seqTransDecoder.stack.3.film2.block.1.weight has shape [{weight.shape[0] - 1}, {weight.shape[1]}]" in (
        caught.value.message
    )


def test_spectral_norm_tensors_are_required_and_folded(standin: Path, tmp_path: Path) -> None:
    raw = torch.load(standin / layout.PTH_FILES["decoder"], weights_only=True)
    assert "G_middle_0.conv_0.weight_orig" in raw and "G_middle_0.conv_0.weight_u" in raw
    loaded = load_network("decoder", standin / layout.PTH_FILES["decoder"])
    conv = loaded.G_middle_0.conv_0
    matrix = raw["G_middle_0.conv_0.weight_orig"].flatten(1)
    sigma = raw["G_middle_0.conv_0.weight_u"] @ matrix @ raw["G_middle_0.conv_0.weight_v"]
    assert torch.allclose(conv.weight, raw["G_middle_0.conv_0.weight_orig"] / sigma, atol=1e-6)
    del raw["G_middle_0.conv_0.weight_v"]
    torch.save(raw, tmp_path / "decoder.pth")
    with pytest.raises(CheckpointsError, match="G_middle_0.conv_0.weight_v"):
        load_network("decoder", tmp_path / "decoder.pth")


def test_stitch_weights_load_with_or_without_the_ddp_prefix(standin: Path, tmp_path: Path) -> None:
    raw = torch.load(standin / layout.PTH_FILES["stitch_network"], weights_only=True)
    assert all(key.startswith("module.") for key in raw["retarget_shoulder"])
    plain = {"retarget_shoulder": {k.removeprefix("module."): v for k, v in raw["retarget_shoulder"].items()}}
    torch.save(plain, tmp_path / "stitch.pth")
    assert load_network("stitch_network", tmp_path / "stitch.pth").state_dict().keys() == (
        _tensors(standin, "stitch_network").keys()
    )
    torch.save(plain["retarget_shoulder"], tmp_path / "bare.pth")
    with pytest.raises(CheckpointsError, match="retarget_shoulder"):
        load_network("stitch_network", tmp_path / "bare.pth")


def test_missing_files_are_all_named_with_how_to_get_them(standin: Path, tmp_path: Path) -> None:
    copy = tmp_path / "checkpoints"
    shutil.copytree(standin, copy)
    (copy / layout.PTH_FILES["decoder"]).unlink()
    (copy / layout.HUBERT_AUX).unlink()
    (copy / layout.ONNX_FILES["hubert"]).unlink(missing_ok=True)
    (copy / layout.PTH_FILES["warp_network"]).write_bytes(
        b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n"
    )
    with pytest.raises(CheckpointsError) as caught:
        load_networks(copy, runtime="pytorch", device="cpu")
    message = caught.value.message
    assert "missing ditto_pytorch/models/decoder.pth" in message
    assert "missing ditto_pytorch/aux_models/hubert_streaming_fix_kv.onnx or ditto_onnx/hubert.onnx" in message
    assert "ditto_pytorch/models/warp_network.pth is a Git LFS pointer" in message
    assert "git clone https://huggingface.co/digital-avatar/ditto-talkinghead" in message
    with pytest.raises(CheckpointsError, match="does not exist"):
        load_networks(tmp_path / "nowhere", runtime="onnx", device="cpu")


def test_official_and_tiny_files_cannot_be_mixed(standin: Path, tmp_path: Path) -> None:
    copy = tmp_path / "checkpoints"
    shutil.copytree(standin, copy, ignore=shutil.ignore_patterns("ditto_onnx"))
    spec = SPECS["stitch_network"]
    full = spec.build(spec.full).state_dict()
    torch.save(official_container("stitch_network", full), copy / layout.PTH_FILES["stitch_network"])
    with pytest.raises(CheckpointsError, match="mix official and tiny"):
        load_networks(copy, runtime="pytorch", device="cpu")


def test_config_prefers_the_online_pickle_and_applies_overrides(standin: Path) -> None:
    config = load_ditto_config(standin, {"sampling_timesteps": 10, "max_size": None})
    assert config.source.endswith("v0.4_hubert_cfg_trt_online.pkl")
    assert (config.online_mode, config.sampling_timesteps, config.max_size) == (True, 10, 1920)
    assert config.cond_dim == 1103 and config.seq_frames == 80 and config.extra == {}
    assert config.model_paths["warp_network_cfg"] == "warp_network_fp16.engine"
    with pytest.raises(ConfigError, match="sampling_step"):
        load_ditto_config(standin, {"sampling_step": 3})


def test_every_cfg_pickle_of_the_layout_parses(standin: Path) -> None:
    from avatar_server.renderers.ditto.config import config_from_cfg, read_cfg_pickle

    configs = {name: config_from_cfg(read_cfg_pickle(standin / name), name) for name in layout.CFG_FILES}
    assert [c.online_mode for c in configs.values()] == [True, False, False]  # online, pytorch, offline
    assert configs[layout.CFG_PYTORCH].model_paths["lmdm_cfg"] == "models/lmdm_v0.4_hubert.pth"


def test_config_reads_the_real_format_and_refuses_code(tmp_path: Path) -> None:
    assert load_ditto_config(tmp_path).source == "defaults"
    cfg = tmp_path / layout.CFG_PYTORCH
    cfg.parent.mkdir(parents=True)
    import numpy as np

    raw = {
        "base_cfg": {"decoder_cfg": {"model_path": "models/decoder.pth", "device": "cuda"}},
        "audio2motion_cfg": {"model_path": "models/lmdm_v0.4_hubert.pth", "audio_feat_dim": 1103, "use_sc": False},
        "default_kwargs": {"online_mode": False, "overlap_v2": 20, "v_min_max_for_clip": np.zeros((2, 265))},
    }
    cfg.write_bytes(pickle.dumps(raw))
    config = load_ditto_config(tmp_path)
    assert (config.online_mode, config.overlap_v2, config.use_sc, config.cond_dim) == (False, 20, False, 1103)
    assert config.extra["v_min_max_for_clip"].shape == (2, 265)

    class Exploit:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "nothing"),))

    cfg.write_bytes(pickle.dumps({"base_cfg": {}, "audio2motion_cfg": {}, "default_kwargs": {"x": Exploit()}}))
    with pytest.raises(ConfigError, match="shutil.rmtree"):
        load_ditto_config(tmp_path)
