#!/usr/bin/env python3
"""How far the mediapipe-only registration crop is from the release's, on real portraits.

The release frames its 512 crop from 203 landmarks of its own model (landmark203.onnx), whose
weights are not reachable here. As the closest independent stand-in for them, this script takes
dlib's 68 landmarks (jaw ear to ear, brows, eyes, nose, lips: the span the 203 layout covers) and
runs the AUTHORS' crop function (their core/utils/crop.py, which accepts 68 points) with the
release's parameters (scale 2.3, vy -0.125, rotation); against it, our mediapipe fallback crop
(registration.mediapipe_crop) and, for scale, the same authors' crop on all 478 mediapipe points.

dlib is not a project dependency (its 68-point model is for non-commercial research use): install
it to a side folder and point PYTHONPATH at it, e.g.
  pip install --no-deps --target /tmp/dlibpkgs dlib-bin face-recognition-models
  PYTHONPATH=server:/tmp/dlibpkgs .venv/bin/python bench/ditto_crop_fallback.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "server"))

from avatar_server.avatars.landmarks import MediaPipeFaceLandmarker
from avatar_server.renderers.ditto.registration import mediapipe_crop
from avatar_server.renderers.ditto.registration.crop import CropParameters


def geometry(m_c2o: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Centre (frame px), side (frame px) and rotation (degrees) of a 512 crop's square."""
    m = np.asarray(m_c2o, np.float64)
    centre = m[:2, :2] @ np.array([256.0, 256.0]) + m[:2, 2]
    side = 512.0 * float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))
    return centre, side, float(np.degrees(np.arctan2(m[1, 0], m[0, 0])))


def compare(name: str, reference: np.ndarray, other: np.ndarray) -> dict:
    (c0, s0, a0), (c1, s1, a1) = geometry(reference), geometry(other)
    return {"crop": name, "centre_offset_px": round(float(np.linalg.norm(c1 - c0)), 1),
            "centre_offset_of_side": round(float(np.linalg.norm(c1 - c0)) / s0, 4),
            "side_ratio": round(s1 / s0, 4), "rotation_diff_deg": round(a1 - a0, 2), "reference_side_px": round(s0, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    reference_root = Path(os.environ.get("DITTO_REFERENCE", ROOT.parent / "shared" / "reference" / "ditto-talkinghead"))
    parser.add_argument("images", nargs="*", type=Path,
                        default=[ROOT / "example" / "astronaut.png", reference_root / "example" / "image.png"])
    args = parser.parse_args()
    import importlib.util

    import dlib

    models = Path(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]) / "models"

    sys.path.insert(0, str(reference_root))
    from core.utils.crop import crop_image  # the authors' crop, unmodified

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat"))
    mediapipe = MediaPipeFaceLandmarker(max_faces=1)
    release = {"dsize": 512, "scale": 2.3, "vx_ratio": 0, "vy_ratio": -0.125, "flag_do_rot": True, "pt_crop_flag": False}
    rows = []
    for path in args.images:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        boxes = detector(rgb, 1)
        shape = predictor(rgb, max(boxes, key=lambda b: b.area()))
        dlib68 = np.array([[p.x, p.y] for p in shape.parts()], np.float32)
        mesh = mediapipe.detect(rgb)[0].landmarks
        reference = crop_image(rgb, dlib68, **release)["M_c2o"]
        ours = mediapipe_crop(mesh, CropParameters())[1]
        naive = crop_image(rgb, mesh, **release)["M_c2o"]
        for name, matrix in (("mediapipe fallback (ours)", ours), ("authors' crop on all 478 mediapipe points", naive)):
            rows.append({"image": path.name, "size": f"{rgb.shape[1]}x{rgb.shape[0]}", **compare(name, reference, matrix)})
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
