"""Python cost of one token request and one introspection at the identity provider, without sockets.

Builds a real provider (SQLite in a temporary state dir, a registered client, the signing key) and
calls its ASGI handlers directly — everything `garrison identity` runs per request except uvicorn's
HTTP handling — then prints microseconds per request; `--profile` adds the top functions by own time
(cProfile). It tells where the token endpoint's time goes in bench/identity/run.py.

    .venv/bin/python bench/identity/hotpath.py [--requests N] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import pstats
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from garrison.config.loader import parse_config
from garrison.identity.adapter import Headers
from garrison.identity.clients import ClientStore
from garrison.identity.service import Provider, open_provider
from garrison.identity.web import HttpRequest, HttpResponse, parse_params
from garrison.pki.kek import KeyEncryption

ISSUER = "https://localhost:9443"


def form_request(path: str, authorization: str, body: str) -> HttpRequest:
    headers = Headers()
    headers["authorization"] = authorization
    headers["content-type"] = "application/x-www-form-urlencoded"
    return HttpRequest("POST", path, {}, headers, body.encode(), "127.0.0.1", parse_params(body))


async def measure(
    label: str, call: Callable[[], Awaitable[HttpResponse]], requests: int, profile: bool
) -> None:
    for _ in range(min(200, requests)):  # warm caches and code paths
        response = await call()
        assert response.status == 200, response.body
    started = time.perf_counter()
    for _ in range(requests):
        await call()
    print(f"{label:<24} {(time.perf_counter() - started) / requests * 1e6:8.1f} µs of Python per request")
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(requests):
            await call()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


async def main(requests: int, profile: bool) -> None:
    with tempfile.TemporaryDirectory() as directory:
        loaded = parse_config(
            f"state_dir: {directory}\nidentity: {{issuer: {ISSUER}}}\n", base_dir=Path(directory)
        )
        config = loaded.config
        provider: Provider = await open_provider(config, ISSUER)
        try:
            store = ClientStore(provider.engine, KeyEncryption.load(config.state_dir))
            created = await store.create("bench", scopes=["api", "garrison:introspect"])
            await provider.directory.reload()
            basic = base64.b64encode(f"{created.record.client_id}:{created.secret}".encode()).decode()
            authorization = f"Basic {basic}"
            app = provider.app
            assert app is not None

            async def token() -> HttpResponse:
                return await app.token(
                    form_request("/token", authorization, "grant_type=client_credentials&scope=api")
                )

            access_token = (await token()).body.decode().split('"access_token":"')[1].split('"')[0]

            async def introspect() -> HttpResponse:
                return await app.endpoint(
                    "introspection", form_request("/introspect", authorization, f"token={access_token}")
                )

            await measure("POST /token", token, requests, profile)
            await measure("POST /introspect", introspect, requests, profile)
        finally:
            await provider.directory.stop()
            await provider.engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement (default 2000)")
    parser.add_argument("--profile", action="store_true", help="also print the top functions (cProfile)")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.profile))
