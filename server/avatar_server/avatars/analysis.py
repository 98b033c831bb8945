"""Finds the one face in an avatar's frames: landmarks and box per frame, and a square crop."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from avatar_server.avatars.landmarks import FaceLandmarker
from avatar_server.core.errors import InvalidInput

MIN_FACE_PIXELS = 80  # a face narrower than this has too few pixels to animate
MAX_MISSED_FRACTION = 0.1  # a base video may lose the face in this share of frames
CROP_SCALE = 1.8  # the crop's side, in face sizes
MAX_FACE_REGION = 512  # frames are scaled so the face crop is at most this many pixels wide


@dataclass(frozen=True)
class FaceAnalysis:
    """Per-frame landmarks (T, N, 2) and face boxes (T, 4), one square crop x0, y0, x1, y1,
    and the landmark layout they follow (a key of `landmarks.LAYOUTS`)."""

    landmarks: np.ndarray
    boxes: np.ndarray
    crop_box: np.ndarray
    layout: str


def analyse_faces(frames: np.ndarray, landmarker: FaceLandmarker) -> FaceAnalysis:
    """Landmarks for every frame; InvalidInput unless exactly one large enough face is there.

    A frame where a video loses the face borrows the nearest earlier frame's landmarks.
    """
    first = landmarker.detect(frames[0])
    if not first:
        raise InvalidInput("no face found in the picture; use a clear, frontal portrait")
    if len(first) > 1:
        raise InvalidInput(f"found {len(first)} faces in the picture; an avatar needs exactly one")
    face_width = float(first[0].box[2] - first[0].box[0])
    if face_width < MIN_FACE_PIXELS:
        raise InvalidInput(
            f"the face is only {face_width:.0f} pixels wide; it needs at least {MIN_FACE_PIXELS} "
            "(use a larger or closer portrait)"
        )
    landmarks = [first[0].landmarks]
    boxes = [first[0].box]
    missed = 0
    for frame in frames[1:]:
        faces = landmarker.detect(frame)
        if faces:
            previous = boxes[-1]
            nearest = min(faces, key=lambda face: float(np.abs(face.box - previous).sum()))
            landmarks.append(nearest.landmarks)
            boxes.append(nearest.box)
        else:
            missed += 1
            landmarks.append(landmarks[-1])
            boxes.append(boxes[-1])
    if missed > MAX_MISSED_FRACTION * len(frames):
        raise InvalidInput(
            f"the face is lost in {missed} of {len(frames)} video frames; keep it in view"
        )
    boxes_array = np.stack(boxes).astype(np.float32)
    return FaceAnalysis(
        landmarks=np.stack(landmarks).astype(np.float32),
        boxes=boxes_array,
        crop_box=square_crop(boxes_array, frames.shape[2], frames.shape[1]),
        layout=landmarker.layout,
    )


def square_crop(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """A square around all face boxes, `CROP_SCALE` faces wide, kept inside the frame."""
    low, high = boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)
    centre = (low + high) / 2
    side = min(float(CROP_SCALE * (high - low).max()), float(width), float(height))
    x0 = float(np.clip(centre[0] - side / 2, 0, width - side))
    y0 = float(np.clip(centre[1] - side / 2, 0, height - side))
    return np.array([x0, y0, x0 + side, y0 + side], np.float32)


def face_region_size(width: int, height: int, analysis: FaceAnalysis) -> tuple[int, int]:
    """The even frame size at which the face crop is at most `MAX_FACE_REGION` pixels wide.

    Renderers work at this size: more pixels would cost time without a better face.
    """
    side = float(analysis.crop_box[2] - analysis.crop_box[0])
    scale = min(1.0, MAX_FACE_REGION / side)
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def resized(
    frames: np.ndarray, analysis: FaceAnalysis, size: tuple[int, int]
) -> tuple[np.ndarray, FaceAnalysis]:
    """Frames and their analysis scaled to `size` (width, height)."""
    height, width = frames.shape[1:3]
    if (width, height) == size:
        return frames, analysis
    factor = np.array([size[0] / width, size[1] / height], np.float32)
    frames = np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in frames])
    return frames, replace(
        analysis,
        landmarks=analysis.landmarks * factor,
        boxes=analysis.boxes * np.tile(factor, 2),
        crop_box=analysis.crop_box * np.tile(factor, 2),
    )


def save_analysis(path: Path, analysis: FaceAnalysis, *, source_sha256: str) -> None:
    """Writes `analysis` of the source with this SHA-256, for `load_analysis` to reuse."""
    np.savez_compressed(
        path,
        source_sha256=np.array(source_sha256),
        landmarks=analysis.landmarks,
        boxes=analysis.boxes,
        crop_box=analysis.crop_box,
        layout=np.array(analysis.layout),
    )


def load_analysis(path: Path, *, source_sha256: str) -> FaceAnalysis | None:
    """The analysis `save_analysis` wrote for exactly these source bytes; None if there is
    none or it was made from other bytes (then the source must be analysed again)."""
    if not path.is_file():
        return None
    with np.load(path) as saved:
        if str(saved["source_sha256"]) != source_sha256:
            return None
        return FaceAnalysis(
            landmarks=saved["landmarks"],
            boxes=saved["boxes"],
            crop_box=saved["crop_box"],
            layout=str(saved["layout"]),
        )
