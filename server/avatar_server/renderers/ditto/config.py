"""Ditto run options: the release's cfg .pkl drives the renderer; settings override only where set.

The pickles are dicts with `base_cfg` (per-network model paths and devices), `audio2motion_cfg`
(LMDM dims and condition switches) and `default_kwargs` (run options). They are read with a
restricted unpickler (builtins and numpy arrays only): a cfg file cannot run code.

Keys: the layout of `base_cfg` and `audio2motion_cfg` is fixed by the authors' code, so an unknown
key there (or at the top level) is a start-up error naming the file and the key. The release's
`default_kwargs` are not public, and the authors' pipeline ignores run options it does not read,
so there an unknown key is a warning listing it; a key the authors read but this renderer does not
implement is a warning too (with the value it asked for). `docs/ditto.md` lists both sets.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatar_server.core.errors import AvatarError, StatusCode
from avatar_server.renderers.ditto.checkpoints import CFG_FILES

log = logging.getLogger(__name__)

ALLOWED_GLOBALS = {
    ("builtins", "tuple"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}

TOP_LEVEL_KEYS = frozenset({"base_cfg", "audio2motion_cfg", "default_kwargs"})
# base_cfg entries the authors' parse_cfg knows (wavlm_cfg: their other audio encoder).
BASE_CFG_KEYS = frozenset({
    "insightface_det_cfg", "landmark106_cfg", "landmark203_cfg", "landmark478_cfg",
    "appearance_extractor_cfg", "motion_extractor_cfg", "stitch_network_cfg", "warp_network_cfg",
    "decoder_cfg", "hubert_cfg", "wavlm_cfg",
})
BASE_ENTRY_KEYS = frozenset({"model_path", "device", "force_ori_type", "task_path",
                             "blaze_face_model_path", "face_mesh_model_path"})
AUDIO2MOTION_KEYS = {  # cfg key -> DittoConfig field
    "model_path": None,
    "device": None,
    "w2f_type": "w2f_type",
    "motion_feat_dim": "motion_feat_dim",
    "audio_feat_dim": "cond_dim",
    "seq_frames": "seq_frames",
    "use_emo": "use_emo",
    "use_sc": "use_sc",
    "use_eye_open": "use_eye_open",
    "use_eye_ball": "use_eye_ball",
}
# Run options the authors' StreamSDK.setup (and run_chunk) read.
AUTHORS_RUN_OPTIONS = frozenset({
    "max_size", "template_n_frames", "crop_scale", "crop_vx_ratio", "crop_vy_ratio", "crop_flag_do_rot",
    "smo_k_s", "emo", "eye_f0_mode", "ch_info", "overlap_v2", "fix_kp_cond", "fix_kp_cond_dim",
    "sampling_timesteps", "online_mode", "v_min_max_for_clip", "smo_k_d", "N_d", "use_d_keys",
    "relative_d", "drive_eye", "delta_eye_arr", "delta_eye_open_n", "fade_type", "fade_out_keys",
    "flag_stitching", "ctrl_info", "overall_ctrl_info", "chunksize",
})


class ConfigError(AvatarError):
    """A Ditto cfg file or override that cannot be used."""

    code = StatusCode.FAILED_PRECONDITION
    stage = "startup"


@dataclass(frozen=True)
class DittoConfig:
    """Run options of the Ditto pipeline. Defaults are the authors' code's where a key is absent,
    except `online_mode` (we stream). `cond_dim` None means: read it from the LMDM weights."""

    source: str = "defaults"  # the cfg file read, or "defaults"
    # audio2motion_cfg
    w2f_type: str = "hubert"
    motion_feat_dim: int = 265
    cond_dim: int | None = None
    seq_frames: int = 80
    use_emo: bool = True
    use_sc: bool = True
    use_eye_open: bool = True
    use_eye_ball: bool = True
    # default_kwargs: audio -> motion
    online_mode: bool = True
    sampling_timesteps: int = 50
    overlap_v2: int = 10
    smo_k_d: int = 3
    fix_kp_cond: int = 0
    chunksize: tuple[int, int, int] = (3, 5, 2)
    emo: Any = 4
    # default_kwargs: avatar registration
    max_size: int = 1920
    template_n_frames: int = -1
    crop_scale: float = 2.3
    crop_vx_ratio: float = 0.0
    crop_vy_ratio: float = -0.125
    crop_flag_do_rot: bool = True
    smo_k_s: int = 13
    eye_f0_mode: bool = False
    # default_kwargs: motion stitching
    relative_d: bool = True
    flag_stitching: bool = True
    drive_eye: bool | None = None
    delta_eye_open_n: int = 0
    # which of the fields above the cfg file set; its model paths; run options with no field here
    from_file: frozenset[str] = frozenset()
    model_paths: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(DittoConfig)) - {"source", "from_file", "model_paths", "extra"}
DEFAULTS = DittoConfig()

# Options this renderer implements as the authors do (the rest of FIELD_NAMES are read and
# reported, and a value other than the default is a warning: see `unimplemented_values`).
IMPLEMENTED = frozenset({
    "w2f_type", "motion_feat_dim", "cond_dim", "seq_frames", "use_emo", "use_sc", "use_eye_open",
    "use_eye_ball", "sampling_timesteps", "overlap_v2", "chunksize", "emo", "max_size",
    "template_n_frames", "crop_scale", "crop_vx_ratio", "crop_vy_ratio", "crop_flag_do_rot",
    "online_mode", "smo_k_d",
})

# Service settings (fields of settings.ditto) that override a cfg option when the user sets them.
SETTING_FOR_OPTION = {
    "sampling_timesteps": "sampling_steps",
    "overlap_v2": "overlap",
    "max_size": "max_size",
    "template_n_frames": "template_frames",
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise ConfigError(f"cfg pickle refers to {module}.{name}, which a Ditto config may not contain")
        return super().find_class(module, name)


def read_cfg_pickle(path: Path) -> dict[str, Any]:
    """Reads one cfg pickle (restricted unpickling) and checks its layout; errors name the file."""
    try:
        raw = _SafeUnpickler(io.BytesIO(Path(path).read_bytes())).load()
    except ConfigError as error:
        raise ConfigError(f"{path}: unsafe pickle content: {error.message}") from None
    except Exception as error:  # any malformed pickle: truncated, wrong protocol, bad opcodes
        raise ConfigError(f"cannot read Ditto cfg {path}: {type(error).__name__}: {error}") from error
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), dict) for k in ("base_cfg", "audio2motion_cfg")):
        raise ConfigError(f"{path} is not a Ditto cfg: expected a dict with base_cfg and audio2motion_cfg")
    _check_layout(raw, path)
    return raw


def _check_layout(raw: Mapping[str, Any], path: Path) -> None:
    """Unknown keys where the authors' code fixes the layout are errors naming file and key."""
    problems = [f"top-level key {key!r}" for key in sorted(set(raw) - TOP_LEVEL_KEYS, key=str)]
    for name, entry in raw["base_cfg"].items():
        if name not in BASE_CFG_KEYS:
            problems.append(f"base_cfg key {name!r}")
        elif not isinstance(entry, dict):
            problems.append(f"base_cfg[{name!r}] is a {type(entry).__name__}, not a dict")
        else:
            problems += [f"base_cfg[{name!r}] key {key!r}" for key in sorted(set(entry) - BASE_ENTRY_KEYS, key=str)]
    problems += [f"audio2motion_cfg key {key!r}" for key in sorted(set(raw["audio2motion_cfg"]) - set(AUDIO2MOTION_KEYS), key=str)]
    if not isinstance(raw.get("default_kwargs", {}), dict):
        problems.append("default_kwargs is not a dict")
    if problems:
        raise ConfigError(f"{path}: unknown Ditto cfg content: {'; '.join(problems)} "
                          f"(the authors' code reads none of these)")


