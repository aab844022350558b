"""mesh/python end to end: GarrisonTransport (httpx) -> uvicorn with GarrisonMiddleware, real mTLS on
port 0, certificates from an in-process CA (the real component, SQLite), renewals under load."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import uvloop
import yaml
from ca_inprocess import running_ca
from cryptography import x509

from garrison.mesh.ca.server import CaComponent
from garrison.mesh.policy import CallPolicy, CallRule
from garrison.mesh.python.asgi import GarrisonMiddleware, Message, Receive, Scope, Send
from garrison.mesh.python.serving import listening_socket, uvicorn_config
from garrison.mesh.python.transport import GarrisonSyncTransport, GarrisonTransport, PeerRefused
from garrison.pki.workload import MeshState, WorkloadIdentity

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


async def joined(ca: CaComponent, directory: Path, spiffe_id: str, follow_state: bool) -> WorkloadIdentity:
    assert ca.parts is not None
    token = await ca.parts.tokens.mint(spiffe_id, dt.timedelta(minutes=5))
    identity = WorkloadIdentity(
        ca.url,  # type: ignore[attr-defined]
        directory,
        ca_bundle=ca.parts.files.bundle_file,
        join_token=token,
        follow_state=follow_state,
    )
    await identity.start()
    return identity


@contextlib.asynccontextmanager
async def serving(identity: WorkloadIdentity, service: str) -> AsyncIterator[str]:
    """``service``'s app behind the middleware, on uvicorn, on a socket bound to port 0 up front."""
    listener = listening_socket("127.0.0.1", 0)
    guarded = GarrisonMiddleware(app, identity, POLICY, service=service)
    config = uvicorn_config(guarded, identity, lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        listener.close()


@contextlib.asynccontextmanager
async def mesh(tmp_path: Path, *, follow_state: bool = False) -> AsyncIterator[dict[str, Any]]:
    async with running_ca(tmp_path / "ca", ("orders", "payments", "inventory")) as ca:
        ids = {
            name: await joined(ca, tmp_path / name, f"{TD}/svc/{name}", follow_state)
            for name in ("orders", "payments", "inventory")
        }
        async with serving(ids["payments"], "payments") as address:
            yield {"ids": ids, "address": address, "ca": ca}
        for identity in ids.values():
            await identity.close()


def client(identity: WorkloadIdentity, peers: dict[str, str]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=GarrisonTransport(identity, peers=peers))


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_an_allowed_call_reaches_the_app_with_the_caller_and_spoofed_headers_stripped(
    tmp_path: Path, run: Callable[[Coroutine[Any, Any, None]], None]
) -> None:
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

    run(body())


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


def test_without_a_verified_certificate_nothing_passes_and_lifespan_does(tmp_path: Path) -> None:
    async def body() -> None:
        async with mesh(tmp_path) as m:
            seen: list[str] = []

            async def inner(scope: Scope, receive: Receive, send: Send) -> None:
                seen.append(scope["type"])

            guarded = GarrisonMiddleware(inner, m["ids"]["payments"], POLICY, service="payments")
            sent: list[Message] = []

            async def send(message: Message) -> None:
                sent.append(message)

            async def receive() -> Message:
                return {"type": "http.request", "body": b""}

            plain = {
                "type": "http",
                "method": "POST",
                "path": "/charges",
                "raw_path": b"/charges",
                "headers": [],
            }
            await guarded(plain, receive, send)  # served without TLS: no tls extension, no caller
            assert sent[0]["status"] == 403
            await guarded({"type": "websocket", "path": "/charges", "headers": []}, receive, send)
            assert sent[-1] == {"type": "websocket.close", "code": 1008}
            await guarded({"type": "lifespan"}, receive, send)
            assert seen == ["lifespan"]

    asyncio.run(body())


def test_a_server_with_another_services_certificate_is_refused(tmp_path: Path) -> None:
    async def body() -> None:
        async with mesh(tmp_path) as m:
            # "inventory" is dialed at the payments server: its certificate says payments, not inventory.
            orders = client(m["ids"]["orders"], {"inventory": m["address"]})
            async with orders:
                with pytest.raises(PeerRefused) as refused:
                    await orders.get("https://inventory/stock")
                assert str(refused.value) == f"the peer is {PAYMENTS}, not {INVENTORY}"
                with pytest.raises(PeerRefused, match="no workload identity"):
                    await orders.get(f"http://{m['address']}/charges")

    asyncio.run(body())


def test_the_sync_transport_calls_and_refuses_the_same_way(tmp_path: Path) -> None:
    def calls(identity: WorkloadIdentity, address: str) -> tuple[int, int, str]:
        transport = GarrisonSyncTransport(identity, peers={"payments": address, "inventory": address})
        with httpx.Client(transport=transport) as orders:
            allowed = orders.post("https://payments/charges", headers={"garrison-caller": INVENTORY})
            denied = orders.get("https://payments/admin")
            with pytest.raises(PeerRefused) as refused:
                orders.get("https://inventory/stock")
            return allowed.status_code, denied.status_code, str(refused.value)

    async def body() -> None:
        async with mesh(
            tmp_path
        ) as m:  # the server and the identity run on this loop, the client in a thread
            allowed, denied, refused = await asyncio.to_thread(calls, m["ids"]["orders"], m["address"])
            assert (allowed, denied) == (200, 403)
            assert refused == f"the peer is {PAYMENTS}, not {INVENTORY}"

    asyncio.run(body())


def test_revoked_and_quarantined_callers_are_refused_as_soon_as_the_state_arrives(tmp_path: Path) -> None:
    async def body() -> None:
        async with mesh(tmp_path, follow_state=True) as m:
            ca: CaComponent = m["ca"]
            assert ca.parts is not None
            changes = asyncio.Queue[MeshState]()
            m["ids"]["payments"].on_state(changes.put_nowait)

            async def state_where(check: Callable[[MeshState], bool]) -> None:
                while not check(await asyncio.wait_for(changes.get(), 10)):
                    pass

            async with client(m["ids"]["orders"], {"payments": m["address"]}) as orders:
                assert (await orders.post("https://payments/charges")).status_code == 200
                await ca.parts.state.quarantine("orders", "test")
                await state_where(lambda state: "orders" in state.quarantined)
                assert (await orders.post("https://payments/charges")).status_code == 403  # same connection
                await ca.parts.state.unquarantine("orders")
                await state_where(lambda state: not state.quarantined)
                assert (await orders.post("https://payments/charges")).status_code == 200
                await ca.parts.state.revoke(ORDERS, "test")
                await state_where(lambda state: ORDERS in state.revoked)
                assert (await orders.post("https://payments/charges")).status_code == 403

    asyncio.run(body())


class Load:
    """A request loop from orders to payments, bounded (workers x limit) and stopped by the test, that
    records every failure and the certificates each side presented."""

    def __init__(self, orders: httpx.AsyncClient) -> None:
        self.orders = orders
        self.failures: list[str] = []
        self.client_serials: set[int] = set()
        self.server_serials: set[int] = set()
        self.done = 0
        self.stopped = False
        self.finished = False
        self.progress = asyncio.Condition()

    async def run(self, workers: int, limit: int) -> None:
        await asyncio.gather(*(self._worker(limit) for _ in range(workers)))
        async with self.progress:
            self.finished = not self.stopped  # hit the bound, not stopped by the test
            self.progress.notify_all()

    async def reached(self, count: int) -> None:
        """Until ``count`` requests were answered (or the bound was hit: the test's asserts say so)."""
        async with self.progress:
            await self.progress.wait_for(lambda: self.done >= count or self.finished)

    async def _worker(self, limit: int) -> None:
        for index in range(limit):
            if self.stopped:
                return
            # every third request closes its connection: new connections must present the current certificate
            headers = {"connection": "close"} if index % 3 == 0 else {}
            try:
                answer = await self.orders.get("https://payments/charges/1", headers=headers)
                self._record(answer)
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
            async with self.progress:
                self.done += 1
                self.progress.notify_all()

    def _record(self, answer: httpx.Response) -> None:
        if answer.status_code != 200:
            self.failures.append(f"{answer.status_code} {answer.text}")
            return
        self.client_serials.add(yaml.safe_load(answer.text)["client_serial"])
        ssl_object = answer.extensions["network_stream"].get_extra_info("ssl_object")
        self.server_serials.add(x509.load_der_x509_certificate(ssl_object.getpeercert(True)).serial_number)


def test_both_sides_rotate_three_times_under_a_request_loop_with_zero_failures(tmp_path: Path) -> None:
    async def body() -> None:
        async with mesh(tmp_path) as m:
            orders_id, payments_id = m["ids"]["orders"], m["ids"]["payments"]
            async with client(orders_id, {"payments": m["address"]}) as orders:
                load = Load(orders)

                async def rotations() -> None:
                    # 30 answered requests after each step, counted from when the step is done: a
                    # renewal takes a while (the key is made in a child process), and the requests
                    # after the last one must still see its certificates.
                    for _ in range(3):
                        await load.reached(load.done + 30)
                        await asyncio.gather(orders_id.renew(), payments_id.renew())
                    await load.reached(load.done + 30)
                    load.stopped = True

                await asyncio.gather(rotations(), load.run(workers=4, limit=2000))
            assert not load.finished and load.failures == []  # stopped after the rotations, nothing failed
            assert len(load.client_serials) == 4 and len(load.server_serials) == 4  # each rotation was used

    asyncio.run(body())


def test_a_root_rotation_replaces_the_pools_under_a_request_loop_with_zero_failures(tmp_path: Path) -> None:
    async def body() -> None:
        async with mesh(tmp_path, follow_state=True) as m:
            ca: CaComponent = m["ca"]
            assert ca.parts is not None
            files, now = ca.parts.files, dt.datetime.now(dt.UTC)
            (old_root,) = files.bundle()
            orders_id, payments_id = m["ids"]["orders"], m["ids"]["payments"]
            replaced = {"orders": asyncio.Event(), "payments": asyncio.Event()}
            for name in replaced:
                m["ids"][name].on_contexts(lambda server, client, name=name: replaced[name].set())

            async def bundle_changed() -> None:  # the CA publishes it within a second
                await asyncio.wait_for(asyncio.gather(*(event.wait() for event in replaced.values())), 10)
                for event in replaced.values():
                    event.clear()

            transport = GarrisonTransport(orders_id, peers={"payments": m["address"]})
            async with httpx.AsyncClient(transport=transport) as orders:
                load = Load(orders)

                async def rotation() -> None:
                    await load.reached(20)
                    root = files.add_root("shop.local", now=now)
                    await bundle_changed()
                    await load.reached(load.done + 20)
                    files.activate_root(root, "shop.local", now=now)
                    await asyncio.gather(orders_id.renew(), payments_id.renew())
                    await load.reached(load.done + 20)
                    files.retire_root(old_root.serial_number)
                    await bundle_changed()
                    await load.reached(load.done + 30)
                    load.stopped = True

                await asyncio.gather(rotation(), load.run(workers=4, limit=5000))
                assert not load.finished  # the whole rotation ran under the loop
                assert transport.generation == 2  # each bundle change built new pools
            assert load.failures == []
            (new_root,) = files.bundle()
            chain = x509.load_pem_x509_certificates((tmp_path / "orders" / "identity.pem").read_bytes())
            chain[-1].verify_directly_issued_by(new_root)  # renewed under the new root

    asyncio.run(body())
