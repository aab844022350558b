"""Fixtures for the audit collector: its harness (audit_harness.py) on the path."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
