"""Shipping the audit log to Loki, Elasticsearch and OTLP receivers (docs/audit.md, "Shipping").

Each shipper follows the log from its own durable cursor, batches, delivers in log order, retries
with back-off for as long as its receiver is down, and reports what it shipped, failed and skipped.
"""

from garrison.audit.ship.service import ShippingService

__all__ = ["ShippingService"]
