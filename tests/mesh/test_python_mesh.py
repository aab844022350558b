"""mesh/python end to end: GarrisonTransport (httpx) -> uvicorn with GarrisonMiddleware, real mTLS on
port 0, certificates from an in-process CA (the real component, SQLite), renewals under load."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from cryptography import x509

from garrison.config.loader import load_config
from garrison.mesh.ca.server import CaComponent, ca_files
from garrison.mesh.policy import CallPolicy, CallRule
from garrison.mesh.python.asgi import GarrisonMiddleware, Receive, Scope, Send
from garrison.mesh.python.serving import uvicorn_config
from garrison.mesh.python.transport import GarrisonTransport, PeerRefused
from garrison.pki.workload import WorkloadIdentity

pytestmark = pytest.mark.process  # an in-process CA and uvicorn on real TLS sockets

TD = "spiffe://shop.local"
ORDERS, PAYMENTS, INVENTORY = (f"{TD}/svc/{name}" for name in ("orders", "payments", "inventory"))
# orders may POST /charges and GET /charges/**; nobody else may call payments.
POLICY = CallPolicy(
    {
        "payments": {
            ORDERS: (
                CallRule(frozenset({"POST"}), frozenset({"/charges"}), ()),
                CallRule(frozenset({"GET"}), frozenset({"/charges"}), ("/charges/",)),
            )
        }
    }
)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Echoes what the middleware handed over: the caller (state and headers) and its certificate."""
    leaf = scope["extensions"]["tls"]["client_cert_chain"][0]
    body = {
        "state": scope["state"].get("garrison_caller"),
        "headers": [[k.decode(), v.decode()] for k, v in scope["headers"] if b"garrison" in k],
        "client_serial": x509.load_pem_x509_certificate(leaf.encode()).serial_number,
        "path": scope["path"],
    }
    data = yaml.safe_dump(body).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(data))]}
    )
    await send({"type": "http.response.body", "body": data})


@contextlib.asynccontextmanager
async def running_ca(directory: Path) -> AsyncIterator[CaComponent]:
    config = {
        "state_dir": str(directory / "state"),
        "trust_domain": "shop.local",
        "services": {
            name: {"targets": ["http://127.0.0.1:9"]} for name in ("orders", "payments", "inventory")
        },
        "mesh": {"ca": {"listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"}}},
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "garrison.yaml").write_text(yaml.safe_dump(config))
    loaded = load_config(directory / "garrison.yaml")
    ca_files(loaded.config).init("shop.local", now=dt.datetime.now(dt.UTC))
    component = CaComponent(loaded)
    listeners = await component.start()
    component.url = f"https://{listeners['ca']}"  # type: ignore[attr-defined]
    try:
        yield component
    finally:
        await component.drain()


async def joined(ca: CaComponent, directory: Path, spiffe_id: str) -> WorkloadIdentity:
    assert ca.parts is not None
    token = await ca.parts.tokens.mint(spiffe_id, dt.timedelta(minutes=5))
    identity = WorkloadIdentity(
        ca.url,  # type: ignore[attr-defined]
        directory,
        ca_bundle=ca.parts.files.bundle_file,
        join_token=token,
        follow_state=False,
    )
    await identity.start()
    return identity


