"""Ditto run options from the official cfg .pkl files (online one preferred), with defaults and user overrides.

The pickles are dicts with `base_cfg` (per-network model paths and devices), `audio2motion_cfg`
(LMDM dims and condition switches) and `default_kwargs` (run options). They are read with a
restricted unpickler (builtins and numpy arrays only): a cfg file cannot run code.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatar_server.core.errors import AvatarError, StatusCode
from avatar_server.renderers.ditto.checkpoints import CFG_FILES

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


class ConfigError(AvatarError):
    """A Ditto cfg file or override that cannot be used."""

    code = StatusCode.FAILED_PRECONDITION
    stage = "startup"


@dataclass(frozen=True)
class DittoConfig:
    """Run options of the Ditto pipeline. Defaults are the official code's when a key is absent,
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
    # everything else found in the file, untouched
    model_paths: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(DittoConfig)) - {"source", "model_paths", "extra"}
AUDIO2MOTION_KEYS = {
    "w2f_type": "w2f_type",
    "motion_feat_dim": "motion_feat_dim",
    "audio_feat_dim": "cond_dim",
    "seq_frames": "seq_frames",
    "use_emo": "use_emo",
    "use_sc": "use_sc",
    "use_eye_open": "use_eye_open",
    "use_eye_ball": "use_eye_ball",
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise ConfigError(f"cfg pickle refers to {module}.{name}, which a Ditto config may not contain")
        return super().find_class(module, name)


def read_cfg_pickle(path: Path) -> dict[str, Any]:
    """Reads one official cfg pickle (restricted unpickling) and checks its top-level shape."""
    try:
        raw = _SafeUnpickler(io.BytesIO(Path(path).read_bytes())).load()
    except ConfigError as error:
        raise ConfigError(f"{path}: {error.message}") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as error:
        raise ConfigError(f"cannot read Ditto cfg {path}: {error}") from error
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), dict) for k in ("base_cfg", "audio2motion_cfg")):
        raise ConfigError(f"{path} is not a Ditto cfg: expected a dict with base_cfg and audio2motion_cfg")
    return raw


def config_from_cfg(raw: Mapping[str, Any], source: str) -> DittoConfig:
    """Maps a parsed cfg dict onto DittoConfig; unknown run options land in `extra`."""
    values: dict[str, Any] = {"source": source}
    audio2motion = raw.get("audio2motion_cfg", {})
    for key, name in AUDIO2MOTION_KEYS.items():
        if key in audio2motion:
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