def config_from_cfg(raw: Mapping[str, Any], source: str) -> DittoConfig:
    """Maps a parsed cfg dict onto DittoConfig; run options without a field land in `extra`."""
    values: dict[str, Any] = {"source": source}
    audio2motion = raw.get("audio2motion_cfg", {})
    for key, name in AUDIO2MOTION_KEYS.items():
        if name is not None and key in audio2motion:
            values[name] = audio2motion[key]
    extra: dict[str, Any] = {}
    for key, value in dict(raw.get("default_kwargs") or {}).items():
        if key in FIELD_NAMES:
            values[key] = tuple(value) if key == "chunksize" else value
        else:
            extra[key] = value
    paths = {
        name: str(entry["model_path"])
        for name, entry in raw.get("base_cfg", {}).items()
        if isinstance(entry, dict) and entry.get("model_path")
    }
    if audio2motion.get("model_path"):
        paths["lmdm_cfg"] = str(audio2motion["model_path"])
    values["model_paths"] = paths
    values["extra"] = extra
    values["from_file"] = frozenset(values) & FIELD_NAMES
    return DittoConfig(**values)


def load_ditto_config(checkpoints: Path, overrides: Mapping[str, Any] | None = None) -> DittoConfig:
    """The run options: the first cfg pickle found (online, pytorch, offline), else defaults; then
    `overrides` (DittoConfig field names; None values are ignored) on top."""
    config = DittoConfig()
    for relative in CFG_FILES:
        path = Path(checkpoints) / relative
        if path.is_file():
            config = config_from_cfg(read_cfg_pickle(path), source=str(path))
            break
    clean = {key: value for key, value in (overrides or {}).items() if value is not None}
    unknown = sorted(set(clean) - FIELD_NAMES)
    if unknown:
        raise ConfigError(f"unknown Ditto config override(s): {', '.join(unknown)}")
    return dataclasses.replace(config, **clean)


