"""The release's face models for registration, run with ONNX Runtime: boxes, 106 and 203 landmarks.

det_10g (an SCRFD detector) finds face boxes; 2d106det places 106 landmarks in a 192 square 1.5
times the box; a 224 crop around those (scale 1.5, shifted up 0.1, rotated) feeds landmark203,
whose points frame Ditto's 512 crop. Tensor names and pre/post-processing are the release's (the
authors' aux-model wrappers); see standin_aux.py for the table of inputs and outputs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatar_server.renderers.ditto.checkpoints import CheckpointsError
from avatar_server.renderers.ditto.registration.crop import (
    CropParameters,
    crop_transform,
    transform_points,
    warp_crop,
)

DETECTOR_SIZE = 512
DETECTOR_STRIDES = (8, 16, 32)
DETECTOR_ANCHORS = 2
SCORE_THRESHOLD = 0.5
NMS_THRESHOLD = 0.4
LANDMARK106_SIZE = 192
LANDMARK203_SIZE = 224
TRACK_CROP = CropParameters(scale=1.5, vx=0.0, vy=-0.1, rotate=True)  # the 224 crop for landmark203


def _session(path: Path, inputs: list[str]):
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        raise CheckpointsError(f"cannot load {path} with ONNX Runtime: {error}") from error
    found = [i.name for i in session.get_inputs()]
    if found != inputs:
        raise CheckpointsError(f"{path}: expected input(s) {inputs}, found {found}")
    return session


def _bgr_blob(image: np.ndarray, scale: float, mean: float) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> (1, 3, H, W) float32 in BGR order, (x - mean) * scale."""
    return cv2.dnn.blobFromImage(image, scale, image.shape[1::-1], (mean, mean, mean), swapRB=True)


class FaceDetector:
    """det_10g: RGB frame -> face boxes (n, 5: x0, y0, x1, y1, score), best score first."""

    def __init__(self, path: Path) -> None:
        self.session = _session(path, ["image"])
        if len(self.session.get_outputs()) != 3 * len(DETECTOR_STRIDES):
            raise CheckpointsError(f"{path}: expected 9 outputs (scores, boxes, kps per stride)")
        self._centres: dict[tuple[int, int], np.ndarray] = {}

    def _anchor_centres(self, rows: int, cols: int, stride: int) -> np.ndarray:
        key = (rows, cols, stride)
        if key not in self._centres:
            ys, xs = np.mgrid[:rows, :cols]
            centres = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
            self._centres[key] = np.repeat(centres, DETECTOR_ANCHORS, axis=0)
        return self._centres[key]

    def detect(self, frame: np.ndarray) -> np.ndarray:
        height, width = frame.shape[:2]
        if height / width > 1.0:
            new_h, new_w = DETECTOR_SIZE, int(DETECTOR_SIZE / (height / width))
        else:
            new_w, new_h = DETECTOR_SIZE, int(DETECTOR_SIZE * (height / width))
        scale = new_h / height
        canvas = np.zeros((DETECTOR_SIZE, DETECTOR_SIZE, 3), np.uint8)
        canvas[:new_h, :new_w] = cv2.resize(frame, (new_w, new_h))
        outputs = self.session.run(None, {"image": _bgr_blob(canvas, 1.0 / 128.0, 127.5)})
        levels = len(DETECTOR_STRIDES)
        scores, boxes = [], []
        for level, stride in enumerate(DETECTOR_STRIDES):
            side = DETECTOR_SIZE // stride
            centres = self._anchor_centres(side, side, stride)
            level_scores = outputs[level]
            distances = outputs[level + levels] * stride
            keep = np.where(level_scores >= SCORE_THRESHOLD)[0]
            corners = np.concatenate([centres - distances[:, :2], centres + distances[:, 2:4]], axis=1)
            scores.append(level_scores[keep])
            boxes.append(corners[keep])
        all_scores = np.vstack(scores).ravel()
        order = all_scores.argsort()[::-1]
        found = np.hstack([np.vstack(boxes) / scale, all_scores[:, None]]).astype(np.float32)[order]
        return found[_non_maximum_suppression(found)]


def _non_maximum_suppression(boxes: np.ndarray) -> list[int]:
    """Indices kept by greedy NMS (boxes sorted by score), overlaps above NMS_THRESHOLD dropped."""
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = boxes[:, 4].argsort()[::-1]
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        w = np.maximum(0.0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]) + 1)
        overlap = w * h / (areas[best] + areas[rest] - w * h)
        order = rest[overlap <= NMS_THRESHOLD]
    return keep


def largest_box(boxes: np.ndarray) -> np.ndarray | None:
    """The box of largest area (the face registration follows), or None when there is none."""
    if len(boxes) == 0:
        return None
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return boxes[np.argsort(-areas)][0]


class Landmarks106:
    """2d106det: RGB frame + face box -> 106 landmarks (106, 2) in frame pixels."""

    def __init__(self, path: Path) -> None:
        self.session = _session(path, ["data"])

    def __call__(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        width, height = box[2] - box[0], box[3] - box[1]
        cx, cy = (box[2] + box[0]) / 2, (box[3] + box[1]) / 2
        s = LANDMARK106_SIZE / (max(width, height) * 1.5)
        half = LANDMARK106_SIZE / 2
        matrix = np.array([[s, 0.0, half - cx * s], [0.0, s, half - cy * s]], dtype=np.float64)
        crop = cv2.warpAffine(frame, matrix, (LANDMARK106_SIZE, LANDMARK106_SIZE), borderValue=0.0)
        (pred,) = self.session.run(None, {"data": _bgr_blob(crop, 1.0, 0.0)})
        points = pred.reshape(-1, 2)[-106:]
        points = (points + 1) * (LANDMARK106_SIZE // 2)
        inverse = cv2.invertAffineTransform(matrix)
        return transform_points(points.astype(np.float64), inverse).astype(np.float32)


class Landmarks203:
    """landmark203: RGB frame + 106 (or earlier 203) landmarks -> 203 landmarks in frame pixels."""

    def __init__(self, path: Path) -> None:
        self.session = _session(path, ["input"])

    def __call__(self, frame: np.ndarray, guide: np.ndarray) -> np.ndarray:
        m_o2c, m_c2o = crop_transform(guide, LANDMARK203_SIZE, TRACK_CROP)
        crop = warp_crop(frame, m_o2c, LANDMARK203_SIZE)
        blob = (crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        out = self.session.run(None, {"input": blob})[0]
        return transform_points(out[0].reshape(-1, 2) * LANDMARK203_SIZE, m_c2o)


@dataclass
class ReleaseFaceModels:
    """The three models of one checkpoints folder; calls are serialised (one session each)."""

    detector: FaceDetector
    landmarks106: Landmarks106
    landmarks203: Landmarks203
    files: tuple[str, ...]

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @classmethod
    def load(cls, files: dict[str, Path]) -> ReleaseFaceModels:
        return cls(FaceDetector(files["det_10g.onnx"]), Landmarks106(files["2d106det.onnx"]),
                   Landmarks203(files["landmark203.onnx"]), tuple(files))

    def landmarks(self, frame: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray | None:
        """203 landmarks of the largest face (or tracked from the previous frame's 203), None if no face."""
        with self._lock:
            if previous is None:
                box = largest_box(self.detector.detect(frame))
                if box is None:
                    return None
                previous = self.landmarks106(frame, box)
            return self.landmarks203(frame, previous)
