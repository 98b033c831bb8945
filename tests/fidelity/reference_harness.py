"""The fidelity harness: the authors' Ditto code (the oracle) run beside ours, stage by stage.

Both sides get identical stand-in weights (`avatar-checkpoints standin --size full`) and identical
inputs; each stage records (stage, max abs diff, max rel diff, tolerance) in one table that the
session prints at its end and writes to `artifacts/fidelity.md` (bench/RESULTS.md keeps a copy).

The authors' source is found at `DITTO_REFERENCE` (default `<repo>/../shared/reference/ditto-talkinghead`)
and imported as their package `core`, unmodified. What their modules import but these tests never
exercise is replaced by labelled stand-ins (`REFERENCE_STAND_INS`); everything else is theirs,
including the cython blend of their PutBack, which pyximport builds from their .pyx on first use.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "ditto-talkinghead"
TABLE_PATH = REPO / "artifacts" / "fidelity.md"
FP32_TOLERANCE = 1e-4  # relative, for fp32 stages


# Modules their code imports at module level that no fidelity test exercises. Each is a labelled
# stand-in (a FAKE): calling into it raises, so a test that starts to depend on one fails loudly.
REFERENCE_STAND_INS = {
    # wav2feat.py: only Wav2FeatHubert.wav2feat resamples audio that is not 16 kHz; we feed 16 kHz.
    "librosa": ("resample",),
    # loader.py: is_image/is_video sniff file types; the tests hand frames, not files.
    "filetype": ("is_image", "is_video"),
    # stream_pipeline_*.py: the writer's progress bar.
    "tqdm": ("tqdm",),
}


def reference_root() -> Path:
    """Where the authors' source is: DITTO_REFERENCE, else the shared reference folder."""
    configured = os.environ.get("DITTO_REFERENCE")
    return Path(configured).resolve() if configured else DEFAULT_REFERENCE


def reference_missing_reason(root: Path) -> str | None:
    """None when `root` holds the authors' source, else why the fidelity tests skip."""
    if not (root / "core" / "atomic_components").is_dir():
        return (f"the authors' Ditto source is not at {root} (set DITTO_REFERENCE to a checkout of "
                "antgroup/ditto-talkinghead): fidelity tests skipped")
    return None


def _fake_module(name: str, attributes: tuple[str, ...]) -> types.ModuleType:
    module = types.ModuleType(name, f"FAKE {name} for the fidelity harness: the tests never call it")

    def refuse(*_: Any, **__: Any) -> Any:
        raise RuntimeError(f"the fidelity harness replaced {name} with a stand-in; this call needs the real one")

    for attribute in attributes:
        setattr(module, attribute, refuse)
    return module


class Reference:
    """The authors' package `core`, importable by module path (e.g. "core.atomic_components.putback")."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for name, attributes in REFERENCE_STAND_INS.items():
            if importlib.util.find_spec(name) is None and name not in sys.modules:
                sys.modules[name] = _fake_module(name, attributes)
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        spec = importlib.util.find_spec("core")  # their `core` is a namespace package (no __init__.py)
        locations = [Path(p).resolve() for p in (spec.submodule_search_locations or [])] if spec else []
        if locations[:1] != [(root / "core").resolve()]:
            raise RuntimeError(f"'core' resolves to {locations}, not {root / 'core'}: another package shadows it")

    def module(self, name: str) -> types.ModuleType:
        """Imports one of their modules, e.g. module("core.utils.crop")."""
        return importlib.import_module(name)

    def network_cfg(self, checkpoints: Path, relative: str) -> dict[str, str]:
        """Their `{model_path, device}` cfg for a file of a checkpoints folder, on the CPU."""
        return {"model_path": str(Path(checkpoints) / relative), "device": "cpu"}


@contextlib.contextmanager
def reference_fp32() -> Iterator[None]:
    """Their PyTorch wrappers run under `torch.autocast(..., dtype=float16, enabled=True)`; the harness
    compares fp32, so inside this context autocast is switched off (the only change to their code path)."""
    import torch

    original = torch.autocast

    def fp32_autocast(*args: Any, **kwargs: Any) -> Any:
        kwargs["enabled"] = False
        return original(*args, **kwargs)

    torch.autocast = fp32_autocast
    try:
        yield
    finally:
        torch.autocast = original


@dataclass(frozen=True)
class Row:
    """One compared stage."""

    stage: str
    max_abs: float
    max_rel: float
    tolerance: float
    kind: str  # "relative" (max_rel <= tolerance) or "absolute" (max_abs <= tolerance)
    note: str = ""

    @property
    def passed(self) -> bool:
        value = self.max_rel if self.kind == "relative" else self.max_abs
        return bool(np.isfinite(value) and value <= self.tolerance)


def differences(ours: Any, theirs: Any) -> tuple[float, float]:
    """(max |ours - theirs|, that over max |theirs|): relative to the reference's range, so values
    near zero do not blow the ratio up. Shapes must agree (after squeezing unit axes)."""
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(theirs, dtype=np.float64)
    if a.shape != b.shape and np.squeeze(a).shape == np.squeeze(b).shape:
        a, b = np.squeeze(a), np.squeeze(b)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: ours {a.shape}, theirs {b.shape}")
    max_abs = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return max_abs, (max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf")))


@dataclass
class FidelityTable:
    """The session's rows; `check` records one stage and fails the test if it is out of tolerance."""

    rows: list[Row] = field(default_factory=list)

    def check(self, stage: str, ours: Any, theirs: Any, *, tolerance: float = FP32_TOLERANCE,
              kind: str = "relative", note: str = "") -> Row:
        """Compares one stage's output; records it; raises AssertionError when out of tolerance."""
        max_abs, max_rel = differences(ours, theirs)
        row = Row(stage, max_abs, max_rel, tolerance, kind, note)
        self.rows = [r for r in self.rows if r.stage != stage] + [row]
        measure = "max rel" if kind == "relative" else "max abs"
        assert row.passed, (f"{stage}: {measure} diff {max_rel if kind == 'relative' else max_abs:.3g} "
                            f"> tolerance {tolerance:g} (max abs {max_abs:.3g})")
        return row

    def markdown(self) -> str:
        """The table as markdown (stage, max abs diff, max rel diff, tolerance, result)."""
        lines = ["| stage | max abs diff | max rel diff | tolerance | result |", "| --- | --- | --- | --- | --- |"]
        for row in self.rows:
            tolerance = f"{row.tolerance:g} {'rel' if row.kind == 'relative' else 'abs'}"
            note = f" ({row.note})" if row.note else ""
            lines.append(f"| {row.stage}{note} | {row.max_abs:.3g} | {row.max_rel:.3g} | {tolerance} | "
                         f"{'pass' if row.passed else 'FAIL'} |")
        return "\n".join(lines)
