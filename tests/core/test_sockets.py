"""core/sockets.py: port 0 read back, IPv6, SO_REUSEADDR always, SO_REUSEPORT and inheritance on demand."""

from __future__ import annotations

import socket

import pytest

from garrison.core.sockets import address_of, bind_socket


def test_port_0_is_resolved_and_read_back() -> None:
    with bind_socket("127.0.0.1:0") as sock:
        host, port = address_of(sock).rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) == sock.getsockname()[1] > 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        assert not sock.getblocking() and not sock.get_inheritable()


def test_ipv6_addresses_are_bracketed() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        sock = bind_socket("[::1]:0")
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    with sock:
        assert sock.family == socket.AF_INET6
        assert address_of(sock) == f"[::1]:{sock.getsockname()[1]}"


@pytest.mark.process
def test_reuse_port_lets_several_processes_share_a_port() -> None:
    with bind_socket("127.0.0.1:0", reuse_port=True) as first:
        first.listen()
        with bind_socket(address_of(first), reuse_port=True) as second:
            assert second.getsockname() == first.getsockname()


@pytest.mark.process
def test_a_port_in_use_is_refused_without_reuse_port() -> None:
    with bind_socket("127.0.0.1:0") as first:
        first.listen()
        with pytest.raises(OSError, match="in use"):
            bind_socket(address_of(first))


def test_inheritable_for_a_child_process() -> None:
    with bind_socket("127.0.0.1:0", inheritable=True) as sock:
        assert sock.get_inheritable()


def test_sockets_say_tcp_so_the_standard_loop_turns_nagle_off() -> None:
    """asyncio's selector loop sets TCP_NODELAY on accepted sockets only when the listener's protocol is
    IPPROTO_TCP; with protocol 0 each small response waits for a delayed ACK (~40 ms)."""
    sock = bind_socket("127.0.0.1:0")
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
