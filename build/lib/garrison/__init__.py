"""Garrison: a zero-trust security plane for HTTP microservices."""

__version__ = "0.1.0"
