"""The learned service-to-service baseline: which caller -> callee pairs are normal.

For ``baseline_learning`` seconds of event time from the first pair seen, every allowed pair
(``mesh.edge``, or an allowed ``mesh.call``) joins the baseline. After that, a pair not in it is
new: the ``new_service_edge`` rule alerts once and the pair joins the baseline, so it is not
reported again. The baseline is kept in ``state_dir/audit/baseline.json`` (written once per batch
that changed it, atomically), so a restart neither forgets what it learned nor restarts learning.
It is capped at ``max_edges`` pairs; past the cap new pairs still alert but are no longer kept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["Baseline"]


class Baseline:
    def __init__(self, path: Path | None, learning: float, max_edges: int) -> None:
        self.path = path
        self.learning = learning
        self.max_edges = max_edges
        self.started: float | None = None
        self.edges: set[tuple[str, str]] = set()
        self._dirty = False
        if path is not None and path.exists():
            try:
                body = json.loads(path.read_text())
                self.started = float(body["started"]) if body.get("started") is not None else None
                self.edges = {(str(a), str(b)) for a, b in body.get("edges", [])[:max_edges]}
            except (OSError, ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"{path} is unreadable ({exc}); move it away to learn again") from None

    def learning_at(self, now: float) -> bool:
        return self.started is None or now < self.started + self.learning

    def observe(self, caller: str, callee: str, now: float) -> bool:
        """Record the pair; True when it is new after the learning period (an alert)."""
        if self.started is None:
            self.started = now
            self._dirty = True
        pair = (caller, callee)
        if pair in self.edges:
            return False
        learning = self.learning_at(now)
        if len(self.edges) < self.max_edges:
            self.edges.add(pair)
            self._dirty = True
        return not learning

    def save(self) -> None:
        """Write the baseline if it changed since the last save."""
        if not self._dirty or self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"started": self.started, "edges": sorted(self.edges)}
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(body, separators=(",", ":")).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._dirty = False
