"""The vault's listener on raw TLS sockets: Vault's LIST verb through llhttp (fed as GET, answered as LIST),
whichever way the request line is cut into reads, on a keep-alive connection between other requests;
heads over 16 KiB and unknown methods refused."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator

import pytest
from vault_harness import VaultProcess, vault_config

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VaultProcess, str]]:
    directory = tmp_path_factory.mktemp("vault-http")
    process = VaultProcess(directory, vault_config(directory, dev=True)).start()
    try:
        root = (process.state_dir / "vault" / "dev-root.token").read_text().strip()
        client = process.client(root)
        for name in ("a", "b"):
            client.secrets.kv.v2.create_or_update_secret(f"team/{name}", {"k": name})
        yield process, root
    finally:
        process.stop()


class Connection:
    """One TLS connection; requests written in the pieces given, answers read by Content-Length."""

    def __init__(self, process: VaultProcess) -> None:
        host, port = process.address.rsplit(":", 1)
        context = ssl.create_default_context(cafile=process.ca_file)
        self.sock = context.wrap_socket(
            socket.create_connection((host, int(port)), timeout=10), server_hostname=host
        )
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, *pieces: bytes) -> None:
        for piece in pieces:
            self.sock.sendall(piece)  # each piece its own TLS record

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self._line(), 16)
                body += self._exactly(size)
                self._exactly(2)
                if size == 0:
                    break
        else:
            body = self._exactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, body

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.buffer += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True


def request(method: str, path: str, token: str, extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: vault\r\nX-Vault-Token: {token}\r\n{extra}\r\n".encode()


@pytest.mark.parametrize("cut", [0, 1, 2, 4, 5, 7])
def test_list_is_answered_however_the_request_line_is_cut(vault: tuple[VaultProcess, str], cut: int) -> None:
    process, root = vault
    whole = request("LIST", "/v1/secret/metadata/team", root)
    connection = Connection(process)
    try:
        connection.send(*([whole[:cut], whole[cut:]] if cut else [whole]))
        status, headers, body = connection.answer()
        assert status == 200 and headers["content-type"] == "application/json"
        assert json.loads(body)["data"]["keys"] == ["a", "b"]
    finally:
        connection.close()


def test_list_between_other_requests_on_one_connection(vault: tuple[VaultProcess, str]) -> None:
    process, root = vault
    connection = Connection(process)
    try:
        for method, path in [
            ("GET", "/v1/secret/data/team/a"),
            ("LIST", "/v1/secret/metadata/team"),
            ("GET", "/v1/secret/data/team/b"),
            ("LIST", "/v1/secret/metadata/team/"),
        ]:
            connection.send(request(method, path, root))
            status, _, body = connection.answer()
            assert status == 200
            data = json.loads(body)["data"]
            assert data["keys"] == ["a", "b"] if method == "LIST" else data["data"]["k"] == path[-1]
    finally:
        connection.close()


def test_a_list_without_a_token_is_refused_as_vault_does(vault: tuple[VaultProcess, str]) -> None:
    process, _ = vault
    connection = Connection(process)
    try:
        connection.send(b"LIST /v1/secret/metadata/team HTTP/1.1\r\nHost: vault\r\n\r\n")
        status, _, body = connection.answer()
        assert status == 403 and json.loads(body) == {"errors": ["permission denied"]}
    finally:
        connection.close()


@pytest.mark.parametrize(
    "head",
    [
        b"LISTEN /v1/secret/metadata/team HTTP/1.1\r\nHost: vault\r\n\r\n",  # not LIST: llhttp refuses it
        b"GET /v1/sys/health HTTP/1.1\r\nHost: vault\r\nX-Pad: " + b"a" * 17_000 + b"\r\n\r\n",
        b"GET /v1/sys/health?" + b"a" * 17_000 + b" HTTP/1.1\r\nHost: vault\r\n\r\n",
    ],
    ids=["unknown-method", "long-header", "long-url"],
)
def test_bad_heads_are_refused_and_the_connection_closed(
    vault: tuple[VaultProcess, str], head: bytes
) -> None:
    process, _ = vault
    connection = Connection(process)
    try:
        connection.send(head)
        status, _, _ = connection.answer()
        assert status == 400
        assert connection.closed_by_server()
    finally:
        connection.close()


def test_heads_under_the_limit_are_served(vault: tuple[VaultProcess, str]) -> None:
    process, root = vault
    connection = Connection(process)
    try:
        connection.send(request("GET", "/v1/secret/data/team/a", root, "X-Pad: " + "a" * 12_000 + "\r\n"))
        status, _, _ = connection.answer()
        assert status == 200
    finally:
        connection.close()
