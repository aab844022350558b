"""The secrets vault: encrypted storage behind a seal, tokens and ACL policies, KV v2, an audit file,
and the HashiCorp Vault HTTP API in front of them (docs/vault.md)."""
