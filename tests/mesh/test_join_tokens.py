"""Join tokens on SQLite and PostgreSQL: one use, expiry, a cap, nothing usable in the database."""

from __future__ import annotations

import asyncio
import datetime as dt
import os

import pytest
from db_backend import Backend
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

import garrison.mesh.ca.tables as tables
from garrison.mesh.ca.join_tokens import JoinTokenRefused, JoinTokens, TooManyJoinTokens
from garrison.pki.kek import KeyEncryption

ORDERS = "spiffe://shop.local/svc/orders"


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def test_a_token_joins_once_and_names_its_service(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        tokens = JoinTokens(engine, KeyEncryption(os.urandom(32)), Clock())
        token = await tokens.mint(ORDERS, dt.timedelta(minutes=10))
        assert token.startswith("gjt_")
        assert await tokens.redeem(token) == ORDERS
        with pytest.raises(JoinTokenRefused, match="unknown, already used or expired"):
            await tokens.redeem(token)
        with pytest.raises(JoinTokenRefused):
            await tokens.redeem("gjt_" + "A" * 43)
        with pytest.raises(JoinTokenRefused):
            await tokens.redeem("not a token")

    backend.run(body)


def test_of_concurrent_presentations_exactly_one_wins(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        tokens = JoinTokens(engine, KeyEncryption(os.urandom(32)), Clock())
        token = await tokens.mint(ORDERS, dt.timedelta(minutes=10))
        outcomes = await asyncio.gather(*(tokens.redeem(token) for _ in range(8)), return_exceptions=True)
        assert outcomes.count(ORDERS) == 1
        assert all(isinstance(o, JoinTokenRefused) for o in outcomes if o != ORDERS)

    backend.run(body)


def test_an_expired_token_is_refused_and_purged(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        clock = Clock()
        tokens = JoinTokens(engine, KeyEncryption(os.urandom(32)), clock)
        token = await tokens.mint(ORDERS, dt.timedelta(minutes=10))
        clock.now += dt.timedelta(minutes=10)
        with pytest.raises(JoinTokenRefused):
            await tokens.redeem(token)
        await tokens.mint(ORDERS, dt.timedelta(minutes=10))  # minting purges what has expired
        async with engine.connect() as connection:
            rows = (await connection.execute(select(tables.join_tokens))).all()
        assert len(rows) == 1

    backend.run(body)


def test_only_a_keyed_digest_is_stored(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        tokens = JoinTokens(engine, KeyEncryption(os.urandom(32)), Clock())
        token = await tokens.mint(ORDERS, dt.timedelta(minutes=10))
        async with engine.connect() as connection:
            row = (await connection.execute(select(tables.join_tokens))).one()
        assert token not in str(tuple(row)) and token[4:] not in str(tuple(row))
        # Another CA (another KEK) with a copy of the rows cannot redeem it.
        with pytest.raises(JoinTokenRefused):
            await JoinTokens(engine, KeyEncryption(os.urandom(32)), Clock()).redeem(token)

    backend.run(body)


def test_outstanding_tokens_are_capped_and_ttls_bounded(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        tokens = JoinTokens(engine, KeyEncryption(os.urandom(32)), Clock(), max_outstanding=2)
        first = await tokens.mint(ORDERS, dt.timedelta(minutes=1))
        await tokens.mint(ORDERS, dt.timedelta(minutes=1))
        with pytest.raises(TooManyJoinTokens, match="cap"):
            await tokens.mint(ORDERS, dt.timedelta(minutes=1))
        await tokens.redeem(first)  # a spent token no longer counts
        await tokens.mint(ORDERS, dt.timedelta(minutes=1))
        for ttl in (dt.timedelta(0), dt.timedelta(days=2)):
            with pytest.raises(ValueError, match="between"):
                await tokens.mint(ORDERS, ttl)

    backend.run(body)
