"""The proxy's request-target parser and path normaliser: `garrison.uri.normalize`, re-exported.

The rules live in the URI grammar package below the config layer, so that garrison.yaml's route
paths are checked with exactly these rules without the config importing the proxy (see
`garrison.uri`). This name stays for the proxy's modules and its tests.
"""

from __future__ import annotations

from garrison.uri.normalize import (
    MAX_PATH_LENGTH,
    RequestTarget,
    TargetRejected,
    normalize_path,
    parse_request_target,
)

__all__ = ["MAX_PATH_LENGTH", "RequestTarget", "TargetRejected", "normalize_path", "parse_request_target"]
