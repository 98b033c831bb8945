"""Ditto's source registration: avatar frames in; per frame a 512 face crop, its affine, eye conditions out.

Two paths, chosen by the checkpoints folder (`registration_aux_files`):
- release: the release's face models (det_10g -> 2d106det -> landmark203, ONNX Runtime) frame the
  crop as the authors' pipeline does; video frames after the first are tracked from the previous
  frame's 203 landmarks. An avatar where they find no face, or a face far from the one the avatar
  registry found, falls back to the mediapipe path (logged).
- mediapipe: the registry's mediapipe 478 landmarks frame the crop, over the points that cover what
  the 203 landmarks cover (brows to chin, ear to ear), with the same crop parameters. docs/ditto.md
  gives its measured difference from the release's crop.
Either way the eye conditions come from mediapipe's FaceMesh (the model family of the release's
face_landmarker.task, shipped inside the mediapipe wheel) run on the 512 crop, as the release does.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from avatar_server.renderers.ditto.registration.crop import (
    CROP_SIZE,
    CropParameters,
    crop_transform,
    transform_points,
    warp_crop,
)
from avatar_server.renderers.ditto.registration.eyes import eye_conditions
from avatar_server.renderers.ditto.registration.face_models import ReleaseFaceModels

log = logging.getLogger(__name__)

RELEASE_PATH = "release face models (det_10g -> 2d106det -> landmark203); eye conditions: mediapipe FaceMesh"
MEDIAPIPE_PATH = "mediapipe 478 landmarks (no face models in the checkpoints folder); eye conditions: mediapipe FaceMesh"
FALLBACK_PATH = "mediapipe 478 landmarks (the release's face models found no face matching the avatar's)"

# Mediapipe points spanning what the 203 landmarks span: brows, and the face contour from ear to ear
# through the chin (the mesh's forehead points are left out: the 203 layout stops at the brows).
MEDIAPIPE_HULL = (
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,  # brows
    127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152,  # contour, image-left ear to chin
    377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 356,  # contour, chin to image-right ear
)
# A release crop this far from the mediapipe one is taken for another face (or none).
MAX_CENTRE_OFFSET = 0.35  # of the mediapipe crop's side
MAX_SIDE_RATIO = 1.6


@dataclass(frozen=True)
class RegisteredFrames:
    """Per template frame: crop -> frame affine (3x3, the authors' M_c2o), the crop, eye conditions."""

    frame_from_crop: np.ndarray  # (T, 3, 3) float32
    crops: np.ndarray  # (T, 512, 512, 3) uint8
    eye_open: np.ndarray  # (T, 2) float32
    eye_ball: np.ndarray  # (T, 6) float32
    path: str  # RELEASE_PATH, MEDIAPIPE_PATH or FALLBACK_PATH, as this avatar took it


def mediapipe_crop(landmarks: np.ndarray, params: CropParameters) -> tuple[np.ndarray, np.ndarray]:
    """The fallback crop (M_o2c, M_c2o) from mediapipe 478 landmarks in frame pixels."""
    return crop_transform(landmarks[:, :2], CROP_SIZE, params, hull=landmarks[list(MEDIAPIPE_HULL), :2])


def _agrees(release: np.ndarray, fallback: np.ndarray) -> bool:
    """Whether two o2c crops frame about the same face (centre and side)."""
    def centre_side(m_o2c: np.ndarray) -> tuple[np.ndarray, float]:
        m_c2o = np.linalg.inv(m_o2c.astype(np.float64))
        return m_c2o[:2, :2] @ np.array([CROP_SIZE / 2] * 2) + m_c2o[:2, 2], float(np.abs(np.linalg.det(m_c2o[:2, :2])) ** 0.5)
    (a, side_a), (b, side_b) = centre_side(release), centre_side(fallback)
    ratio = max(side_a, side_b) / max(min(side_a, side_b), 1e-6)
    return float(np.linalg.norm(a - b)) <= MAX_CENTRE_OFFSET * side_b * CROP_SIZE and ratio <= MAX_SIDE_RATIO


EYES_FROM_AVATAR_LANDMARKS = "eye conditions from the avatar's 2-D landmarks (mediapipe missing, or no face in the crop)"


class _CropLandmarker:
    """One mediapipe FaceMesh for the eye conditions of every avatar (calls are serialised inside);
    None where mediapipe is not installed (a bare GPU machine), said once in the log."""

    _instance = None
    _missing = False
    _lock = threading.Lock()

    @classmethod
    def get(cls):
        with cls._lock:
            if cls._instance is None and not cls._missing:
                try:
                    from avatar_server.avatars.landmarks import MediaPipeFaceLandmarker

                    cls._instance = MediaPipeFaceLandmarker(max_faces=1)
                except ModuleNotFoundError as error:
                    cls._missing = True
                    log.warning("ditto registration: %s (%s); the avatar registry's 2-D landmarks stand in, "
                                "so the eye-ball condition's z is 0", EYES_FROM_AVATAR_LANDMARKS, error)
            return cls._instance


def crop_eye_landmarks(crop: np.ndarray, fallback_pixels: np.ndarray) -> tuple[np.ndarray, bool]:
    """Mediapipe's normalised (478, 3) landmarks of a 512 crop, and True; when mediapipe is missing
    or finds no face there, the registry's landmarks moved into the crop (x / w, y / h, z = 0) and
    False (logged)."""
    landmarker = _CropLandmarker.get()
    faces = landmarker.detect(crop) if landmarker is not None else []
    if faces and faces[0].normalised is not None:
        return faces[0].normalised, True
    if landmarker is not None:
        log.warning("mediapipe found no face in the Ditto crop; eye conditions from the avatar's 2-D landmarks")
    flat = np.zeros((len(fallback_pixels), 3), np.float32)
    flat[:, :2] = fallback_pixels / np.array([crop.shape[1], crop.shape[0]], np.float32)
    return flat, False


class Registrar:
    """Registers avatar frames on one path: the release's face models when given, else mediapipe's."""

    def __init__(self, face_models: ReleaseFaceModels | None, params: CropParameters) -> None:
        self.face_models = face_models
        self.params = params

    @property
    def path(self) -> str:
        return RELEASE_PATH if self.face_models is not None else MEDIAPIPE_PATH

    def register(self, frames: np.ndarray, landmarks: np.ndarray, avatar_id: str = "") -> RegisteredFrames:
        """(T, H, W, 3) uint8 frames and the registry's (T, 478, 2) landmarks on them (frame pixels)."""
        fallback = [mediapipe_crop(points, self.params) for points in landmarks]
        transforms, path = fallback, MEDIAPIPE_PATH if self.face_models is None else FALLBACK_PATH
        if self.face_models is not None:
            release = self._release_crops(frames, fallback)
            if release is None:
                log.warning("ditto avatar %s: the release's face models found no face where mediapipe found "
                            "one; registered with mediapipe landmarks instead", avatar_id)
            else:
                transforms, path = release, RELEASE_PATH
        crops = np.stack([warp_crop(frame, m_o2c, CROP_SIZE) for frame, (m_o2c, _) in zip(frames, transforms)])
        found = [crop_eye_landmarks(crop, transform_points(points[:, :2], m_o2c))
                 for crop, points, (m_o2c, _) in zip(crops, landmarks, transforms)]
        eye_open, eye_ball = eye_conditions(np.stack([points for points, _ in found]))
        if not all(by_mediapipe for _, by_mediapipe in found):
            path = f"{path.split('; eye conditions')[0]}; {EYES_FROM_AVATAR_LANDMARKS}"
        return RegisteredFrames(np.stack([m_c2o for _, m_c2o in transforms]).astype(np.float32), crops,
                                eye_open, eye_ball, path)

    def _release_crops(self, frames: np.ndarray, fallback: list) -> list | None:
        """The release's crops of every frame (tracked after the first), or None if any disagrees."""
        crops, previous = [], None
        for frame, (fallback_o2c, _) in zip(frames, fallback):
            points = self.face_models.landmarks(frame, previous)
            if points is None:
                return None
            m_o2c, m_c2o = crop_transform(points, CROP_SIZE, self.params)
            if not _agrees(m_o2c, fallback_o2c):
                return None
            crops.append((m_o2c, m_c2o))
            previous = points
        return crops
