"""Upstream targets of a service: connection pools, balancing, retries, circuit breakers, health checks."""