@dataclass(frozen=True)
class OptionInUse:
    """One run option as the renderer uses it, and where its value came from."""

    name: str  # the cfg key, e.g. "sampling_timesteps"
    value: Any
    origin: str  # "cfg <file>", "setting AVATAR_DITTO_...", or "default"


@dataclass(frozen=True)
class ResolvedConfig:
    """The run options in use: the cfg's values, with explicitly set settings on top."""

    config: DittoConfig
    options: tuple[OptionInUse, ...]
    warnings: tuple[str, ...]

    def describe(self) -> dict[str, str]:
        """name -> "value (origin)", for ServerInfo and logs."""
        return {o.name: f"{o.value!r} ({o.origin})" for o in self.options}


def resolve_config(checkpoints: Path, ditto_settings: Any) -> ResolvedConfig:
    """The cfg .pkl of `checkpoints` (or the authors' defaults) with the settings the user set
    explicitly (pydantic's `model_fields_set`) on top: one log line per override, one warning per
    option the renderer cannot honour."""
    config = load_ditto_config(checkpoints)
    in_file = config.from_file
    overrides: dict[str, Any] = {}
    for option, setting in SETTING_FOR_OPTION.items():
        if setting in ditto_settings.model_fields_set:
            value = getattr(ditto_settings, setting)
            overrides[option] = value
            if getattr(config, option) != value:
                log.info("ditto: setting AVATAR_DITTO_%s=%r overrides %s=%r from %s", setting.upper(), value,
                         option, getattr(config, option), config.source if option in in_file else "the defaults")
    config = dataclasses.replace(config, **overrides)
    options = []
    for name in sorted(FIELD_NAMES):
        if name in overrides:
            origin = f"setting AVATAR_DITTO_{SETTING_FOR_OPTION[name].upper()}"
        else:
            origin = f"cfg {Path(config.source).name}" if name in in_file else "default"
        options.append(OptionInUse(name, getattr(config, name), origin))
    warnings = tuple(unimplemented_values(config))
    for warning in warnings:
        log.warning("ditto: %s", warning)
    return ResolvedConfig(config, tuple(options), warnings)


def unimplemented_values(config: DittoConfig) -> list[str]:
    """What the cfg asks for that this renderer does not do (options not implemented, set to a
    value other than the authors' default; run options outside the authors' list)."""
    notes = []
    for name in sorted(FIELD_NAMES - IMPLEMENTED):
        value = getattr(config, name)
        if value != getattr(DEFAULTS, name):
            notes.append(f"{config.source} sets {name}={value!r}, which this renderer does not implement "
                         f"(it runs as {name}={getattr(DEFAULTS, name)!r})")
    for key in sorted(config.extra):
        known = "is read by the authors' pipeline but not implemented here" if key in AUTHORS_RUN_OPTIONS \
            else "is not read by the authors' pipeline either"
        notes.append(f"{config.source}: run option {key!r} {known}; ignored")
    if tuple(config.chunksize) != DEFAULTS.chunksize:
        raise ConfigError(f"{config.source} sets chunksize={config.chunksize}; only (3, 5, 2) (the HuBERT "
                          "streaming chunk the release's encoder is exported for) is supported")
    return notes
