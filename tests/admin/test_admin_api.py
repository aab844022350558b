"""The shared admin API (admin/api.py) and its listener (admin/listener.py): built-in endpoints,
registered sub-APIs, and a real listener on port 0 behind the guard."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from garrison.admin.api import PROMETHEUS_TEXT, AdminApi
from garrison.admin.listener import start_admin_listener
from garrison.config.model import AdminConfig
from garrison.web.simplehttp import SimpleRequest, SimpleResponse


def answer(api: AdminApi, method: bytes, target: bytes) -> SimpleResponse:
    response = api(SimpleRequest(method, target, {b"host": b"127.0.0.1:9901"}))
    if inspect.isawaitable(response):
        return asyncio.run(_wait(response))
    return response


async def _wait(pending: object) -> SimpleResponse:
    assert inspect.isawaitable(pending)
    result = await pending
    assert isinstance(result, SimpleResponse)
    return result


def registry_with_one_counter() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("garrison_test_things", "Things.", registry=registry).inc(3)
    return registry


def test_live_ready_and_metrics() -> None:
    reasons: list[str] = []
    api = AdminApi(lambda: reasons, registry_with_one_counter())
    assert (answer(api, b"GET", b"/live").status, answer(api, b"GET", b"/live").body) == (200, b"ok\n")
    assert answer(api, b"GET", b"/ready").body == b"ready\n"
    reasons.append("starting")
    ready = answer(api, b"GET", b"/ready")
    assert (ready.status, ready.body) == (503, b"not ready: starting\n")
    metrics = answer(api, b"GET", b"/metrics?x=1")
    assert metrics.content_type == PROMETHEUS_TEXT
    assert b"garrison_test_things_total 3.0" in metrics.body


def test_readiness_and_metrics_may_be_coroutines() -> None:
    async def reasons() -> list[str]:
        return ["draining"]

    async def exposition() -> bytes:
        return b"# merged\n"

    api = AdminApi(reasons, exposition)
    assert answer(api, b"GET", b"/ready").body == b"not ready: draining\n"
    assert answer(api, b"GET", b"/metrics").body == b"# merged\n"


def test_unknown_paths_are_404_and_other_methods_405_with_allow() -> None:
    api = AdminApi(list, CollectorRegistry())
    assert answer(api, b"GET", b"/nowhere").status == 404
    refused = answer(api, b"POST", b"/metrics")
    assert refused.status == 405 and refused.headers == b"allow: GET, HEAD\r\n"


def test_a_registered_sub_api_answers_its_prefix_and_below() -> None:
    seen: list[bytes] = []

    def sub(request: SimpleRequest) -> SimpleResponse:
        seen.append(request.method + b" " + request.target)
        return SimpleResponse(200, b"sub\n")

    api = AdminApi(list, CollectorRegistry())
    api.register("/blocklist", sub)
    assert answer(api, b"DELETE", b"/blocklist?ip=192.0.2.1").body == b"sub\n"
    assert answer(api, b"GET", b"/blocklist/entries").body == b"sub\n"
    assert answer(api, b"GET", b"/blocklisted").status == 404  # a prefix is a path segment, not a string
    assert seen == [b"DELETE /blocklist?ip=192.0.2.1", b"GET /blocklist/entries"]
    with pytest.raises(ValueError, match="built-in"):
        api.register("/metrics", sub)
    with pytest.raises(ValueError, match="prefix"):
        api.register("/vault/", sub)


async def _request(address: str, head: bytes) -> tuple[int, bytes]:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head)
    data = await reader.read()
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data


@pytest.mark.process
def test_the_listener_serves_the_api_behind_the_guard(tmp_path: Path) -> None:
    token_path = tmp_path / "admin.token"

    async def main() -> None:
        api = AdminApi(list, registry_with_one_counter())
        listener = await start_admin_listener(AdminConfig(listen="127.0.0.1:0"), token_path, tmp_path, api)
        try:
            host = listener.address.encode()
            status, data = await _request(listener.address, b"GET /live HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
            assert status == 200 and data.endswith(b"\r\n\r\nok\n")
            assert b"x-content-type-options: nosniff\r\n" in data
            assert b"content-security-policy: default-src 'none'; frame-ancestors 'none'\r\n" in data
            assert b"strict-transport-security" not in data  # no TLS, no HSTS
            status, _ = await _request(listener.address, b"POST /live HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
            assert status == 401
            token = token_path.read_text().strip().encode()
            with_token = b"POST /live HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n" % (
                host,
                token,
            )
            assert (await _request(listener.address, with_token))[0] == 405
            foreign = b"GET /live HTTP/1.1\r\nHost: %s\r\nOrigin: https://evil.example\r\n\r\n" % host
            assert (await _request(listener.address, foreign))[0] == 403
            assert (await _request(listener.address, b"GET /live HTTP/1.1\r\nHost: evil.example\r\n\r\n"))[
                0
            ] == 421
            assert listener.guard.denied == {"credential": 1, "origin": 1, "host": 1}
        finally:
            await listener.close()

    asyncio.run(main())
