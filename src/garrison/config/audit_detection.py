"""``audit.detection``: which rules run over the collected events, with which thresholds."""

from __future__ import annotations

from pydantic import Field

from garrison.config.common import Strict

__all__ = ["DetectionConfig"]


class DetectionConfig(Strict):
    """Detection rules over the collected events."""

    enabled: bool = Field(True, description="Run the detection rules.")
