"""Bad Ditto checkpoint folders fail at start-up naming the file; the cfg .pkl drives the run options.

Runs on tiny stand-ins (random weights) written once for the module.
"""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path

import pytest
from avatar_server.renderers.ditto import checkpoints as layout
from avatar_server.renderers.ditto.checkpoints import CheckpointsError, registration_aux_files
from avatar_server.renderers.ditto.config import ConfigError, resolve_config
from avatar_server.settings import load_settings

pytest.importorskip("torch", reason="the Ditto extra is not installed")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from avatar_server.renderers.ditto.standin import write_standin

    folder = tmp_path_factory.mktemp("ditto-tiny-checks")
    write_standin(folder, "tiny", onnx=False)
    return folder


@pytest.fixture()
def copy(tiny: Path, tmp_path: Path) -> Path:
    target = tmp_path / "checkpoints"
    shutil.copytree(tiny, target)
    return target


def _ditto_settings(folder: Path, **values):
    return load_settings(environment=False, renderer="ditto", checkpoints=folder, ditto_device="cpu", **values)


def test_standins_carry_the_release_face_models_and_io(tiny: Path) -> None:
    import onnxruntime

    files = registration_aux_files(tiny)
    assert set(files) == {"det_10g.onnx", "2d106det.onnx", "landmark203.onnx"}
    expected = {"det_10g.onnx": (["image"], [f"{k}{i}" for k in ("scores", "boxes", "kps") for i in (1, 2, 3)]),
                "2d106det.onnx": (["data"], ["fc1"]), "landmark203.onnx": (["input"], ["landmarks"]),
                "hubert_streaming_fix_kv.onnx": (["input_values"], ["encoding_out"])}
    files["hubert_streaming_fix_kv.onnx"] = tiny / layout.HUBERT_AUX
    for name, (inputs, outputs) in expected.items():
        session = onnxruntime.InferenceSession(str(files[name]), providers=["CPUExecutionProvider"])
        assert ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]) == (inputs, outputs)


def test_a_folder_without_face_models_uses_mediapipe(copy: Path) -> None:
    for relative in layout.REGISTRATION_AUX_FILES:
        (copy / relative).unlink()
    assert registration_aux_files(copy) is None


def test_some_face_models_missing_is_a_startup_error_naming_them(copy: Path) -> None:
    from avatar_server.renderers.ditto.renderer import DittoRenderer

    (copy / layout.LANDMARK203_AUX).unlink()
    (copy / layout.DETECTOR_AUX).write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(CheckpointsError) as caught:
        DittoRenderer(_ditto_settings(copy))  # fails before any network loads
    assert "missing ditto_pytorch/aux_models/landmark203.onnx" in caught.value.message
    assert "det_10g.onnx is a Git LFS pointer" in caught.value.message


def test_unknown_cfg_keys_are_a_startup_error_naming_file_and_key(copy: Path) -> None:
    path = copy / layout.CFG_ONLINE
    raw = pickle.loads(path.read_bytes())
    raw["audio2motion_cfg"]["use_lips"] = True
    raw["base_cfg"]["warp_network_cfg"]["precision"] = "int4"
    path.write_bytes(pickle.dumps(raw))
    with pytest.raises(ConfigError) as caught:
        resolve_config(copy, _ditto_settings(copy).ditto)
    message = caught.value.message
    assert str(path) in message and "'use_lips'" in message and "'precision'" in message


def test_unsafe_cfg_pickle_is_a_startup_error_naming_the_file(copy: Path) -> None:
    from avatar_server.renderers.ditto.renderer import DittoRenderer

    class Exploit:
        def __reduce__(self):
            return (shutil.rmtree, (str(copy),))

    path = copy / layout.CFG_ONLINE
    raw = pickle.loads(path.read_bytes())
    raw["default_kwargs"]["emo"] = Exploit()
    path.write_bytes(pickle.dumps(raw))
    with pytest.raises(ConfigError, match="unsafe pickle content.*shutil.rmtree") as caught:
        DittoRenderer(_ditto_settings(copy))
    assert str(path) in caught.value.message and copy.is_dir()


def test_run_options_unknown_to_the_authors_are_warned_about(copy: Path, caplog) -> None:
    path = copy / layout.CFG_ONLINE
    raw = pickle.loads(path.read_bytes())
    raw["default_kwargs"].update({"online_secret": 3, "fade_type": "d0"})
    path.write_bytes(pickle.dumps(raw))
    with caplog.at_level(logging.WARNING):
        resolved = resolve_config(copy, _ditto_settings(copy).ditto)
    assert any("'online_secret' is not read by the authors' pipeline" in w for w in resolved.warnings)
    assert any("'fade_type' is read by the authors' pipeline but not implemented" in w for w in resolved.warnings)
    assert len(caplog.records) >= 2


def test_the_cfg_drives_options_and_settings_override_only_when_set(copy: Path, caplog) -> None:
    path = copy / layout.CFG_ONLINE
    raw = pickle.loads(path.read_bytes())
    raw["default_kwargs"].update({"sampling_timesteps": 25, "max_size": 1280, "crop_scale": 2.5, "emo": [3, 4]})
    path.write_bytes(pickle.dumps(raw))
    resolved = resolve_config(copy, _ditto_settings(copy).ditto)
    config = resolved.config
    assert (config.sampling_timesteps, config.max_size, config.crop_scale, config.emo) == (25, 1280, 2.5, [3, 4])
    options = resolved.describe()
    assert options["sampling_timesteps"] == "25 (cfg v0.4_hubert_cfg_trt_online.pkl)"
    assert options["crop_vy_ratio"] == "-0.125 (default)"
    with caplog.at_level(logging.INFO, logger="avatar_server.renderers.ditto.config"):
        resolved = resolve_config(copy, _ditto_settings(copy, ditto_sampling_steps=4, ditto_max_size=512).ditto)
    assert (resolved.config.sampling_timesteps, resolved.config.max_size) == (4, 512)
    assert resolved.describe()["max_size"] == "512 (setting AVATAR_DITTO_MAX_SIZE)"
    overrides = [r.getMessage() for r in caplog.records if "overrides" in r.getMessage()]
    assert len(overrides) == 2 and any("sampling_timesteps=25" in line for line in overrides)


def test_a_bad_emotion_in_the_cfg_is_a_startup_error(copy: Path) -> None:
    from avatar_server.renderers.ditto.renderer import DittoRenderer

    path = copy / layout.CFG_ONLINE
    raw = pickle.loads(path.read_bytes())
    raw["default_kwargs"]["emo"] = 11
    path.write_bytes(pickle.dumps(raw))
    with pytest.raises(ConfigError, match="emotion 11"):
        DittoRenderer(_ditto_settings(copy))


def test_the_full_hubert_standin_is_hubert_large_sized() -> None:
    import torch

    from avatar_server.renderers.ditto.networks.hubert_standin import FULL, HubertStandIn, hubert_frames

    with torch.device("meta"):  # shapes only, no memory
        module = HubertStandIn(FULL)
    parameters = sum(p.numel() for p in module.parameters())
    assert 310e6 < parameters < 320e6  # HuBERT-large: ~316 M
    assert len(module.encoder.layers) == 24 and module.encoder.layers[0].feed_forward.intermediate_dense.out_features == 4096
    assert hubert_frames(6480) == 20 and module.output_projection is None
