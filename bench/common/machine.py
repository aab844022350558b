"""The machine a run ran on: CPU, cores, kernel, Python, the tools' versions, the commit."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def command_output(argv: list[str], must_succeed: bool = False) -> str:
    """First line a version command prints (on stdout or stderr), or "unknown"."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if must_succeed and done.returncode != 0:
        return "unknown"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def info(tools: dict[str, str]) -> dict[str, str]:
    """CPU, cores, kernel and Python, then the benchmark's tools (name: version), then the commit."""
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        **tools,
        "commit": command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], True),
    }


def wrk_version() -> str:
    wrk = command_output(["wrk", "-v"]).split()
    return wrk[1] if len(wrk) > 1 else "unknown"


def header(title: str, date: str, machine: dict[str, str], *lines: str) -> list[str]:
    """A run's header: "<title> — <date>", the machine line, then the benchmark's own lines."""
    machine_line = (
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['kernel']}, "
        f"Python {machine['python']}"
    )
    return [f"{title} — {date}", machine_line, *lines]
