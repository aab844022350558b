"""The floor of the gateway benchmark: the least a Python reverse proxy can do per request.

uvloop + httptools, keep-alive on both sides, one upstream connection per client connection, no
features: it parses the request head, sends it on with the same headers, and relays the response's
bytes unchanged while parsing them, as any proxy must to know where a response ends. Request bodies
go on as read (not re-chunked): the benchmark sends GETs. No timeouts, no limits, no header rules, no logs,
no metrics: never deploy it. It answers "how far is Garrison's proxy from what Python itself can do
on this machine", as nginx answers "how far from C".

    .venv/bin/python bench/gateway/bare_proxy.py --listen 127.0.0.1:8080 --upstream 127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
import socket

import httptools
import uvloop

BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the upstream, owned by one client connection."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.pending: list[bytes] = []  # heads written before the connection was up

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.pending:
            transport.write(b"".join(self.pending))
            self.pending.clear()

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)  # relayed as is; llhttp follows the keep-alive framing
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class Client(asyncio.Protocol):
    def __init__(self, upstream_address: tuple[str, int]) -> None:
        self.upstream_address = upstream_address
        self.parser = httptools.HttpRequestParser(self)
        self.headers: list[bytes] = []
        self.url = b""
        self.upstream: Upstream | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        upstream = self.upstream = Upstream(self)
        loop = asyncio.get_running_loop()
        self.connecting = loop.create_task(loop.create_connection(lambda: upstream, *self.upstream_address))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(BAD_REQUEST)
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        method = self.parser.get_method()
        head = b"%s %s HTTP/1.1\r\n%s\r\n" % (method, self.url, b"".join(self.headers))
        self.headers = []
        assert self.upstream is not None
        self.upstream.send(head)

    def on_body(self, body: bytes) -> None:
        assert self.upstream is not None
        self.upstream.send(body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", required=True, help="host:port to serve on")
    parser.add_argument("--upstream", required=True, help="host:port of the upstream")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    up_host, up_port = args.upstream.rsplit(":", 1)
    upstream = (up_host, int(up_port))

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Client(upstream), host, int(port), backlog=4096)
        await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
