"""The offline face landmarker (MediaPipe Face Mesh from the wheel) and the landmark groups renderers use."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
from avatar_server.avatars.landmarks import (
    LAYOUTS,
    MEDIAPIPE_478,
    FaceLandmarker,
    MediaPipeFaceLandmarker,
    inner_lip_gap,
    mouth_width,
)
from lipsync_helpers import SHARED

PORTRAIT = SHARED / "fixtures" / "ditto_example_portrait.jpg"


@pytest.fixture(scope="module")
def landmarker() -> FaceLandmarker:
    return MediaPipeFaceLandmarker()


def test_finds_one_face_with_478_points_on_the_astronaut(landmarker):
    faces = landmarker.detect(skimage.data.astronaut())
    assert len(faces) == 1
    points = faces[0].landmarks
    assert points.shape == (478, 2) and points.dtype == np.float32
    x0, y0, x1, y1 = faces[0].box
    assert 150 < x0 < x1 < 300 and 40 < y0 < y1 < 220  # where her face is
    # Eyes above the mouth, mouth above the chin, in image coordinates.
    eyes_y = points[list(MEDIAPIPE_478.left_eye_upper + MEDIAPIPE_478.right_eye_upper), 1].mean()
    assert eyes_y < points[13, 1] < points[MEDIAPIPE_478.chin, 1]
    assert 30 < mouth_width(points) < 60
    assert 0 <= inner_lip_gap(points) < 12


def test_layout_groups_name_real_points():
    for groups in LAYOUTS.values():
        for name, value in vars(groups).items():
            indices = value if isinstance(value, tuple) else (value,)
            assert all(0 <= i < 478 for i in indices), name
    assert MEDIAPIPE_478.lips_inner_upper[0] == MEDIAPIPE_478.lips_inner_lower[0]
    assert MEDIAPIPE_478.lips_inner_upper[-1] == MEDIAPIPE_478.lips_inner_lower[-1]


def test_no_face_and_bad_arrays(landmarker):
    assert landmarker.detect(np.full((256, 256, 3), 200, np.uint8)) == []
    with pytest.raises(ValueError):
        landmarker.detect(np.zeros((64, 64), np.uint8))


@pytest.mark.skipif(
    not PORTRAIT.exists(), reason="needs ../shared/fixtures (the project's sibling folder)"
)
def test_works_on_a_painted_portrait(landmarker):
    image = cv2.cvtColor(cv2.imread(str(PORTRAIT)), cv2.COLOR_BGR2RGB)
    faces = landmarker.detect(image)
    assert len(faces) == 1 and faces[0].box[2] - faces[0].box[0] > 300
