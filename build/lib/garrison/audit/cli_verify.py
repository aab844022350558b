"""`garrison audit verify` and `garrison audit prove`: checking the log's integrity offline."""

from __future__ import annotations

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the verification commands to the `garrison audit` group."""
    del app
