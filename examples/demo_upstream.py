"""A small demo service for `make demo`: echoes what the gateway forwarded, as JSON.

It shows what an upstream behind Garrison sees: the normalized path, the client address the
gateway resolved, the request id and the trace context.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

DEMO_HEADERS = (
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "traceparent",
    "x-garrison-subject",  # set by the gateway once a caller is authenticated
    "x-garrison-client",
    "x-garrison-scopes",
)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
            payload = {
                "service": "demo",
                "method": method,
                "path": target,
                "body_bytes": len(body),
                "seen_headers": {k: headers[k] for k in DEMO_HEADERS if k in headers},
            }
            data = json.dumps(payload, indent=2).encode() + b"\n"
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(data), data)
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(host: str, port: int) -> None:
    server = await asyncio.start_server(handle, host, port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7001)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.host, args.port))
