"""Prepares an avatar for Ditto once: face crops, appearance volumes, source motion, eye features.

Per template frame: a rotated square crop around the registry's face landmarks (mediapipe 478 in
frame pixels), 256x256 input for the appearance and motion networks, the crop's affine for
paste-back, and eye-open / eye-ball features. The result is cached (torch.save of CPU tensors)
under `AvatarAssets.cache_dir / "ditto"`, keyed by the weights and these settings.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from avatar_server.avatars.model import AvatarAssets
from avatar_server.core.errors import InvalidInput, RenderError
from avatar_server.renderers.ditto.keypoints import SourceFace, motion_from_extractor
from avatar_server.renderers.ditto.motion_diffusion import emotion_condition
from avatar_server.renderers.ditto.putback import PasteBack, to_i420_async

log = logging.getLogger(__name__)

CROP_SIZE = 512
PREP_VERSION = 1

# Crop geometry. Ditto crops 2.3x the box of its 203-point landmarks, shifted up by 0.125 of the
# side; mediapipe's mesh also covers the forehead (a box ~15% taller, centred higher), so the same
# framing is about 2.0x, shifted 0.1 (inferred from the two layouts, not measured against Ditto).
CROP_SCALE = 2.0
CROP_SHIFT_UP = 0.1

# mediapipe 478 indices
_LEFT_EYE_CORNERS = (33, 133)
_RIGHT_EYE_CORNERS = (263, 362)
_LIP_CENTRE = (13, 14)
_LEFT_LIDS = ((145, 159), (144, 160), (153, 158))
_RIGHT_LIDS = ((374, 386), (373, 387), (380, 385))
_LEFT_IRIS, _RIGHT_IRIS = 468, 473
_MESH_POINTS = 478


@dataclass(frozen=True)
class PreparedAvatar:
    """What the Ditto pipeline needs of one avatar, on the host (cacheable)."""

    frames: np.ndarray  # (T, H, W, 3) uint8 template frames at output size
    crop_from_frame: np.ndarray  # (T, 2, 3)
    appearance: torch.Tensor  # (T, C, D, S, S) float16/32
    source_motion: torch.Tensor  # (T, 265)
    canonical_kp: torch.Tensor  # (T, 63)
    cond_extra: np.ndarray  # (cond_dim - audio_dim,) emotion, eye open, eye ball, source keypoints

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of output frames."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])


class DeviceAvatar:
    """A prepared avatar's tensors on the engine's device, shared read-only by its sessions."""

    def __init__(self, prepared: PreparedAvatar, device: torch.device, dtype: torch.dtype) -> None:
        self.prepared = prepared
        self.appearance = prepared.appearance.to(device=device, dtype=dtype)
        self.source = SourceFace(prepared.source_motion.to(device), prepared.canonical_kp.to(device))
        self.source_keypoints = self.source.keypoints()
        self.paste = PasteBack.build(prepared.frames, prepared.crop_from_frame, CROP_SIZE, device)
        # the template frames in I420 too (made here, on the engine thread, once per avatar and device)
        images = torch.tensor(prepared.frames).permute(0, 3, 1, 2).float() / 255.0  # copy: read-only frames
        self._i420_frames = to_i420_async(images).numpy()

    def template_frames(self, frame_format: str) -> np.ndarray:
        """The template frames as rgb24 (T, H, W, 3) or I420 (T, H * 3 // 2, W), the latter with the
        conversion rendered frames get, so idle and speaking frames share one colour conversion."""
        return self.prepared.frames if frame_format == "rgb24" else self._i420_frames

    @property
    def template_count(self) -> int:
        """Number of template frames."""
        return int(self.prepared.frames.shape[0])


def output_frames(frames: np.ndarray, max_size: int) -> tuple[np.ndarray, float]:
    """Scales frames so the longer side is at most `max_size`, with even sides (for yuv420p)."""
    height, width = frames.shape[1:3]
    scale = min(1.0, max_size / max(height, width))
    new_w, new_h = max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)
    if (new_w, new_h) == (width, height):
        return frames, 1.0
    resized = np.stack([cv2.resize(f, (new_w, new_h), interpolation=cv2.INTER_AREA) for f in frames])
    return resized, new_w / width


def crop_affine(landmarks: np.ndarray) -> np.ndarray:
    """2x3 affine from frame pixels to a 512 crop, upright along the eyes-to-lips axis."""
    eyes = (landmarks[list(_LEFT_EYE_CORNERS)].mean(0) + landmarks[list(_RIGHT_EYE_CORNERS)].mean(0)) / 2
    lips = landmarks[list(_LIP_CENTRE)].mean(0)
    down = lips - eyes
    length = float(np.linalg.norm(down))
    down = down / length if length > 1e-3 else np.array([0.0, 1.0])
    right = np.array([down[1], -down[0]])
    axes = np.stack([right, down])  # rows: crop x and y directions in frame space
    centre0 = landmarks.mean(0)
    local = (landmarks - centre0) @ axes.T
    low, high = local.min(0), local.max(0)
    side = float(max(high - low)) * CROP_SCALE
    centre = centre0 + axes.T @ ((low + high) / 2) - down * (CROP_SHIFT_UP * side)
    scale = CROP_SIZE / side
    linear = axes * scale
    offset = CROP_SIZE / 2 - linear @ centre
    return np.concatenate([linear, offset[:, None]], axis=1).astype(np.float32)


def eye_features(landmarks_crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eye openness (2,) and eye-ball movement (6,) from mediapipe landmarks in crop pixels.

    Openness: three lid gaps over the eye width, per eye. Movement: the iris offset from the eye
    centre, taken along the iris direction minus the eye-corner direction, scaled by its length,
    laid out (x, y, z) x (left, right); z is 0 (the registry's landmarks are 2-D).
    """
    points = np.concatenate([landmarks_crop, np.zeros((len(landmarks_crop), 1))], axis=1)

    def unit(v: np.ndarray) -> np.ndarray:
        return v / (np.linalg.norm(v) + 1e-8)

    def one_eye(corners: tuple[int, int], lids: tuple[tuple[int, int], ...], iris: int) -> tuple[float, np.ndarray]:
        outer, inner = points[corners[0]], points[corners[1]]
        width = np.linalg.norm(outer - inner)
        gaps = sum(np.linalg.norm(points[a] - points[b]) for a, b in lids)
        centre = (outer + inner) / 2
        ball = points[iris]
        move = (unit(ball - centre) - unit(outer - inner)) * np.linalg.norm(ball - centre)
        return gaps / (width + 1e-8), move

    left_open, left_move = one_eye(_LEFT_EYE_CORNERS, _LEFT_LIDS, _LEFT_IRIS)
    right_open, right_move = one_eye(_RIGHT_EYE_CORNERS, _RIGHT_LIDS, _RIGHT_IRIS)
    opening = np.array([left_open, right_open], dtype=np.float32)
    movement = np.stack([left_move, right_move], axis=-1).reshape(-1).astype(np.float32)
    return opening, movement


def condition_extra(width: int, eye_open: np.ndarray, eye_ball: np.ndarray, source_kp: np.ndarray) -> np.ndarray:
    """The per-frame condition after the audio feature: emotion 8 | eye open 2 | eye ball 6 | kp 63."""
    parts = [emotion_condition(), eye_open, eye_ball, source_kp.reshape(-1)]
    extra = np.concatenate(parts).astype(np.float32)
    if extra.shape[0] != width:
        raise RenderError(
            f"LMDM expects {width} condition values after the audio feature; this pipeline builds "
            f"{extra.shape[0]} (emotion 8, eye open 2, eye ball 6, keypoints 63)"
        )
    return extra


def prepare_avatar(assets: AvatarAssets, networks, *, max_size: int, template_frames: int) -> PreparedAvatar:
    """Runs the per-avatar networks (call on the engine's worker thread)."""
    if assets.landmark_layout != "mediapipe478" or assets.landmarks.shape[1] < _MESH_POINTS:
        raise InvalidInput(
            f"Ditto needs mediapipe478 face landmarks, avatar {assets.info.id} has {assets.landmark_layout}",
            stage="render",
        )
    count = max(1, min(template_frames, assets.frames.shape[0]))
    frames, scale = output_frames(np.ascontiguousarray(assets.frames[:count]), max_size)
    landmarks = assets.landmarks[:count, :, :2].astype(np.float64) * scale
    affines = np.stack([crop_affine(points) for points in landmarks])
    source_size = networks.sizes.source_size
    inputs, opens, balls = [], [], []
    for frame, affine, points in zip(frames, affines, landmarks):
        crop = cv2.warpAffine(frame, affine, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR)
        small = cv2.resize(crop, (source_size, source_size), interpolation=cv2.INTER_AREA)
        inputs.append(small)
        crop_points = points @ affine[:, :2].T.astype(np.float64) + affine[:, 2]
        opening, movement = eye_features(crop_points)
        opens.append(opening)
        balls.append(movement)
    images = torch.from_numpy(np.stack(inputs)).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        appearance = networks.appearance(images).cpu()
        info = {key: value.float().cpu() for key, value in networks.motion(images).items()}
    source_motion = motion_from_extractor(info)
    canonical_kp = info["kp"].reshape(count, -1)
    extra = condition_extra(
        networks.cond_dim - networks.sizes.audio_dim, opens[0], balls[0], canonical_kp[0].numpy()
    )
    return PreparedAvatar(frames, affines, appearance, source_motion, canonical_kp, extra)


def cache_key(assets: AvatarAssets, weights_id: str, *, max_size: int, template_frames: int) -> str:
    """Names a prepared avatar by content, weights and prep settings."""
    text = f"{PREP_VERSION}|{assets.info.content_sha256}|{weights_id}|{max_size}|{template_frames}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def load_or_prepare(
    assets: AvatarAssets, networks, *, weights_id: str, max_size: int, template_frames: int
) -> PreparedAvatar:
    """The cached preparation if present and readable, else a fresh one (then cached)."""
    folder = Path(assets.cache_dir) / "ditto"
    path = folder / f"prepared-{cache_key(assets, weights_id, max_size=max_size, template_frames=template_frames)}.pt"
    if path.exists():
        try:
            data = torch.load(path, map_location="cpu", weights_only=False)
            return PreparedAvatar(**data)
        except Exception as exc:  # a torn or stale cache file is rebuilt, not fatal
            log.warning("ditto avatar cache %s unreadable (%s); preparing again", path, exc)
    prepared = prepare_avatar(assets, networks, max_size=max_size, template_frames=template_frames)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        torch.save(prepared.__dict__, temporary)
        temporary.replace(path)
    except OSError as exc:
        log.warning("could not cache ditto avatar at %s: %s", path, exc)
    return prepared


def mirror_index(index: int, count: int) -> int:
    """Plays template frames forth and back: 0 1 2 2 1 0 0 1 ..."""
    if count <= 1:
        return 0
    turn, rest = divmod(index, count)
    return rest if turn % 2 == 0 else count - 1 - rest

