"""Where the audit collector keeps its log, checkpoints and keys under ``state_dir``: one place, so the
collector, `garrison audit verify` and the tests agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["CHECKPOINTS_FILE", "AuditPaths"]

CHECKPOINTS_FILE: Final = "checkpoints.jsonl"


@dataclass(frozen=True, slots=True)
class AuditPaths:
    root: Path  # state_dir/audit

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> AuditPaths:
        return cls(state_dir / "audit")

    @property
    def log(self) -> Path:
        """The segments and checkpoints.jsonl."""
        return self.root / "log"

    @property
    def checkpoint_key(self) -> Path:
        return self.root / "checkpoint.key"

    @property
    def checkpoint_public_key(self) -> Path:
        return self.root / "checkpoint.pub"
