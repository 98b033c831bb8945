#!/usr/bin/env python3
"""Precision benchmark of Ditto's warp + decode: fp32 reference vs fp16, bf16 and FP8 on the same weights.

For each precision: PSNR (dB) of the decoded 512x512 frames against fp32 on identical inputs (the
astronaut's appearance volume, keypoints jittered per frame), and ms per frame at one batch size.
fp16 and FP8 run on CUDA only; FP8 needs a GPU with FP8 matrix units (compute capability >= 8.9)
and is otherwise reported as unsupported. FP8 here = the decoder's 3x3/1x1 convolutions as im2col +
torch._scaled_mm (e4m3 activations and weights, per-tensor scales, bf16 out); layers whose widths are
not multiples of 16 and the warp network stay bf16. Its PSNR is what FP8 weights and activations
cost in accuracy; its time is an upper bound (im2col is extra traffic a real FP8 convolution avoids).

    python3 bench/precision_ditto.py --checkpoints /tmp/tiny --device cpu --batch 2     # CPU: fp32 vs bf16
    python3 bench/precision_ditto.py --checkpoints /tmp/full --device cuda --batch 16   # GPU: all

Stand-ins: `write_standin(Path(folder), "tiny" | "full", onnx=False)` (random weights, real shapes).
Prints a table and writes precision_ditto.json under --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "server"))

from avatar_server.renderers.ditto.checkpoints import require_checkpoints
from avatar_server.renderers.ditto.loaders import load_network

E4M3_MAX = 448.0


def fp8_supported(device: torch.device) -> tuple[bool, str]:
    """FP8 matmuls need CUDA compute capability >= 8.9 (Ada, Hopper) and torch._scaled_mm."""
    if device.type != "cuda":
        return False, "FP8 needs a CUDA GPU with compute capability >= 8.9; this run is on CPU"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9) or not hasattr(torch, "_scaled_mm"):
        return False, f"compute capability {major}.{minor} has no FP8 matrix units (needs >= 8.9)"
    return True, ""


def _to_e4m3(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor scaled e4m3 copy and its dequantisation scale (float32 scalar)."""
    amax = tensor.abs().amax().float().clamp(min=1e-12)
    scale = E4M3_MAX / amax
    return (tensor.float() * scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), (1.0 / scale).reshape(())


class Fp8Conv2d(nn.Module):
    """A groups=1 Conv2d as im2col + torch._scaled_mm in e4m3, output bf16."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.kernel_size, self.padding, self.stride = conv.kernel_size, conv.padding, conv.stride
        self.out_channels = conv.out_channels
        weight = conv.weight.detach().reshape(conv.out_channels, -1)  # (N, K)
        self.weight_fp8, self.weight_scale = _to_e4m3(weight)
        self.bias = None if conv.bias is None else conv.bias.detach().to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        out_h = (height + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1
        out_w = (width + 2 * self.padding[1] - self.kernel_size[1]) // self.stride[1] + 1
        columns = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (B, K, L)
        rows = columns.transpose(1, 2).reshape(-1, columns.shape[1])  # (B*L, K)
        rows_fp8, rows_scale = _to_e4m3(rows)
        out = torch._scaled_mm(rows_fp8, self.weight_fp8.t(), scale_a=rows_scale, scale_b=self.weight_scale,
                               out_dtype=torch.bfloat16)  # (B*L, N); weight.t() is column-major as required
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(batch, out_h * out_w, self.out_channels).transpose(1, 2).reshape(
            batch, self.out_channels, out_h, out_w)


def fp8_decoder(decoder: nn.Module) -> tuple[nn.Module, int, int]:
    """A bf16 copy of the decoder whose eligible convolutions run in FP8 -> (module, fp8 layers, all convs)."""
    converted = copy.deepcopy(decoder).to(torch.bfloat16)
    swapped, total = 0, 0
    for parent in list(converted.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                total += 1
                in_width = child.in_channels * child.kernel_size[0] * child.kernel_size[1]
                if child.groups == 1 and child.dilation == (1, 1) and in_width % 16 == 0 \
                        and child.out_channels % 16 == 0:
                    setattr(parent, name, Fp8Conv2d(child))
                    swapped += 1
    return converted, swapped, total


def inputs(appearance: nn.Module, batch: int, device: torch.device, seed: int = 0):
    """The astronaut's face as appearance volume, and source / driving keypoints jittered per frame."""
    from skimage import data

    image = torch.from_numpy(data.astronaut()[40:296, 140:396].copy()).permute(2, 0, 1)[None].float() / 255.0
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        feature = appearance(image.to(device)).float().expand(batch, -1, -1, -1, -1).contiguous()
    kp_source = (torch.randn(batch, 21, 3, generator=generator) * 0.3).to(device)
    kp_driving = kp_source + (torch.randn(batch, 21, 3, generator=generator) * 0.02).to(device)
    return feature, kp_source, kp_driving


