"""`garrison sidecar` as a real process in a test: started with a ready file, its listeners read back,
its JSON log lines read from stderr, its resident memory read from /proc, stopped with SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from gateway_harness import GARRISON
from waiting import read_ready_file, wait_until


class SidecarProcess:
    def __init__(self, config: Path, service: str, cert_dir: Path) -> None:
        self.ready = config.parent / f"{service}.ready.json"
        self.stderr = config.parent / f"{service}.stderr"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [str(GARRISON), "sidecar", "-c", str(config), "--service", service,
                 "--cert-dir", str(cert_dir), "--ready-file", str(self.ready)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )  # fmt: skip
        found = wait_until(
            lambda: read_ready_file(self.ready) or self.proc.poll() is not None,
            timeout=60,
            what=lambda: self.stderr.read_text(),
        )
        assert isinstance(found, dict), self.stderr.read_text()
        self.listeners: dict[str, str] = found["listeners"]

    def port(self, name: str) -> int:
        return int(self.listeners[name].rsplit(":", 1)[1])

    def events(self, name: str) -> list[dict[str, object]]:
        lines = [json.loads(line) for line in self.stderr.read_text().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("event") == name]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)

    def rss_bytes(self) -> int:
        """VmRSS from /proc/<pid>/status (resident memory, anonymous and file-backed)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS line")
