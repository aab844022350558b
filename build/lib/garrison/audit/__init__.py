"""The audit collector (`garrison audit`): receives every component's events, keeps them in a
tamper-evident log (hash chain and signed RFC 9162 Merkle checkpoints), indexes them for search,
runs detection rules, executes responses through the components' admin APIs, and ships the log to
Loki, Elasticsearch and OTLP receivers."""
