"""Face landmark detection behind a small interface, with the offline MediaPipe Face Mesh as default.

The rest of the project sees only `FaceLandmarker` and the named point groups
below, so a better detector can replace MediaPipe by implementing the protocol
and publishing the same groups for its layout.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class FaceDetection:
    """One face: landmarks in image pixels (N, 2) float32 and their bounding box x0, y0, x1, y1;
    `normalised` (N, 3) float32 is the detector's own output where it has one (mediapipe: x / w,
    y / h, z / w), which Ditto's eye conditions are defined on."""

    landmarks: np.ndarray
    box: np.ndarray
    normalised: np.ndarray | None = None


class FaceLandmarker(Protocol):
    """Finds faces and their landmarks in RGB images."""

    layout: str  # e.g. "mediapipe478"; names the index groups in `LAYOUTS`

    def detect(self, rgb: np.ndarray) -> list[FaceDetection]:
        """All faces in `rgb` (H, W, 3 uint8), largest first, each image on its own."""
        ...


@dataclass(frozen=True)
class LandmarkGroups:
    """Index groups of a landmark layout that renderers rely on (all ordered along the contour)."""

    lips_outer_upper: tuple[int, ...]  # corner to corner, image-left first
    lips_outer_lower: tuple[int, ...]
    lips_inner_upper: tuple[int, ...]
    lips_inner_lower: tuple[int, ...]
    jaw: tuple[int, ...]  # lower face contour, ear to ear through the chin
    chin: int
    nose: tuple[int, ...]  # rigid points: bridge, tip, base
    cheeks: tuple[int, ...]
    left_eye_upper: tuple[int, ...]  # image-left eye, outer to inner corner
    left_eye_lower: tuple[int, ...]
    right_eye_upper: tuple[int, ...]
    right_eye_lower: tuple[int, ...]
    brows: tuple[int, ...]
    face_oval: tuple[int, ...]


MEDIAPIPE_478 = LandmarkGroups(
    lips_outer_upper=(61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291),
    lips_outer_lower=(61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291),
    lips_inner_upper=(78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308),
    lips_inner_lower=(78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308),
    jaw=(132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361),
    chin=152,
    nose=(168, 6, 197, 195, 5, 4, 1, 2, 98, 327),
    cheeks=(50, 280, 205, 425, 207, 427, 187, 411),
    left_eye_upper=(33, 246, 161, 160, 159, 158, 157, 173, 133),
    left_eye_lower=(33, 7, 163, 144, 145, 153, 154, 155, 133),
    right_eye_upper=(263, 466, 388, 387, 386, 385, 384, 398, 362),
    right_eye_lower=(263, 249, 390, 373, 374, 380, 381, 382, 362),
    brows=(70, 63, 105, 66, 107, 336, 296, 334, 293, 300),
    face_oval=(
        10,
        338,
        297,
        332,
        284,
        251,
        389,
        356,
        454,
        323,
        361,
        288,
        397,
        365,
        379,
        378,
        400,
        377,
        152,
        148,
        176,
        149,
        150,
        136,
        172,
        58,
        132,
        93,
        234,
        127,
        162,
        21,
        54,
        103,
        67,
        109,
    ),
)

LAYOUTS: dict[str, LandmarkGroups] = {"mediapipe478": MEDIAPIPE_478}


def inner_lip_gap(landmarks: np.ndarray, groups: LandmarkGroups = MEDIAPIPE_478) -> float:
    """Mean vertical gap between the inner lip contours (pixels): how open the mouth is."""
    upper = landmarks[list(groups.lips_inner_upper[2:-2])]
    lower = landmarks[list(groups.lips_inner_lower[2:-2])]
    return float(np.linalg.norm(lower - upper, axis=1).mean())


def mouth_width(landmarks: np.ndarray, groups: LandmarkGroups = MEDIAPIPE_478) -> float:
    """Distance between the mouth corners (pixels): the face's scale for mouth motion."""
    return float(
        np.linalg.norm(
            landmarks[groups.lips_outer_upper[-1]] - landmarks[groups.lips_outer_upper[0]]
        )
    )


class MediaPipeFaceLandmarker:
    """MediaPipe Face Mesh (478 points with irises), whose model ships inside the mediapipe wheel.

    Finds up to `max_faces` faces so callers can reject pictures with several.
    Calls are serialised: a MediaPipe graph is not thread-safe.
    """

    layout = "mediapipe478"

    def __init__(self, *, max_faces: int = 3, min_confidence: float = 0.5) -> None:
        import mediapipe as mp  # heavy import, only when a landmarker is made

        # Static mode: every frame is detected afresh, so one video's face never leaks
        # into the next call's result through the tracker.
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=max_faces,
            refine_landmarks=True,
            min_detection_confidence=min_confidence,
        )
        self._lock = threading.Lock()

    def detect(self, rgb: np.ndarray) -> list[FaceDetection]:
        """All faces in `rgb`, largest first (see `FaceLandmarker.detect`)."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
        height, width = rgb.shape[:2]
        with self._lock:
            result = self._mesh.process(np.ascontiguousarray(rgb))
        faces = []
        for face in result.multi_face_landmarks or ():
            normalised = np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float32)
            points = (normalised[:, :2] * np.array([width, height], np.float32)).astype(np.float32)
            box = np.concatenate([points.min(axis=0), points.max(axis=0)]).astype(np.float32)
            faces.append(FaceDetection(landmarks=points, box=box, normalised=normalised))
        faces.sort(key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        return faces

    def close(self) -> None:
        """Frees the MediaPipe graph."""
        with self._lock:
            self._mesh.close()
