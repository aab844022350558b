"""`garrison ca status`: what the CA is, in one table per subject (read-only, CA running or not)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from sqlalchemy import func, select

from garrison.mesh.ca.tables import join_tokens

if TYPE_CHECKING:
    from garrison.mesh.ca.server import CaParts

__all__ = ["ca_status"]


async def ca_status(parts: CaParts) -> Group:
    files, snapshot = parts.files, parts.state.snapshot
    issuing = files.issuing()
    active_root = issuing.parents[-1].serial_number
    roots = Table(title="Roots (trust bundle)", title_justify="left")
    for column in ("serial", "subject", "expires", "role"):
        roots.add_column(column)
    for root in files.bundle():
        role = "issuing" if root.serial_number == active_root else "trusted"
        roots.add_row(
            f"{root.serial_number:x}", root.subject.rfc4514_string(), _date(root.not_valid_after_utc), role
        )
    now = dt.datetime.now(dt.UTC)
    async with parts.engine.connect() as connection:
        outstanding = await connection.scalar(
            select(func.count())
            .select_from(join_tokens)
            .where(join_tokens.c.used_at.is_(None), join_tokens.c.expires_at > now)
        )
    summary = Table(title=f"State version {snapshot.version}", title_justify="left", show_header=False)
    summary.add_column("what")
    summary.add_column("value")
    certificate = issuing.certificate
    summary.add_row(
        "issuing intermediate",
        f"{certificate.subject.rfc4514_string()} (expires {_date(certificate.not_valid_after_utc)})",
    )
    summary.add_row("outstanding join tokens", str(outstanding or 0))
    summary.add_row("revoked", ", ".join(snapshot.revoked) or "none")
    summary.add_row("quarantined", ", ".join(snapshot.quarantined) or "none")
    return Group(roots, summary)


def _date(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")
