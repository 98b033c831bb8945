"""Prepares an avatar for Ditto once: full-resolution frames, registration, appearance volumes, source motion.

Frames come from the avatar's upload at its own resolution, scaled as the authors scale a source
(longer side at most `max_size`, 1920 by default; even sides). Registration (registration/) crops
each template frame and measures its eye conditions; the 256 input of the appearance and motion
networks is the 512 crop area-scaled. The result is cached (torch.save of CPU tensors) under
`AvatarAssets.cache_dir / "ditto"`, keyed by the weights and every option that shapes it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from avatar_server.avatars.media_input import decode_media
from avatar_server.avatars.model import AvatarAssets
from avatar_server.core.errors import InvalidInput, RenderError
from avatar_server.renderers.ditto.keypoints import SourceFace, motion_from_extractor
from avatar_server.renderers.ditto.motion_diffusion import emotion_condition
from avatar_server.renderers.ditto.putback import PasteBack, to_i420_async
from avatar_server.renderers.ditto.registration import Registrar
from avatar_server.renderers.ditto.registration.crop import CROP_SIZE, CropParameters, network_input
from avatar_server.renderers.ditto.registration.eyes import MESH_POINTS

log = logging.getLogger(__name__)

PREP_VERSION = 2
PREP_BATCH = 16  # template frames per appearance / motion call


@dataclass(frozen=True)
class PrepOptions:
    """What shapes a prepared avatar (from the cfg .pkl and settings, see config.py)."""

    max_size: int = 1920  # longer side of output frames; <= 0: the source's own size
    template_frames: int = -1  # template frames of a video source; <= 0: all
    crop: CropParameters = field(default_factory=CropParameters)
    emotion: Any = 4  # the cfg's `emo`: a class index 0..7 or a list of them
    use_emo: bool = True
    use_eye_open: bool = True
    use_eye_ball: bool = True
    use_sc: bool = True

    def key(self) -> str:
        return repr(self)


@dataclass(frozen=True)
class PreparedAvatar:
    """What the Ditto pipeline needs of one avatar, on the host (cacheable)."""

    frames: np.ndarray  # (T, H, W, 3) uint8 template frames at output size
    frame_from_crop: np.ndarray  # (T, 3, 3) float32: crop pixels -> frame pixels (the authors' M_c2o)
    appearance: torch.Tensor  # (T, C, D, S, S) float32
    source_motion: torch.Tensor  # (T, 265)
    canonical_kp: torch.Tensor  # (T, 63)
    eye_open: np.ndarray  # (T, 2) per template frame
    eye_ball: np.ndarray  # (T, 6)
    cond_extra: np.ndarray  # (cond_dim - audio_dim,) emotion, eye open, eye ball, source keypoints (frame 0)
    registration: str  # the registration path this avatar took

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
        self.paste = PasteBack.build(prepared.frames, prepared.frame_from_crop, CROP_SIZE, device)
        # the template frames in I420 too (made here, on the engine thread, once per avatar and device)
        pixels = torch.tensor(prepared.frames).permute(0, 3, 1, 2).float()  # copy: read-only frames
        self._i420_frames = to_i420_async(pixels).numpy()

    def template_frames(self, frame_format: str) -> np.ndarray:
        """The template frames as rgb24 (T, H, W, 3) or I420 (T, H * 3 // 2, W), the latter with the
        conversion rendered frames get, so idle and speaking frames share one colour conversion."""
        return self.prepared.frames if frame_format == "rgb24" else self._i420_frames

    @property
    def template_count(self) -> int:
        """Number of template frames."""
        return int(self.prepared.frames.shape[0])


def output_size(height: int, width: int, max_size: int) -> tuple[int, int]:
    """(height, width) a source is scaled to, by the authors' rule: the longer side to `max_size`
    when larger (the other rounded), then each side down to even."""
    if max_size > 0 and max(height, width) > max_size:
        if height > width:
            height, width = max_size, round(width * max_size / height)
        else:
            height, width = round(height * max_size / width), max_size
    return height - height % 2, width - width % 2


def template_frames(assets: AvatarAssets, options: PrepOptions) -> tuple[np.ndarray, np.ndarray]:
    """The template frames at output size, from the upload at full resolution (else the registry's
    frames), and the registry's landmarks scaled onto them: (T, H, W, 3) uint8, (T, 478, 2) float32."""
    count = assets.frames.shape[0] if options.template_frames <= 0 else min(options.template_frames, assets.frames.shape[0])
    frames = assets.frames[:count]
    if assets.source_path is not None and Path(assets.source_path).is_file():
        media = decode_media(Path(assets.source_path).read_bytes(), native=True, max_frames=count)
        if len(media.frames) >= count:
            frames = media.frames[:count]
    height, width = output_size(frames.shape[1], frames.shape[2], options.max_size)
    if (height, width) != frames.shape[1:3]:
        frames = np.stack([cv2.resize(frame, (width, height)) for frame in frames])
    factor = np.array([width / assets.frames.shape[2], height / assets.frames.shape[1]], np.float32)
    landmarks = assets.landmarks[:count, :, :2].astype(np.float32) * factor
    return np.ascontiguousarray(frames), landmarks


def condition_extra(width: int, options: PrepOptions, eye_open: np.ndarray, eye_ball: np.ndarray,
                    source_kp: np.ndarray) -> np.ndarray:
    """The per-frame condition after the audio feature, in the authors' order, each part where the
    cfg switches it on: emotion 8 | eye open 2 | eye ball 6 | source keypoints 63."""
    parts = [(options.use_emo, emotion_condition(options.emotion)), (options.use_eye_open, eye_open),
             (options.use_eye_ball, eye_ball), (options.use_sc, source_kp.reshape(-1))]
    extra = np.concatenate([np.asarray(part, np.float32) for used, part in parts if used] or [np.zeros(0, np.float32)])
    if extra.shape[0] != width:
        raise RenderError(
            f"LMDM expects {width} condition values after the audio feature; this cfg builds "
            f"{extra.shape[0]} (emotion 8, eye open 2, eye ball 6, keypoints 63, as switched on)"
        )
    return extra


def prepare_avatar(assets: AvatarAssets, networks, registrar: Registrar, options: PrepOptions) -> PreparedAvatar:
    """Runs registration and the per-avatar networks (call on the engine's worker thread)."""
    if assets.landmark_layout != "mediapipe478" or assets.landmarks.shape[1] < MESH_POINTS:
        raise InvalidInput(
            f"Ditto needs mediapipe478 face landmarks, avatar {assets.info.id} has {assets.landmark_layout}",
            stage="render",
        )
    frames, landmarks = template_frames(assets, options)
    registered = registrar.register(frames, landmarks, assets.info.id)
    source_size = networks.sizes.source_size
    inputs = np.stack([network_input(crop, source_size) for crop in registered.crops])
    images = torch.from_numpy(inputs).permute(0, 3, 1, 2).float() / 255.0
    appearances, infos = [], []
    with torch.inference_mode():
        for batch in images.split(PREP_BATCH):  # bounded memory for long video avatars
            appearances.append(networks.appearance(batch).float().cpu())
            infos.append({key: value.float().cpu() for key, value in networks.motion(batch).items()})
    appearance = torch.cat(appearances)
    info = {key: torch.cat([part[key] for part in infos]) for key in infos[0]}
    source_motion = motion_from_extractor(info)
    canonical_kp = info["kp"].reshape(len(frames), -1)
    extra = condition_extra(networks.cond_dim - networks.sizes.audio_dim, options, registered.eye_open[0],
                            registered.eye_ball[0], canonical_kp[0].numpy())
    return PreparedAvatar(frames, registered.frame_from_crop, appearance, source_motion, canonical_kp,
                          registered.eye_open, registered.eye_ball, extra, registered.path)


def cache_key(assets: AvatarAssets, weights_id: str, registration: str, options: PrepOptions) -> str:
    """Names a prepared avatar by content, weights, registration path and prep options."""
    text = f"{PREP_VERSION}|{assets.info.content_sha256}|{weights_id}|{registration}|{options.key()}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def load_or_prepare(assets: AvatarAssets, networks, registrar: Registrar, *, weights_id: str,
                    options: PrepOptions) -> PreparedAvatar:
    """The cached preparation if present and readable, else a fresh one (then cached)."""
    folder = Path(assets.cache_dir) / "ditto"
    path = folder / f"prepared-{cache_key(assets, weights_id, registrar.path, options)}.pt"
    if path.exists():
        try:
            data = torch.load(path, map_location="cpu", weights_only=False)
            return PreparedAvatar(**data)
        except Exception as exc:  # a torn or stale cache file is rebuilt, not fatal
            log.warning("ditto avatar cache %s unreadable (%s); preparing again", path, exc)
    prepared = prepare_avatar(assets, networks, registrar, options)
    log.info("ditto avatar %s prepared: %d template frame(s) at %dx%d, registration: %s", assets.info.id,
             len(prepared.frames), prepared.size[1], prepared.size[0], prepared.registration)
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

