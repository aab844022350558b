"""A reverse proxy written the way a Python developer would write one with aiohttp.

aiohttp.web serves; one ClientSession, shared by every request, keeps connections to the upstream
alive. Each request's method, path and query, headers (minus hop-by-hop ones) and body are
forwarded, and the response is streamed back chunk by chunk. It runs on uvloop by default, because
a developer who cares about a proxy's speed reaches for uvloop first (``--loop asyncio`` for the
standard loop). No access log, like the nginx proxy it is compared with.

    python bench/gateway/aiohttp_proxy.py --listen 127.0.0.1:8080 --upstream http://127.0.0.1:8081
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# Hop-by-hop headers (RFC 9110 §7.6.1) mean something for one connection only; Host is set by the
# client from the upstream URL. None of these is forwarded.
NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The headers to forward: all but the hop-by-hop ones (duplicates such as Set-Cookie kept)."""
    return CIMultiDict((name, value) for name, value in headers.items() if name.lower() not in NOT_FORWARDED)


async def proxy(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION]
    url = URL(request.app[UPSTREAM] + request.raw_path, encoded=True)
    body = await request.read()
    try:
        upstream = await session.request(
            request.method, url, headers=end_to_end(request.headers), data=body or None, allow_redirects=False
        )
    except aiohttp.ClientError as exc:
        raise web.HTTPBadGateway(text=f"upstream unavailable: {exc}") from exc
    async with upstream:
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=end_to_end(upstream.headers)
        )
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def client_session(app: web.Application) -> AsyncIterator[None]:
    # auto_decompress=False: forward bodies as the upstream encoded them, with their Content-Encoding.
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        app[SESSION] = session
        yield


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(client_session)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", required=True, help="host:port to serve on")
    parser.add_argument(
        "--upstream", required=True, help="base URL of the upstream, e.g. http://127.0.0.1:8081"
    )
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    loop = uvloop.new_event_loop() if args.loop == "uvloop" else asyncio.new_event_loop()
    web.run_app(
        make_app(args.upstream),
        host=host,
        port=int(port),
        access_log=None,
        print=None,
        shutdown_timeout=2.0,
        loop=loop,
    )


if __name__ == "__main__":
    main()
