"""The Ditto fidelity harness (see reference_harness.py)."""
