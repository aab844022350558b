"""Fixtures for the vault: its harness on the path, every test here a process test when it starts one."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
