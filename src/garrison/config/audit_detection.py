"""``audit.detection`` and ``audit.responses``: which rules run, and what they may do."""

from __future__ import annotations

from pydantic import Field

from garrison.config.common import Strict

__all__ = ["DetectionConfig", "ResponsesConfig"]


class DetectionConfig(Strict):
    """Detection rules over the collected events."""

    enabled: bool = Field(True, description="Run the detection rules.")


class ResponsesConfig(Strict):
    """Automated responses, executed through the components' admin APIs."""

    dry_run: bool = Field(False, description="Log what each response would do, and do nothing.")
