"""mesh/sidecar/settings.py: the sidecar's compact copy of garrison.yaml, its wire form, and the child
that validates the file (the loader's errors, word for word)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from garrison.config.loader import ConfigError, load_config
from garrison.mesh.policy import CallPolicy, gateway_id
from garrison.mesh.sidecar.settings import (
    load_settings,
    reload_settings,
    settings_from_config,
    settings_from_json,
    settings_to_json,
)

FULL = """
trust_domain: shop.local
state_dir: state
gateway:
  listen: 127.0.0.1:0
  admin: {listen: "127.0.0.1:0", token_file: tokens/admin.token}
services:
  orders:
    targets: [http://127.0.0.1:7001, http://127.0.0.1:7003]
    balancer: least_requests
    read_timeout: 5s
    pool: {max_idle: 3}
    health_check: {path: /healthz, interval: 2s}
    calls:
      - {service: payments, methods: [POST], paths: [/charges, /refunds/**]}
      - {service: payments}
  payments:
    targets: [http://127.0.0.1:7002]
routes:
  - match: {path: /api, prefix: true, methods: [GET]}
    service: orders
    auth: {require: none}
mesh:
  ca: {listen: "0.0.0.0:8701"}
  sidecars:
    orders:
      inbound: 127.0.0.1:15001
      admin:
        listen: 10.0.0.1:9000
        hosts: [sidecar.internal]
        tls: {cert: admin.pem, key: admin-key.pem}
    payments: {inbound: 127.0.0.1:15002, address: payments.internal:15002, app: http://127.0.0.1:9}
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "garrison.yaml"
    path.write_text(FULL)
    return path


def test_the_copy_holds_what_the_models_say_and_survives_its_wire_form(config_file: Path) -> None:
    loaded = load_config(config_file)
    settings = settings_from_config(loaded.config, loaded.source)
    assert settings_from_json(settings_to_json(settings)) == settings
    assert settings.ca_url == "https://127.0.0.1:8701"  # the derived default
    assert settings.state_dir == config_file.parent / "state"  # resolved against the file
    orders, payments = settings.sidecars["orders"], settings.sidecars["payments"]
    assert orders.admin.token_file == str(config_file.parent / "tokens" / "admin.token")  # the gateway's
    assert orders.admin.tls is not None and orders.admin.tls.cert == "admin.pem"
    assert orders.admin.hosts == ("sidecar.internal",)
    assert (payments.address, payments.app, payments.outbound) == (
        "payments.internal:15002",
        "http://127.0.0.1:9",
        "127.0.0.1:0",
    )
    service = settings.services["orders"]
    model = loaded.config.services["orders"]
    assert service.targets == tuple(model.targets)
    assert (service.balancer, service.read_timeout, service.pool.max_idle) == ("least_requests", 5.0, 3)
    assert service.health_check is not None and service.health_check.path == "/healthz"
    assert service.circuit_breaker.open_for == model.circuit_breaker.open_for
    assert settings.services["payments"].health_check is None


def test_grants_decide_as_the_model_does(config_file: Path) -> None:
    loaded = load_config(config_file)
    from_model = CallPolicy.from_config(loaded.config)
    copy = settings_from_json(settings_to_json(settings_from_config(loaded.config, loaded.source)))
    from_grants = CallPolicy.from_grants(copy.grants)
    orders, gateway = "spiffe://shop.local/svc/orders", gateway_id("shop.local")
    calls = [
        (orders, "payments", "POST", "/charges"),
        (orders, "payments", "DELETE", "/anything"),  # the second, unrestricted entry
        (orders, "payments", "GET", "/refunds/1"),
        (gateway, "orders", "GET", "/api/x"),
        (gateway, "orders", "POST", "/api/x"),
        (gateway, "payments", "GET", "/api"),
        ("spiffe://shop.local/svc/payments", "orders", "GET", "/"),
    ]
    for call in calls:
        assert from_grants.allows(*call) == from_model.allows(*call), call
    assert from_grants.callers_of("payments") == from_model.callers_of("payments") == [orders]


@pytest.mark.process  # the settings child is a real subprocess
def test_the_child_answers_the_settings_or_the_loaders_error(config_file: Path) -> None:
    loaded = load_config(config_file)
    assert load_settings(config_file) == settings_from_config(loaded.config, loaded.source)
    config_file.write_text(FULL.replace("balancer: least_requests", "balancer: random"))
    with pytest.raises(ConfigError) as direct:
        load_config(config_file)
    with pytest.raises(ConfigError) as through_child:
        load_settings(config_file)
    with pytest.raises(ConfigError) as on_reload:
        asyncio.run(reload_settings(config_file))
    assert str(through_child.value) == str(on_reload.value) == str(direct.value)
    assert through_child.value.problems == direct.value.problems


@pytest.mark.process  # the settings child is a real subprocess
def test_an_unreadable_file_is_the_loaders_error_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_settings(tmp_path / "missing.yaml")
