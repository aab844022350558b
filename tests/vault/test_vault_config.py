"""The `vault` section: secure defaults, what the loader refuses, and the warnings it gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from garrison.config.loader import ConfigError, load_config, parse_config


def test_absent_by_default_and_secure_when_asked_for() -> None:
    assert parse_config("{}").config.vault is None
    loaded = parse_config("vault: {}\n")
    vault = loaded.config.vault
    assert vault is not None
    assert vault.listen == "127.0.0.1:8200" and vault.tls.cert == "auto" and not vault.tls.insecure_disable
    assert vault.database is None and not vault.dev
    assert vault.audit.fail_closed and vault.audit.file is None
    assert vault.max_request_body == 1024 * 1024
    assert vault.token.default_ttl == vault.token.max_ttl == 768 * 3600
    assert not [warning for warning in loaded.warnings if warning.path.startswith("vault")]


def test_risky_choices_are_warned_about() -> None:
    text = "vault: {dev: true, tls: {insecure_disable: true}, audit: {fail_closed: false}}\n"
    messages = " ".join(warning.message for warning in parse_config(text).warnings)
    assert "dev mode" in messages and "TLS is off" in messages and "not audited" in messages


@pytest.mark.parametrize(
    "text",
    [
        "vault: {listen: nowhere}\n",
        "vault: {database: mysql://x/y}\n",
        "vault: {max_request_body: 0}\n",
        "vault: {audit: {fail_open: true}}\n",  # a misspelt key is an error, never a default
        "vault: {token: {default_ttl: -1s}}\n",
    ],
)
def test_bad_settings_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_config(text)


def test_the_audit_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    directory = tmp_path
    (directory / "garrison.yaml").write_text("vault: {audit: {file: logs/audit.log}}\n")
    vault = load_config(directory / "garrison.yaml").config.vault
    assert vault is not None and vault.audit.file == str(directory / "logs" / "audit.log")
