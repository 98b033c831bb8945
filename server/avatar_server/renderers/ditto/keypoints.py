"""Turns LMDM motion vectors (265) into driven implicit keypoints, relative to the source face.

Motion layout: scale - 1 (1) | pitch bins (66) | yaw bins (66) | roll bins (66) | t (3) | exp (63).
The canonical keypoints are never generated: they stay the source's. All functions are batched
torch code on whatever device their inputs live on (float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_KP = 21
NUM_BINS = 66
MOTION_DIM = 1 + 3 * NUM_BINS + 3 + 3 * NUM_KP  # 265
SMOOTHED_DIMS = 1 + 3 * NUM_BINS + 3  # scale, pose and shift: the dims the 3-frame average smooths

_SCALE = slice(0, 1)
_PITCH = slice(1, 1 + NUM_BINS)
_YAW = slice(1 + NUM_BINS, 1 + 2 * NUM_BINS)
_ROLL = slice(1 + 2 * NUM_BINS, 1 + 3 * NUM_BINS)
_T = slice(1 + 3 * NUM_BINS, 1 + 3 * NUM_BINS + 3)
_EXP = slice(1 + 3 * NUM_BINS + 3, MOTION_DIM)

LIP_KEYPOINTS = (6, 12, 14, 17, 19, 20)
EYE_KEYPOINTS = (11, 13, 15, 16, 18)

# Gaze correction: degrees of head turn -> shift of the eye-ball expression entries (Ditto's values).
_GAZE_X_PER_YAW = 0.26
_GAZE_Y_PER_PITCH = 0.28


def motion_from_extractor(info: dict[str, torch.Tensor]) -> torch.Tensor:
    """Motion-extractor outputs (pitch/yaw/roll bins, t, exp, scale) -> (B, 265) motion vectors."""
    return torch.cat(
        [info["scale"] - 1.0, info["pitch"], info["yaw"], info["roll"], info["t"], info["exp"]], dim=-1
    ).float()


def bins_to_degrees(bins: torch.Tensor) -> torch.Tensor:
    """(..., 66) pose-bin logits -> (...) degrees: expected bin index x 3 - 97.5."""
    index = torch.arange(bins.shape[-1], dtype=bins.dtype, device=bins.device)
    return (bins.softmax(dim=-1) * index).sum(dim=-1) * 3.0 - 97.5


def rotation_matrices(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Degrees (B,) -> (B, 3, 3): (Rz @ Ry @ Rx) transposed, so that row vectors times it rotate."""
    x, y, z = (torch.deg2rad(a) for a in (pitch, yaw, roll))
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rot_x = torch.stack([one, zero, zero, zero, x.cos(), -x.sin(), zero, x.sin(), x.cos()], -1)
    rot_y = torch.stack([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], -1)
    rot_z = torch.stack([z.cos(), -z.sin(), zero, z.sin(), z.cos(), zero, zero, zero, one], -1)
    shape = x.shape + (3, 3)
    rot = rot_z.reshape(shape) @ rot_y.reshape(shape) @ rot_x.reshape(shape)
    return rot.transpose(-1, -2)


def keypoints_from_motion(motion: torch.Tensor, canonical_kp: torch.Tensor) -> torch.Tensor:
    """x = scale * (kp_c @ R + exp) + t (only t's x, y): (B, 265), (B, 63) -> (B, 21, 3)."""
    batch = motion.shape[0]
    rot = rotation_matrices(
        bins_to_degrees(motion[:, _PITCH]), bins_to_degrees(motion[:, _YAW]), bins_to_degrees(motion[:, _ROLL])
    )
    kp = canonical_kp.reshape(batch, NUM_KP, 3) @ rot + motion[:, _EXP].reshape(batch, NUM_KP, 3)
    kp = kp * (motion[:, _SCALE] + 1.0).reshape(batch, 1, 1)
    shift = torch.zeros(batch, 1, 3, dtype=kp.dtype, device=kp.device)
    shift[:, 0, :2] = motion[:, _T][:, :2]
    return kp + shift


def _driven_expression_mask(device: torch.device) -> torch.Tensor:
    """(63,) 1 where the expression comes from the driver (lips and eyes), 0 where it stays the source's."""
    mask = torch.zeros(NUM_KP, 3, device=device)
    mask[list(LIP_KEYPOINTS + EYE_KEYPOINTS)] = 1.0
    return mask.reshape(-1)


@dataclass(frozen=True)
class SourceFace:
    """The source (template) face one rendered frame starts from: its motion and canonical keypoints."""

    motion: torch.Tensor  # (B, 265)
    canonical_kp: torch.Tensor  # (B, 63)

    def keypoints(self) -> torch.Tensor:
        """(B, 21, 3) source keypoints x_s."""
        return keypoints_from_motion(self.motion, self.canonical_kp)


def drive_motion(motion: torch.Tensor, d0: torch.Tensor, source: SourceFace) -> torch.Tensor:
    """Applies generated motion to the source relative to the turn's first frame d0 -> (B, 265).

    Pose, shift and expression move by (motion - d0) from the source's; scale stays the source's.
    Only lip and eye expression follow the driver; then the eye-ball entries are nudged with the
    head's change of yaw and pitch so the gaze stays on the viewer.
    """
    driven = source.motion + (motion - d0)
    driven[:, _SCALE] = source.motion[:, _SCALE]
    mask = _driven_expression_mask(motion.device)
    driven[:, _EXP] = driven[:, _EXP] * mask + source.motion[:, _EXP] * (1.0 - mask)

    dx = (bins_to_degrees(driven[:, _YAW]) - bins_to_degrees(source.motion[:, _YAW])) * _GAZE_X_PER_YAW
    dy = (bins_to_degrees(driven[:, _PITCH]) - bins_to_degrees(source.motion[:, _PITCH])) * _GAZE_Y_PER_PITCH
    exp = driven[:, _EXP]
    turning_right = dx > 0
    exp[:, 33] += dx * torch.where(turning_right, 0.0007, 0.001)
    exp[:, 45] += dx * torch.where(turning_right, 0.001, 0.0007)
    exp[:, 34] -= dy * 0.001
    exp[:, 46] -= dy * 0.001
    return driven


def driven_keypoints(motion: torch.Tensor, d0: torch.Tensor, source: SourceFace) -> torch.Tensor:
    """(B, 265) generated motion -> (B, 21, 3) driving keypoints, before stitching."""
    return keypoints_from_motion(drive_motion(motion, d0, source), source.canonical_kp)
