"""Resident memory of a server's process group, read from /proc (no psutil needed)."""

from __future__ import annotations

from pathlib import Path


def _status_kib(status: str, field: str) -> int:
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def group_memory_mb(pgid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MB summed over the live processes of process group pgid."""
    rss = peak = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[2]) != pgid:
                continue
            status = (stat.parent / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
        rss += _status_kib(status, "VmRSS")
        peak += _status_kib(status, "VmHWM")
    return rss / 1024, peak / 1024
