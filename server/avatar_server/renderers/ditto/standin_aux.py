"""STAND-IN face models for the release's avatar registration: det_10g, 2d106det and landmark203.

Each has the release's file name and the I/O the authors' code feeds and reads (below), small
convolutional bodies and random weights: they find no real face, and their boxes and landmarks
are meaningless. They exist so the registration code path runs for real (ONNX Runtime, post-
processing, crops) and so the fidelity harness can run the authors' code and ours on one file.

| file | input | outputs |
| --- | --- | --- |
| det_10g.onnx | `image` (1, 3, H, W) BGR, (x - 127.5) / 128 | `scores1..3` (N, 1), `boxes1..3` (N, 4), `kps1..3` (N, 10); N = H/s * W/s * 2 for strides 8, 16, 32 |
| 2d106det.onnx | `data` (1, 3, 192, 192) BGR 0..255 | `fc1` (1, 212): 106 x (x, y) in -1..1 of the crop |
| landmark203.onnx | `input` (1, 3, 224, 224) RGB 0..1 | `landmarks` (1, 406): 203 x (x, y) in 0..1 of the crop |
"""

from __future__ import annotations

import torch
from torch import nn

DETECTOR_STRIDES = (8, 16, 32)
DETECTOR_ANCHORS = 2


def _conv(channels_in: int, channels_out: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, stride, 1), nn.ReLU())


class DetectorStandIn(nn.Module):
    """SCRFD-shaped heads on a small backbone; outputs laid out anchor by anchor, row-major."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv(3, width, 2), _conv(width, width, 2), _conv(width, width, 2))
        self.down = nn.ModuleList([nn.Identity(), _conv(width, width, 2), _conv(width, width, 2)])
        self.scores = nn.ModuleList(nn.Conv2d(width, DETECTOR_ANCHORS, 3, 1, 1) for _ in DETECTOR_STRIDES)
        self.boxes = nn.ModuleList(nn.Conv2d(width, DETECTOR_ANCHORS * 4, 3, 1, 1) for _ in DETECTOR_STRIDES)
        self.kps = nn.ModuleList(nn.Conv2d(width, DETECTOR_ANCHORS * 10, 3, 1, 1) for _ in DETECTOR_STRIDES)
        with torch.no_grad():  # logits of about unit spread: a few anchors pass the 0.5 threshold
            for head in self.scores:
                head.weight.mul_(20.0)
                head.bias.fill_(-1.0)

    @staticmethod
    def _rows(x: torch.Tensor, per_anchor: int) -> torch.Tensor:
        batch, _, height, width = x.shape
        return x.reshape(batch, DETECTOR_ANCHORS, per_anchor, height, width).permute(0, 3, 4, 1, 2).reshape(-1, per_anchor)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(image)
        levels = []
        for down in self.down:
            x = down(x)
            levels.append(x)
        scores = [torch.sigmoid(self._rows(head(f), 1)) for head, f in zip(self.scores, levels)]
        boxes = [nn.functional.softplus(self._rows(head(f), 4)) for head, f in zip(self.boxes, levels)]
        kps = [self._rows(head(f), 10) for head, f in zip(self.kps, levels)]
        return (*scores, *boxes, *kps)


class LandmarkStandIn(nn.Module):
    """A conv body and a linear head to `points` (x, y) pairs, squashed to the release's range."""

    def __init__(self, points: int, *, input_scale: float, signed: bool, width: int = 32) -> None:
        super().__init__()
        self.input_scale = input_scale
        self.signed = signed
        self.body = nn.Sequential(_conv(3, width, 2), _conv(width, width, 2), _conv(width, width, 2),
                                  _conv(width, width, 2))
        self.head = nn.Linear(width * 2, points * 2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.body(image * self.input_scale)
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        out = self.head(pooled)
        return torch.tanh(out) * 0.5 if self.signed else torch.sigmoid(out)


# file -> (module factory, example input, input names, output names, dynamic axes)
def aux_standins() -> dict[str, tuple[nn.Module, torch.Tensor, list[str], list[str], dict | None]]:
    """The three face models with their example inputs and the release's tensor names."""
    det_outputs = [f"{kind}{level}" for kind in ("scores", "boxes", "kps") for level in (1, 2, 3)]
    det_axes = {"image": {2: "height", 3: "width"}} | {name: {0: "anchors"} for name in det_outputs}
    return {
        "det_10g": (DetectorStandIn().eval(), torch.rand(1, 3, 512, 512), ["image"], det_outputs, det_axes),
        "2d106det": (LandmarkStandIn(106, input_scale=1 / 255, signed=True).eval(),
                     torch.rand(1, 3, 192, 192) * 255, ["data"], ["fc1"], None),
        "landmark203": (LandmarkStandIn(203, input_scale=1.0, signed=False).eval(),
                        torch.rand(1, 3, 224, 224), ["input"], ["landmarks"], None),
    }
