"""Source registration, stage by stage: their face models' wrappers, crop, eye attributes, Source2Info's
256 input, motion and appearance extractors and transform_keypoint, against ours, on the same image,
the same landmarks and the same full-size stand-in weights.

The stand-in face models are random: they find no real face, so the crop stage takes the landmarks
their landmark203 wrapper returns (the same for both sides) and the eye stage takes mediapipe's 478
landmarks of a crop made from the example portrait's real mediapipe landmarks.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from avatar_server.renderers.ditto import checkpoints as layout
from avatar_server.renderers.ditto.keypoints import SourceFace, motion_from_extractor
from avatar_server.renderers.ditto.registration import crop_eye_landmarks, mediapipe_crop
from avatar_server.renderers.ditto.registration.crop import (
    CROP_SIZE,
    CropParameters,
    crop_transform,
    network_input,
    warp_crop,
)
from avatar_server.renderers.ditto.registration.eyes import eye_conditions
from avatar_server.renderers.ditto.registration.face_models import (
    FaceDetector,
    Landmarks106,
    Landmarks203,
    largest_box,
)
from fidelity.reference_harness import REPO, reference_fp32


def _rgb(path: Path) -> np.ndarray:
    return np.ascontiguousarray(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))


@pytest.fixture(scope="module")
def their_image(ditto_reference) -> np.ndarray:
    return _rgb(ditto_reference.root / "example" / "image.png")


@pytest.fixture(scope="module")
def face_chain(ditto_reference, standin_full, their_image, fidelity_table):
    """Boxes -> 106 -> 203 landmarks through their wrappers and ours on the stand-in face models."""
    det_mod = ditto_reference.module("core.aux_models.insightface_det")
    l106_mod = ditto_reference.module("core.aux_models.insightface_landmark106")
    l203_mod = ditto_reference.module("core.aux_models.landmark203")
    their_det = det_mod.InsightFaceDet(**ditto_reference.network_cfg(standin_full, layout.DETECTOR_AUX))
    their_106 = l106_mod.Landmark106(**ditto_reference.network_cfg(standin_full, layout.LANDMARK106_AUX))
    their_203 = l203_mod.Landmark203(**ditto_reference.network_cfg(standin_full, layout.LANDMARK203_AUX))
    det, _ = their_det(their_image)
    ours_det = FaceDetector(standin_full / layout.DETECTOR_AUX).detect(their_image)
    if len(det) == 0:
        pytest.skip("the stand-in detector found no box on the example image; nothing to compare")
    their_box = det[np.argsort(-(det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1]))][0]
    return {"det": (ours_det, det), "box": (largest_box(ours_det), their_box),
            "their_106": their_106, "their_203": their_203}


def test_face_boxes_equal_theirs(face_chain, fidelity_table) -> None:
    ours, theirs = face_chain["det"]
    fidelity_table.check("registration: det_10g boxes after NMS", ours, theirs, note=f"{len(theirs)} boxes")


def test_landmarks_106_and_203_equal_theirs(face_chain, ditto_reference, standin_full, their_image,
                                            fidelity_table) -> None:
    box = face_chain["box"][1]
    theirs_106 = face_chain["their_106"](their_image, box)
    ours_106 = Landmarks106(standin_full / layout.LANDMARK106_AUX)(their_image, box)
    fidelity_table.check("registration: 106 landmarks", ours_106, theirs_106)
    crop_utils = ditto_reference.module("core.utils.crop")
    track = crop_utils.crop_image(their_image, theirs_106, dsize=224, scale=1.5, vy_ratio=-0.1, pt_crop_flag=False)
    theirs_203 = face_chain["their_203"](track["img_crop"], track["M_c2o"])
    ours_203 = Landmarks203(standin_full / layout.LANDMARK203_AUX)(their_image, theirs_106)
    fidelity_table.check("registration: 203 landmarks", ours_203, theirs_203)


@pytest.fixture(scope="module")
def crops(ditto_reference, their_image, standin_full):
    """Their 512 crop (crop_image, the release's parameters) and ours, from the same 203 landmarks."""
    crop_utils = ditto_reference.module("core.utils.crop")
    lmk203 = Landmarks203(standin_full / layout.LANDMARK203_AUX)(
        their_image, _plausible_106(their_image))
    theirs = crop_utils.crop_image(their_image, lmk203, dsize=512, scale=2.3, vx_ratio=0, vy_ratio=-0.125,
                                   flag_do_rot=True, pt_crop_flag=False)
    m_o2c, m_c2o = crop_transform(lmk203, CROP_SIZE, CropParameters())
    return {"theirs": theirs, "ours": (m_o2c, m_c2o, warp_crop(their_image, m_o2c, CROP_SIZE))}


def _plausible_106(image: np.ndarray) -> np.ndarray:
    """106 points scattered over the image's centre (the stand-in models find no face)."""
    rng = np.random.default_rng(0)
    height, width = image.shape[:2]
    return (rng.random((106, 2)) * 0.4 + 0.3) * np.array([width, height], np.float32)


def test_crop_matrix_equals_theirs(crops, fidelity_table) -> None:
    _, m_c2o, image = crops["ours"]
    fidelity_table.check("registration: crop matrix M_c2o", m_c2o, crops["theirs"]["M_c2o"])
    fidelity_table.check("registration: 512 crop, 8-bit levels", image, crops["theirs"]["img_crop"],
                         tolerance=0.0, kind="absolute")


@pytest.mark.parametrize("which", ["project example (astronaut)", "authors' example"])
def test_eye_conditions_equal_theirs(which, ditto_reference, their_image, fidelity_table) -> None:
    """Same 478 normalised landmarks to both: their EyeAttrUtilsByMP vs our eye_conditions (1e-5)."""
    from avatar_server.avatars.landmarks import MediaPipeFaceLandmarker

    image = _rgb(REPO / "example" / "astronaut.png") if which.startswith("project") else their_image
    faces = MediaPipeFaceLandmarker(max_faces=1).detect(image)
    assert faces, "mediapipe finds the example face"
    m_o2c, _ = mediapipe_crop(faces[0].landmarks, CropParameters())
    crop = warp_crop(image, m_o2c, CROP_SIZE)
    landmarks, by_mediapipe = crop_eye_landmarks(crop, faces[0].landmarks)  # mediapipe on the crop, 3-D
    assert by_mediapipe
    assert np.abs(landmarks[:, 2]).max() > 0, "the landmarks are 3-D"
    eye_info = ditto_reference.module("core.utils.eye_info")
    attributes = eye_info.EyeAttrUtilsByMP(landmarks[None])
    ours_open, ours_ball = eye_conditions(landmarks[None])
    fidelity_table.check(f"registration: eye open, {which}", ours_open, attributes.LR_open().reshape(-1, 2),
                         tolerance=1e-5, kind="absolute")
    fidelity_table.check(f"registration: eye ball, {which}", ours_ball, attributes.LR_ball_move().reshape(-1, 6),
                         tolerance=1e-5, kind="absolute")


def test_source_keypoints_and_features_equal_theirs(ditto_reference, crops, standin_full, our_networks,
                                                    fidelity_table) -> None:
    source2info = ditto_reference.module("core.atomic_components.source2info")
    stitch = ditto_reference.module("core.atomic_components.motion_stitch")
    crop = crops["theirs"]["img_crop"]
    theirs_input = source2info.Source2Info._img_crop_to_bchw256(crop)
    ours_input = network_input(crop, 256).astype(np.float32)[None].transpose(0, 3, 1, 2) / 255.0
    fidelity_table.check("registration: 256 network input", ours_input, theirs_input, tolerance=0.0, kind="absolute")
    motion_cls = ditto_reference.module("core.models.motion_extractor").MotionExtractor
    appearance_cls = ditto_reference.module("core.models.appearance_extractor").AppearanceExtractor
    with reference_fp32():
        kp_info = motion_cls(**ditto_reference.network_cfg(standin_full, layout.PTH_FILES["motion_extractor"]))(theirs_input)
        f_s = appearance_cls(**ditto_reference.network_cfg(standin_full, layout.PTH_FILES["appearance_extractor"]))(theirs_input)
    with torch.inference_mode():
        image = torch.from_numpy(ours_input)
        info = {k: v.float() for k, v in our_networks.motion(image).items()}
        appearance = our_networks.appearance(image).float()
    for key in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp"):
        fidelity_table.check(f"registration: motion extractor {key}", info[key].reshape(kp_info[key].shape).numpy(), kp_info[key])
    fidelity_table.check("registration: appearance volume f_s", appearance.numpy(), f_s)
    source = SourceFace(motion_from_extractor(info), info["kp"].reshape(1, -1))
    fidelity_table.check("registration: source keypoints x_s", source.keypoints().numpy(), stitch.transform_keypoint(kp_info))
