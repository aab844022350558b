"""A tiny service app for the mesh demo (`make demo`): run once as `orders`, once as `payments`.

Behind its sidecar, it answers any request with JSON saying who called it: the caller identity its
sidecar verified (the `garrison-caller` headers; the sidecar drops any the caller sent itself).
`/call/<peer>/<path>` makes it call a peer instead, the way an app in the mesh does: plain HTTP to
its own sidecar's outbound port (`http://127.0.0.1:<outbound>/<peer>/<path>`), which adds mutual TLS,
the peer's identity check, and the policy. It answers with the peer's status and answer.

Standard library only, so it runs wherever Garrison does.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PASSED_ON = ("content-type", "traceparent")  # what a call to a peer keeps from the request that made it


class Handler(BaseHTTPRequestHandler):
    service = "app"
    outbound = "127.0.0.1:15000"

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/call/"):
            status, payload = self._call_peer(self.path[len("/call") :], body)
        else:
            status, payload = (
                200,
                {
                    "service": self.service,
                    "method": self.command,
                    "path": self.path,
                    "caller": self.headers.get("garrison-caller"),
                    "caller_service": self.headers.get("garrison-caller-service"),
                },
            )
        data = json.dumps(payload, indent=2).encode() + b"\n"
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _call_peer(self, peer_path: str, body: bytes) -> tuple[int, dict[str, object]]:
        """``peer_path`` is ``/<peer>/<path>``: through this service's sidecar, as the sidecar wants it."""
        headers = {name: self.headers[name] for name in PASSED_ON if self.headers.get(name)}
        url = f"http://{self.outbound}{peer_path}"
        request = urllib.request.Request(url, data=body or None, method=self.command, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                status, answer = int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            status, answer = int(exc.code), exc.read()
        except OSError as exc:
            return 502, {"service": self.service, "error": f"cannot reach the sidecar: {exc}"}
        try:
            decoded: object = json.loads(answer)
        except ValueError:
            decoded = answer.decode(errors="replace")
        return status, {"service": self.service, "called": peer_path, "status": status, "answer": decoded}

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the sidecars log every call already."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--service", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--outbound", required=True, help="host:port of this service's sidecar outbound")
    args = parser.parse_args()
    Handler.service, Handler.outbound = args.service, args.outbound
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
