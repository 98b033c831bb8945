"""Fixtures of the fidelity harness (see reference_harness.py): the authors' code, full-size stand-in
weights written once per session, our networks on them, and the session's table of differences.

Every test here is skipped, with the reason, when the authors' source or the Ditto extra (torch,
onnxruntime) is missing. DITTO_FIDELITY_CHECKPOINTS names a folder of full stand-ins written earlier
(`avatar-checkpoints standin --size full --no-onnx DIR`) to skip writing them again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fidelity.reference_harness import (
    TABLE_PATH,
    FidelityTable,
    Reference,
    reference_missing_reason,
    reference_root,
)

pytest.importorskip("torch", reason="the Ditto extra (torch) is not installed")
pytest.importorskip("onnxruntime", reason="the Ditto extra (onnxruntime) is not installed")

_TABLE = FidelityTable()


@pytest.fixture(scope="session")
def ditto_reference() -> Reference:
    """The authors' package, importable; skips the test when their source is absent."""
    root = reference_root()
    reason = reference_missing_reason(root)
    if reason:
        pytest.skip(reason)
    return Reference(root)


@pytest.fixture(scope="session")
def standin_full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-size stand-in checkpoints folder (official names, shapes, dtypes; random weights)."""
    from avatar_server.renderers.ditto.standin import is_standin, write_standin

    given = os.environ.get("DITTO_FIDELITY_CHECKPOINTS")
    if given:
        folder = Path(given)
        if not is_standin(folder, "full"):
            pytest.fail(f"DITTO_FIDELITY_CHECKPOINTS={given} is not a full stand-in folder")
        return folder
    folder = tmp_path_factory.mktemp("ditto-standin-full")
    write_standin(folder, "full", onnx=False)
    return folder


@pytest.fixture(scope="session")
def our_networks(standin_full: Path):
    """Our PyTorch networks on the full stand-ins, fp32 on the CPU."""
    from avatar_server.renderers.ditto.models import load_networks

    return load_networks(standin_full, runtime="pytorch", device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def fidelity_table() -> Iterator[FidelityTable]:
    """The session's table: `fidelity_table.check(stage, ours, theirs)` records and asserts a stage."""
    yield _TABLE


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Prints the table and writes it to artifacts/fidelity.md."""
    if not _TABLE.rows:
        return
    text = _TABLE.markdown()
    terminalreporter.write_sep("=", "Ditto fidelity: ours vs the authors' code on identical stand-in weights")
    terminalreporter.write_line(text)
    TABLE_PATH.parent.mkdir(parents=True, exist_ok=True)
    TABLE_PATH.write_text(text + "\n")
    terminalreporter.write_line(f"(written to {TABLE_PATH})")
