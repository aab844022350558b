"""``store``: how components treat the SQL database at start (schema migrations, waiting for it).

Kept in a module of its own: it concerns every component that has tables (identity, gateway API keys,
and the vault and audit index to come), not one of them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from garrison.config.units import Duration


class StoreConfig(BaseModel):
    """Schema migrations and start-up waits for the SQL databases (`garrison db`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    migrate_at_start: bool = Field(
        True,
        description="Each component upgrades its tables to this release's schema when it starts. "
        "false: run `garrison db upgrade` as a deploy step; a component whose schema is not at head "
        "then refuses to start.",
    )
    connect_timeout: Duration = Field(
        30.0,
        ge=0,
        description="How long a starting component waits for its database to be reachable (and for "
        "another process's migration to finish) before it gives up.",
    )
