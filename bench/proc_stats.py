"""CPU time of processes and their threads, read from /proc (Linux), for benchmark reports."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(path: Path) -> list[str]:
    """The fields of a /proc stat file after the command name (which may hold spaces)."""
    return path.read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, all its threads (0 once it is gone)."""
    try:
        fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is `pid` (nginx's workers under its master)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat_fields(entry / "stat")[1]) == pid:
                children.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return children


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (a master process and its workers)."""
    return cpu_seconds(pid) + sum(tree_cpu_seconds(child) for child in child_pids(pid))


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of each live thread of a process, keyed 'name/tid' (the kernel's name)."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = _stat_fields(task / "stat")
        except (FileNotFoundError, ProcessLookupError):
            continue
        threads[f"{name}/{task.name}"] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return threads