@contextlib.asynccontextmanager
async def serving(identity: WorkloadIdentity, service: str) -> AsyncIterator[str]:
    """``service``'s app behind the middleware, on uvicorn, on a socket bound to port 0 up front."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    guarded = GarrisonMiddleware(app, identity, POLICY, service=service)
    config = uvicorn_config(guarded, identity, lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield "127.0.0.1:%d" % listener.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        listener.close()


@contextlib.asynccontextmanager
async def mesh(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    async with running_ca(tmp_path / "ca") as ca:
        ids = {
            name: await joined(ca, tmp_path / name, f"{TD}/svc/{name}")
            for name in ("orders", "payments", "inventory")
        }
        async with serving(ids["payments"], "payments") as address:
            yield {"ids": ids, "address": address}
        for identity in ids.values():
            await identity.close()


def client(identity: WorkloadIdentity, peers: dict[str, str]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=GarrisonTransport(identity, peers=peers))


def test_an_allowed_call_reaches_the_app_with_the_caller_and_spoofed_headers_stripped(tmp_path: Path) -> None:
    async def body() -> None:
        async with mesh(tmp_path) as m, client(m["ids"]["orders"], {"payments": m["address"]}) as orders:
            spoofed = {
                "garrison-caller": INVENTORY,
                "x-garrison-caller": INVENTORY,
                "garrison_caller_service": "x",
            }
            answer = await orders.post("https://payments/charges", headers=spoofed)
            assert answer.status_code == 200, answer.text
            seen = yaml.safe_load(answer.text)
            assert seen["state"] == ORDERS
            assert sorted(seen["headers"]) == [
                ["garrison-caller", ORDERS],
                ["garrison-caller-service", "orders"],
            ]
            assert (await orders.get("https://payments/charges/7")).status_code == 200

    asyncio.run(body())


def test_denied_callers_methods_and_path_tricks_get_403_json(tmp_path: Path) -> None:
    async def body() -> None:
        async with mesh(tmp_path) as m:
            peers = {"payments": m["address"]}
            async with (
                client(m["ids"]["inventory"], peers) as inventory,
                client(m["ids"]["orders"], peers) as orders,
            ):
                refused = await inventory.post("https://payments/charges")
                assert refused.status_code == 403
                assert refused.json() == {
                    "error": "forbidden",
                    "message": "this call is not allowed by the mesh policy",
                }
                assert (await orders.delete("https://payments/charges")).status_code == 403  # method
                assert (await orders.get("https://payments/admin")).status_code == 403  # path
                trick = httpx.URL("https://payments/charges/../admin")
                request = orders.build_request("GET", trick)
                request.url = request.url.copy_with(raw_path=b"/charges/%2e%2e/admin")
                assert (await orders.send(request)).status_code == 403
                bad = orders.build_request("GET", "https://payments/x")
                bad.url = bad.url.copy_with(raw_path=b"/charges/..%2fadmin")
                assert (await orders.send(bad)).status_code == 400  # does not normalise: no policy at all

    asyncio.run(body())


def test_a_server_with_another_services_certificate_is_refused(tmp_path: Path) -> None:
    async def body() -> None:
        async with mesh(tmp_path) as m:
            # "inventory" is dialed at the payments server: its certificate says payments, not inventory.
            async with client(m["ids"]["orders"], {"inventory": m["address"]}) as orders:
                with pytest.raises(PeerRefused, match=f"the peer is {PAYMENTS}, not {INVENTORY}"):
                    await orders.get("https://inventory/stock")
                with pytest.raises(PeerRefused, match="no workload identity"):
                    await orders.get(f"http://{m['address']}/charges")

    asyncio.run(body())


def test_both_sides_rotate_three_times_under_a_request_loop_with_zero_failures(tmp_path: Path) -> None:
    async def body() -> None:
        async with mesh(tmp_path) as m:
            orders_id, payments_id = m["ids"]["orders"], m["ids"]["payments"]
            client_serials: set[int] = set()
            server_serials: set[int] = set()
            failures: list[str] = []
            done = 0
            progress = asyncio.Condition()

            async def worker(orders: httpx.AsyncClient, count: int) -> None:
                nonlocal done
                for index in range(count):
                    # every third request on a fresh connection: it must present the current certificate
                    headers = {"connection": "close"} if index % 3 == 0 else {}
                    try:
                        answer = await orders.get("https://payments/charges/1", headers=headers)
                        if answer.status_code != 200:
                            failures.append(f"{answer.status_code} {answer.text}")
                        else:
                            client_serials.add(yaml.safe_load(answer.text)["client_serial"])
                            ssl_object = answer.extensions["network_stream"].get_extra_info("ssl_object")
                            server_serials.add(
                                x509.load_der_x509_certificate(ssl_object.getpeercert(True)).serial_number
                            )
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                    async with progress:
                        done += 1
                        progress.notify_all()

            async def rotations() -> None:
                for step in (1, 2, 3):
                    async with progress:
                        await progress.wait_for(lambda: done >= 30 * step)
                    await asyncio.gather(orders_id.renew(), payments_id.renew())

            async with client(orders_id, {"payments": m["address"]}) as orders:
                await asyncio.gather(rotations(), *(worker(orders, 40) for _ in range(4)))
            assert failures == []
            assert len(client_serials) == 4 and len(server_serials) == 4  # each rotation was used

    asyncio.run(body())
