"""The official Ditto checkpoints layout (a git clone of HuggingFace digital-avatar/ditto-talkinghead) and its checks.

Paths are relative to the checkpoints folder. `require_checkpoints` runs before anything heavy is
loaded, so `avatar-server --renderer ditto` with a missing or incomplete folder fails at start-up
with one message naming every missing file and how to get it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from avatar_server.core.errors import AvatarError, StatusCode

HUGGINGFACE_REPO = "https://huggingface.co/digital-avatar/ditto-talkinghead"
GET_WEIGHTS_HINT = (
    f"Get the official weights with: git lfs install && git clone {HUGGINGFACE_REPO} <checkpoints dir>  "
    "(random stand-ins for tests, which render noise: avatar-checkpoints standin --size tiny <dir>)"
)
BUILD_ENGINES_HINT = "Build TensorRT engines for this GPU from the ONNX files with: make engines CHECKPOINTS=<dir>"

CFG_ONLINE = "ditto_cfg/v0.4_hubert_cfg_trt_online.pkl"
CFG_OFFLINE = "ditto_cfg/v0.4_hubert_cfg_trt.pkl"
CFG_PYTORCH = "ditto_cfg/v0.4_hubert_cfg_pytorch.pkl"
CFG_FILES = (CFG_ONLINE, CFG_PYTORCH, CFG_OFFLINE)  # load_ditto_config's order of preference

NETWORKS = (
    "appearance_extractor",
    "motion_extractor",
    "warp_network",
    "decoder",
    "stitch_network",
    "lmdm",
    "hubert",
)

PTH_FILES = {
    "appearance_extractor": "ditto_pytorch/models/appearance_extractor.pth",
    "motion_extractor": "ditto_pytorch/models/motion_extractor.pth",
    "warp_network": "ditto_pytorch/models/warp_network.pth",
    "decoder": "ditto_pytorch/models/decoder.pth",
    "stitch_network": "ditto_pytorch/models/stitch_network.pth",
    "lmdm": "ditto_pytorch/models/lmdm_v0.4_hubert.pth",
}
HUBERT_AUX = "ditto_pytorch/aux_models/hubert_streaming_fix_kv.onnx"

ONNX_FILES = {
    "appearance_extractor": "ditto_onnx/appearance_extractor.onnx",
    "motion_extractor": "ditto_onnx/motion_extractor.onnx",
    "warp_network": "ditto_onnx/warp_network.onnx",
    "decoder": "ditto_onnx/decoder.onnx",
    "stitch_network": "ditto_onnx/stitch_network.onnx",
    "lmdm": "ditto_onnx/lmdm_v0.4_hubert.onnx",
    "hubert": "ditto_onnx/hubert.onnx",
}
GRID_SAMPLE_PLUGIN = "ditto_onnx/libgrid_sample_3d_plugin.so"  # TensorRT 8.6 only; never needed here

# Face models of the release's avatar registration (det_10g face boxes -> 106 landmarks -> 203
# landmarks -> crop). All three present: registration uses them; none: the mediapipe-only fallback;
# some: a start-up error naming the missing ones. face_landmarker.task (mediapipe's 478-point model,
# for the eye features) is not needed: the same FaceMesh family ships inside the mediapipe wheel.
DETECTOR_AUX = "ditto_pytorch/aux_models/det_10g.onnx"
LANDMARK106_AUX = "ditto_pytorch/aux_models/2d106det.onnx"
LANDMARK203_AUX = "ditto_pytorch/aux_models/landmark203.onnx"
FACE_LANDMARKER_AUX = "ditto_pytorch/aux_models/face_landmarker.task"
REGISTRATION_AUX_FILES = (DETECTOR_AUX, LANDMARK106_AUX, LANDMARK203_AUX)

PREBUILT_ENGINE_DIR = "ditto_trt_Ampere_Plus"  # TensorRT 8.6.1 engines: they do not load in TensorRT 10
FP32_ENGINES = frozenset({"motion_extractor", "lmdm", "hubert"})  # as the official conversion script chose


# HuBERT runs with ONNX Runtime in every runtime; the first file present is used.
HUBERT_FILES = {
    "pytorch": (HUBERT_AUX, ONNX_FILES["hubert"]),
    "onnx": (ONNX_FILES["hubert"], HUBERT_AUX),
    "tensorrt": (ONNX_FILES["hubert"], HUBERT_AUX),
}

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"


class CheckpointsError(AvatarError):
    """The Ditto checkpoints folder is missing, incomplete or holds files we cannot load."""

    code = StatusCode.FAILED_PRECONDITION
    stage = "startup"


def onnx_stem(network: str) -> str:
    """File stem of a network in ditto_onnx/ and in engine folders (lmdm -> lmdm_v0.4_hubert)."""
    return Path(ONNX_FILES[network]).stem


def engine_precision(network: str, precision: str) -> str:
    """Precision an engine is built in: fp32 for motion, LMDM and HuBERT (as released), else `precision`."""
    return "fp32" if network in FP32_ENGINES else precision


def engine_file_name(network: str, precision: str) -> str:
    """Engine file name in the official naming, e.g. warp_network_fp16.engine, lmdm_v0.4_hubert_fp32.engine."""
    return f"{onnx_stem(network)}_{engine_precision(network, precision)}.engine"


def engine_dir_name(compute_capability: tuple[int, int], tensorrt_version: str) -> str:
    """Folder for engines built here: one per GPU architecture and TensorRT major.minor (an engine loads
    only in the TensorRT version and GPU family that built it), e.g. ditto_trt_sm90_trt10.7."""
    major, minor = compute_capability
    trt_major_minor = ".".join(tensorrt_version.split(".")[:2])
    return f"ditto_trt_sm{major}{minor}_trt{trt_major_minor}"


def is_lfs_pointer(path: Path) -> bool:
    """True for a Git LFS pointer file (a clone made without `git lfs install`)."""
    try:
        with path.open("rb") as handle:
            return handle.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX
    except OSError:
        return False


@dataclass(frozen=True)
class ResolvedFiles:
    """Absolute paths of the files one runtime loads (engine folder only for TensorRT)."""

    root: Path
    networks: dict[str, Path]


def runtime_files(root: Path, runtime: str, *, engine_dir: Path | None = None, precision: str = "fp16") -> dict[str, list[Path]]:
    """Candidate files per network for `runtime` (the first existing one is used)."""
    hubert = [root / rel for rel in HUBERT_FILES.get(runtime, HUBERT_FILES["onnx"])]
    if runtime == "pytorch":
        files = {name: [root / rel] for name, rel in PTH_FILES.items()}
    elif runtime == "onnx":
        files = {name: [root / rel] for name, rel in ONNX_FILES.items() if name != "hubert"}
    elif runtime == "tensorrt":
        if engine_dir is None:
            raise CheckpointsError("the TensorRT runtime needs an engine folder")
        files = {
            name: [engine_dir / engine_file_name(name, precision)] for name in NETWORKS if name != "hubert"
        }
    else:
        raise CheckpointsError(f"unknown Ditto runtime {runtime!r}: use pytorch, onnx or tensorrt")
    files["hubert"] = hubert
    return files


def require_checkpoints(
    root: Path, runtime: str, *, engine_dir: Path | None = None, precision: str = "fp16"
) -> ResolvedFiles:
    """Checks that every file `runtime` needs is present and real; raises one CheckpointsError naming all problems."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointsError(f"Ditto checkpoints folder {root} does not exist. {GET_WEIGHTS_HINT}")
    problems: list[str] = []
    resolved: dict[str, Path] = {}
    for network, candidates in runtime_files(root, runtime, engine_dir=engine_dir, precision=precision).items():
        present = next((path for path in candidates if path.is_file()), None)
        if present is None:
            problems.append(f"missing {' or '.join(_shown(path, root) for path in candidates)}")
        elif is_lfs_pointer(present):
            problems.append(f"{_shown(present, root)} is a Git LFS pointer, not the weights (run git lfs pull)")
        elif present.stat().st_size == 0:
            problems.append(f"{_shown(present, root)} is empty")
        else:
            resolved[network] = present
    if problems:
        hint = BUILD_ENGINES_HINT if runtime == "tensorrt" else GET_WEIGHTS_HINT
        raise CheckpointsError(
            f"Ditto checkpoints in {root} are incomplete for the {runtime} runtime: "
            + "; ".join(problems)
            + f". {hint}"
        )
    return ResolvedFiles(root=root, networks=resolved)


def registration_aux_files(root: Path) -> dict[str, Path] | None:
    """The release's three face models (by file name) when all are present and real; None when the
    folder has none of them (mediapipe-only registration). Raises CheckpointsError naming what is
    missing or broken when only some are there: nothing half-loads."""
    root = Path(root)
    paths = {Path(rel).name: root / rel for rel in REGISTRATION_AUX_FILES}
    present = {name: path for name, path in paths.items() if path.exists()}
    if not present:
        return None
    problems = [f"missing {_shown(path, root)}" for name, path in paths.items() if name not in present]
    for path in present.values():
        if is_lfs_pointer(path):
            problems.append(f"{_shown(path, root)} is a Git LFS pointer, not the model (run git lfs pull)")
        elif path.stat().st_size == 0:
            problems.append(f"{_shown(path, root)} is empty")
    if problems:
        raise CheckpointsError(
            f"Ditto checkpoints in {root} hold only some of the face registration models: "
            + "; ".join(problems)
            + ". Add all of det_10g.onnx, 2d106det.onnx and landmark203.onnx (registration as the authors "
            f"do it), or remove them all (mediapipe-only registration). {GET_WEIGHTS_HINT}"
        )
    return paths


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
