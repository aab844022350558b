"""``audit.responses``: what alerts may do, through the components' admin APIs."""

from __future__ import annotations

from pydantic import Field

from garrison.config.common import Strict

__all__ = ["ResponsesConfig"]


class ResponsesConfig(Strict):
    """Automated responses, executed through the components' admin APIs."""

    dry_run: bool = Field(False, description="Log what each response would do, and do nothing.")