def autocast(fn, device: torch.device, dtype: torch.dtype):
    """`fn` under torch.autocast for `dtype`."""
    def run() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype):
            return fn()
    return run


def psnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    """PSNR in dB of 8-bit frames (both rounded to 0..255), over the whole batch; 99 when identical."""
    a = (reference.float().clamp(0, 1) * 255).round()
    b = (test.float().clamp(0, 1) * 255).round()
    mse = float(((a - b) ** 2).mean())
    return 99.0 if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def ms_per_frame(fn, batch: int, device: torch.device, repeat: int) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(times) / batch


def measure(name: str, run, reference: torch.Tensor, args: argparse.Namespace, device: torch.device) -> dict:
    """One table row; a precision whose kernels fail on this machine is reported, not fatal."""
    try:
        with torch.inference_mode():
            return {"precision": name, "psnr_db": psnr(reference, run()),
                    "ms_per_frame": ms_per_frame(run, args.batch, device, args.repeat)}
    except (RuntimeError, NotImplementedError) as error:
        return {"precision": name, "unsupported": f"{type(error).__name__}: {str(error)[:300]}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", required=True, type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    device = torch.device(args.device)

    files = require_checkpoints(args.checkpoints, "pytorch")
    modules = {name: load_network(name, files.networks[name]).to(device).eval()
               for name in ("appearance_extractor", "warp_network", "decoder")}
    feature, kp_source, kp_driving = inputs(modules["appearance_extractor"], args.batch, device)

    def render(warp: nn.Module, decoder: nn.Module, dtype: torch.dtype):
        def run() -> torch.Tensor:
            with torch.inference_mode():
                return decoder(warp(feature.to(dtype), kp_source, kp_driving).to(dtype))
        return run

    reference_run = render(modules["warp_network"], modules["decoder"], torch.float32)
    with torch.inference_mode():
        reference = reference_run()
    rows = [{"precision": "fp32", "psnr_db": None,  # the reference
             "ms_per_frame": ms_per_frame(reference_run, args.batch, device, args.repeat)}]
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        if name == "fp16" and device.type != "cuda":
            rows.append({"precision": name, "unsupported": "fp16 runs on CUDA only (no fast CPU kernels)"})
            continue
        if device.type == "cuda":  # weights cast, as the engine runs them
            run = render(copy.deepcopy(modules["warp_network"]).to(dtype), copy.deepcopy(modules["decoder"]).to(dtype), dtype)
        else:  # CPU lacks bf16 kernels for some ops (avg_pool3d): autocast runs convs and matmuls in bf16
            run = autocast(render(modules["warp_network"], modules["decoder"], torch.float32), device, dtype)
            name += " (CPU autocast)"
        rows.append(measure(name, run, reference, args, device))
    supported, why = fp8_supported(device)
    if supported:
        decoder, swapped, total = fp8_decoder(modules["decoder"])
        run = render(copy.deepcopy(modules["warp_network"]).to(torch.bfloat16), decoder, torch.bfloat16)
        row = measure("fp8 (decoder convs e4m3 via _scaled_mm, warp bf16)", run, reference, args, device)
        rows.append({**row, "fp8_layers": f"{swapped} of {total} convs"})
    else:
        rows.append({"precision": "fp8", "unsupported": why})

    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    result = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "device": machine, "torch": torch.__version__,
              "checkpoints": str(args.checkpoints), "batch": args.batch, "rows": rows}
    print(f"{machine}, batch {args.batch}, warp + decode against fp32")
    for row in rows:
        if "unsupported" in row:
            print(f"  {row['precision']:<52} unsupported: {row['unsupported']}")
        else:
            quality = "reference   " if row["psnr_db"] is None else f"PSNR {row['psnr_db']:5.1f} dB"
            print(f"  {row['precision']:<52} {quality}   {row['ms_per_frame']:8.2f} ms/frame")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision_ditto.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
