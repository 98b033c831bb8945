"""The harness itself: the reference is found (or the skip says why), and differences are measured right."""

from __future__ import annotations

import numpy as np
import pytest
from fidelity.reference_harness import FidelityTable, differences, reference_missing_reason


def test_differences_are_relative_to_the_reference_range() -> None:
    theirs = np.array([0.0, 10.0, -20.0])
    ours = theirs + np.array([0.0, 0.002, 0.0])
    max_abs, max_rel = differences(ours, theirs)
    assert max_abs == pytest.approx(0.002) and max_rel == pytest.approx(0.002 / 20.0)


def test_a_stage_out_of_tolerance_fails_and_is_recorded() -> None:
    table = FidelityTable()
    with pytest.raises(AssertionError, match="tolerance"):
        table.check("demo", np.ones(3) * 1.001, np.ones(3))
    assert table.rows[0].stage == "demo" and not table.rows[0].passed
    assert "FAIL" in table.markdown()


def test_missing_reference_gives_the_reason(tmp_path) -> None:
    assert "DITTO_REFERENCE" in reference_missing_reason(tmp_path)


def test_the_authors_package_imports(ditto_reference) -> None:
    crop = ditto_reference.module("core.utils.crop")
    assert crop.__file__.startswith(str(ditto_reference.root))
