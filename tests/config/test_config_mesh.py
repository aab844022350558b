"""The `mesh` section: defaults, the CA's derived url, and what the loader refuses."""

from __future__ import annotations

import pytest

from garrison.config.loader import ConfigError, parse_config

SERVICES = """
services:
  orders: {targets: [http://127.0.0.1:7001]}
  payments: {targets: [http://127.0.0.1:7002]}
"""


def test_absent_by_default_and_minimal_when_asked_for() -> None:
    assert parse_config(SERVICES).config.mesh is None
    mesh = parse_config(SERVICES + "mesh: {}\n").config.mesh
    assert mesh is not None
    assert mesh.ca.listen == "127.0.0.1:8700" and mesh.ca.url == "https://127.0.0.1:8700"
    assert mesh.ca.workload_ttl == 3600.0


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("0.0.0.0:8700", "https://127.0.0.1:8700"),
        ("[::]:8700", "https://[::1]:8700"),
        ("[::1]:9", "https://[::1]:9"),
    ],
)
def test_the_ca_url_dials_what_it_listens_on(listen: str, url: str) -> None:
    mesh = parse_config(SERVICES + f"mesh: {{ca: {{listen: '{listen}'}}}}\n").config.mesh
    assert mesh is not None and mesh.ca.url == url


def test_sidecars_name_known_services_and_guard_their_admin() -> None:
    text = (
        SERVICES
        + """
mesh:
  sidecars:
    orders: {inbound: 0.0.0.0:15001}
    billing: {inbound: 0.0.0.0:15002}
    payments: {inbound: 0.0.0.0:15003, admin: {listen: 0.0.0.0:9999}}
"""
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    message = str(caught.value)
    assert "mesh.sidecars.billing: no service 'billing'" in message
    assert "mesh.sidecars.payments.admin.listen: an admin listener off loopback needs `tls`" in message
    assert "mesh.sidecars.orders" not in message


def test_workload_lifetimes_are_bounded() -> None:
    with pytest.raises(ConfigError, match="workload_ttl"):
        parse_config(SERVICES + "mesh: {ca: {workload_ttl: 2d}}\n")
