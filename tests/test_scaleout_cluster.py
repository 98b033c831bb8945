"""The issue-11 scale-out run: Redis, nginx and three avatar-server instances; drain, crash, resume.

Runs bench/scaleout.py (real redis-server, Debian's nginx, three `avatar-server`
processes on loopback, 12 sessions) and requires every target it checks: no
completed turn lost, no new session given to the draining instance, nobody on
the other instances disturbed, every reconnect resumed at the saved media clock.
About two minutes on two cores, so it is marked slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.local_cluster import missing_programs  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_drain_and_crash_keep_every_completed_turn(tmp_path: Path) -> None:
    if missing := missing_programs():
        pytest.skip(
            f"not installed: {', '.join(missing)} (apt-get install -y redis-server nginx-light)"
        )
    report_path = tmp_path / "scaleout.json"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "scaleout.py"),
            "scenario",
            "--sessions",
            "12",
            "--words",
            "8",
            "--grace",
            "30",
            "--timeout",
            "800",
            "--json",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=880,
        cwd=REPO,
    )
    assert report_path.exists(), run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads(report_path.read_text())
    print(
        json.dumps(
            {
                key: report[key]
                for key in (
                    "initial_spread",
                    "reconnect_seconds_drain",
                    "reconnect_seconds_kill",
                    "completed_turns_lost",
                )
            }
        )
    )
    assert report["failures"] == [], "\n".join(report["failures"])
    assert run.returncode == 0
    assert set(report["initial_spread"]) == {"i1", "i2", "i3"}
    assert report["drain"]["their_outcomes"].keys() <= {"completed", "cancelled"}
    assert report["completed_turns_lost"] == [] and report["history_pairs_checked"] > 0
    assert report["kill"]["in_flight_turns_lost"] <= report["kill"]["sessions_on_it"]


def test_history_check_finds_a_completed_turn_missing_after_a_reconnect() -> None:
    """The run's own yardstick: a turn the client saw completed must be in every later request."""
    from bench.scaleout import SessionClient, history_losses

    client = SessionClient(0, "unused:1", [], words=3)
    client.log.sent = [("t1", []), ("t2", ["t1"]), ("t3", ["t1", "t2"]), ("t3", ["t1", "t2"])]

    def request(*users: str) -> dict:
        return {"messages": [{"role": "system", "content": "p"}]
                + [{"role": "user", "content": text} for text in users]}

    kept = [request("t1"), request("t1", "t2"), request("t1", "t2", "t3")]
    assert history_losses(client, kept, keep_turns=20) == ([], 3)
    # t3 sent again after a reconnect, answered by an instance that had lost t2:
    lost = [*kept, request("t1", "t3")]
    assert history_losses(client, lost, keep_turns=20) == (["t2"], 5)
