"""The call graph of garrison.yaml as a default-deny decision, and the config errors it can have."""

from __future__ import annotations

import pytest

from garrison.config.loader import ConfigError, parse_config
from garrison.mesh.policy import CallPolicy, gateway_id, service_id
from garrison.uri.normalize import TargetRejected, normalize_path

CONFIG = """
trust_domain: shop.local
services:
  orders:
    targets: [http://127.0.0.1:7001]
    calls:
      - {service: payments, methods: [POST], paths: [/charges]}
      - {service: payments, methods: [GET], paths: [/charges/**]}
      - {service: inventory}
  payments:
    targets: [http://127.0.0.1:7002]
  inventory:
    targets: [http://127.0.0.1:7003]
routes:
  - match: {path: /api/orders, prefix: true, methods: [GET, POST]}
    service: orders
    auth: {require: none}
"""

ORDERS = service_id("shop.local", "orders")
PAYMENTS = service_id("shop.local", "payments")


@pytest.fixture(scope="module")
def policy() -> CallPolicy:
    return CallPolicy.from_config(parse_config(CONFIG).config)


def decide(policy: CallPolicy, caller: str | None, callee: str, method: str, raw_path: str) -> bool:
    """As the sidecar does: normalize first (a path that does not normalize never reaches the policy)."""
    try:
        path = normalize_path(raw_path.encode()).decode()
    except TargetRejected:
        return False
    return policy.allows(caller, callee, method, path)


@pytest.mark.parametrize(
    ("caller", "callee", "method", "path", "allowed"),
    [
        (ORDERS, "payments", "POST", "/charges", True),
        (ORDERS, "payments", "GET", "/charges", True),  # /charges/** includes /charges
        (ORDERS, "payments", "GET", "/charges/42", True),
        (ORDERS, "payments", "POST", "/charges/42", False),  # POST only on /charges itself
        (ORDERS, "payments", "GET", "/chargesX", False),  # a subtree stops at a segment boundary
        (ORDERS, "payments", "DELETE", "/charges", False),
        (ORDERS, "payments", "POST", "/refunds", False),
        (ORDERS, "payments", "POST", "/charges/../refunds", False),  # decided on the normalized path
        (ORDERS, "payments", "GET", "/charges/%2e%2e/admin", False),
        (ORDERS, "payments", "GET", "/%63harges/1", True),  # %63 is "c": the same path after decoding
        (ORDERS, "inventory", "PATCH", "/anything/at/all", True),  # no methods, no paths: any
        (PAYMENTS, "orders", "GET", "/", False),  # not listed: denied
        (None, "payments", "POST", "/charges", False),  # no certificate
        ("spiffe://evil.local/svc/orders", "payments", "POST", "/charges", False),  # another domain
        (gateway_id("shop.local"), "orders", "GET", "/api/orders/7", True),  # from a route
        (gateway_id("shop.local"), "orders", "DELETE", "/api/orders/7", False),
        (gateway_id("shop.local"), "orders", "GET", "/admin", False),
        (gateway_id("shop.local"), "payments", "POST", "/charges", False),  # no route to payments
    ],
)
def test_default_deny(
    policy: CallPolicy, caller: str | None, callee: str, method: str, path: str, allowed: bool
) -> None:
    assert decide(policy, caller, callee, method, path) is allowed


def test_who_may_call_whom(policy: CallPolicy) -> None:
    assert policy.callers_of("payments") == [ORDERS]
    assert policy.callers_of("orders") == [gateway_id("shop.local")]
    assert policy.callers_of("nobody") == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("{service: billing}", "services.orders.calls[0].service: no service 'billing'"),
        ("{service: payments, paths: [/a/../b]}", "normalized form"),
        ("{service: payments, paths: []}", "at least 1"),
        ("{service: payments, methods: [post]}", "pattern"),
        ("{service: payments, verbs: [GET]}", "unknown key"),
    ],
)
def test_call_graph_errors(call: str, message: str) -> None:
    text = f"""
services:
  orders: {{targets: [http://127.0.0.1:1], calls: [{call}]}}
  payments: {{targets: [http://127.0.0.1:2]}}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert message in str(caught.value)
