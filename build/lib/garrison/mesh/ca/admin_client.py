"""The CLI's side of the CA's admin API: one call, with the admin token, to ``mesh.ca.admin.listen``.

``AdminUnreachable`` (nothing listens there, or the port is 0 and so unknown) tells the CLI to work on
the CA's files and database directly instead; any other failure is an error to show.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from garrison.admin.auth import admin_client_context, admin_token_path, read_admin_token
from garrison.config.loader import LoadedConfig
from garrison.config.model import parse_listen

__all__ = ["AdminUnreachable", "ca_admin_call"]

TIMEOUT = 10.0


class AdminUnreachable(Exception):
    """The CA's admin listener does not answer: the CA is not running."""


def ca_admin_call(loaded: LoadedConfig, method: str, path: str, query: dict[str, str]) -> dict[str, Any]:
    """The JSON answer; ValueError with the CA's message when it refuses."""
    config = loaded.config
    assert config.mesh is not None
    admin = config.mesh.ca.admin
    host, port = parse_listen(admin.listen)
    if port == 0:
        raise AdminUnreachable
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    scheme = "https" if admin.tls is not None else "http"
    url = f"{scheme}://{authority}{path}?{urllib.parse.urlencode(query)}"
    context = admin_client_context(admin, loaded.source.parent)
    try:
        socket.create_connection((host, port), timeout=TIMEOUT).close()
    except OSError:
        raise AdminUnreachable from None
    token_path = Path(admin.token_file) if admin.token_file else admin_token_path(config)
    headers = {"Authorization": f"Bearer {read_admin_token(token_path)}"}
    request = urllib.request.Request(url, method=method, headers=headers)  # noqa: S310 - http(s) only
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as response:  # noqa: S310
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        answer = json.loads(exc.read() or b"{}")
        raise ValueError(
            f"the CA refused ({exc.code}): {answer.get('message', answer.get('error', exc.reason))}"
        ) from None
