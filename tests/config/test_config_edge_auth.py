"""Config rules for client certificates (`require: mtls`) and for what a route's rate limits count."""

from __future__ import annotations

import textwrap

import pytest

from garrison.config.loader import ConfigError, LoadedConfig, Problem, parse_config

HEAD = """\
gateway:
  tls: {cert: auto}
  jwt: {issuer: "https://idp.shop.local", audiences: [shop]}
  mtls:
    ca: clients-ca.pem
    clients:
      - {id: billing, uri: "spiffe://partner.example/billing", scopes: [invoices:read]}
services:
  api: {targets: ["http://127.0.0.1:7001"]}
routes:
"""


def load(routes: str, head: str = HEAD) -> LoadedConfig:
    return parse_config(head + textwrap.indent(textwrap.dedent(routes).lstrip("\n"), "  "), "garrison.yaml")


def problems(routes: str, head: str = HEAD) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load(routes, head)
    return caught.value.problems


def test_an_mtls_route_with_a_client_limit_and_an_address_limit() -> None:
    loaded = load(
        """
        - match: {path: /invoices, prefix: true}
          service: api
          auth: {require: mtls, scopes: [invoices:read]}
          rate_limit:
            - {rate: 100/second, key: ip}
            - {rate: 10/minute, key: client}
        """
    )
    route = loaded.config.routes[0]
    assert route.rate_limit is not None
    assert [limit.key for limit in route.rate_limit] == ["ip", "client"]


def test_a_single_rate_limit_mapping_is_a_list_of_one() -> None:
    loaded = load(
        """
        - match: {path: /x}
          service: api
          auth: {require: jwt}
          rate_limit: {rate: 5/second}
        """
    )
    limits = loaded.config.routes[0].rate_limit
    assert limits is not None and len(limits) == 1 and limits[0].key == "ip"


def test_require_mtls_needs_the_gateway_section() -> None:
    head = HEAD.replace(HEAD[HEAD.index("  mtls:") : HEAD.index("services:")], "")
    (problem,) = problems("- {match: {path: /x}, service: api, auth: {require: mtls}}\n", head)
    assert problem.path == "routes[0].auth.require"
    assert "gateway.mtls" in problem.message


def test_mtls_without_tls_is_refused() -> None:
    head = HEAD.replace("tls: {cert: auto}", "tls: {insecure_disable: true}")
    found = problems("- {match: {path: /x}, service: api, auth: {require: mtls}}\n", head)
    assert [p.path for p in found] == ["gateway.mtls"]


@pytest.mark.parametrize(
    ("client", "message"),
    [
        ("{id: a, scopes: []}", "exactly one of"),
        ("{id: a, uri: 'spiffe://x/a', dns: a.example}", "exactly one of"),
        ("{id: 'a b', dns: a.example}", "pattern"),
    ],
)
def test_each_client_names_exactly_one_certificate_name(client: str, message: str) -> None:
    head = HEAD.replace(
        '{id: billing, uri: "spiffe://partner.example/billing", scopes: [invoices:read]}', client
    )
    found = problems("- {match: {path: /x}, service: api, auth: {require: mtls}}\n", head)
    assert any(message in p.message and p.path.startswith("gateway.mtls.clients") for p in found), found


def test_two_clients_with_the_same_name_are_refused() -> None:
    head = HEAD.replace(
        "      - {id: billing,",
        "      - {id: other, uri: 'spiffe://partner.example/billing'}\n      - {id: billing,",
    )
    found = problems("- {match: {path: /x}, service: api, auth: {require: mtls}}\n", head)
    assert any("same certificate name" in p.message for p in found), found


def test_roles_and_claims_are_for_tokens_only() -> None:
    found = problems("- {match: {path: /x}, service: api, auth: {require: mtls, roles: [admin]}}\n")
    assert any("roles and claims need `require: jwt`" in p.message for p in found), found


@pytest.mark.parametrize(
    ("auth", "key", "message"),
    [
        ("{require: none}", "client", "counts authenticated clients"),
        ("{require: jwt}", "api_key", "needs `auth: {require: api_key}`"),
        ("{require: mtls}", "api_key", "needs `auth: {require: api_key}`"),
    ],
)
def test_a_limit_counts_only_what_the_route_authenticates(auth: str, key: str, message: str) -> None:
    (problem,) = problems(
        f"- {{match: {{path: /x}}, service: api, auth: {auth}, rate_limit: {{rate: 1/second, key: {key}}}}}\n"
    )
    assert problem.path == "routes[0].rate_limit[0].key"
    assert message in problem.message
