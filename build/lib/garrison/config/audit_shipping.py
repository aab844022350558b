"""``audit.shipping``: copies of the log for Loki, Elasticsearch and OTLP receivers."""

from __future__ import annotations

from garrison.config.common import Strict

__all__ = ["ShippingConfig"]


class ShippingConfig(Strict):
    """Where the log is shipped (none by default)."""
