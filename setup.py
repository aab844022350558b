"""Compiles the data plane's hot modules with mypyc; pyproject.toml holds everything else.

Every proxied request runs the modules listed in ``HOT_MODULES`` (the proxy core, the gateway's
request path, the sidecar's, URI normalisation, metrics and the access log). They are strictly typed
already, so mypyc turns them into C extensions beside the .py files: ``pip install`` (plain or
editable, ``make .venv/.installed``) builds them whenever a C compiler is there.

The .py files stay the source of truth and stay importable: ``GARRISON_PURE_PYTHON=1`` at run time
makes ``import garrison...`` load them instead of the extensions (src/garrison/_purepython.py), and
``GARRISON_NO_COMPILE=1`` at build time skips compilation altogether (a pure-Python install).

The build type-checks the hot modules with its own mypy options, not the project's strict ones
(``make lint`` enforces those): third-party packages are not in pip's isolated build environment, so
they are left out on purpose (``--no-site-packages``) and read as ``Any``, which gives the same C
code whether the build is isolated or not. Their objects are Python objects either way.
"""

from __future__ import annotations

import os

from setuptools import setup

# One shared library holds them all, so that calls between these modules are native C calls.
HOT_MODULES = [
    "garrison/proxy/state.py",
    "garrison/proxy/connection.py",
    "garrison/proxy/exchange.py",
    "garrison/proxy/stages.py",
    "garrison/proxy/http1.py",
    "garrison/proxy/trace.py",
    "garrison/proxy/upstream/pool.py",
    "garrison/proxy/upstream/balancer.py",
    "garrison/proxy/upstream/target.py",
    "garrison/proxy/upstream/service.py",
    "garrison/proxy/upstream/circuit.py",
    "garrison/proxy/upstream/retry.py",
    "garrison/uri/normalize.py",
    "garrison/telemetry/metrics.py",
    "garrison/telemetry/accesslog.py",
    "garrison/gateway/proxy.py",
    "garrison/gateway/head.py",
    "garrison/gateway/forward.py",
    "garrison/gateway/exchange.py",
    "garrison/gateway/answers.py",
    "garrison/gateway/router.py",
    "garrison/gateway/stages.py",
    "garrison/gateway/policy_stages.py",
    "garrison/gateway/authn.py",
    "garrison/gateway/iprules.py",
    "garrison/gateway/ratelimit.py",
    "garrison/gateway/ratelimit_decision.py",
    "garrison/gateway/ratelimit_memory.py",
    "garrison/mesh/sidecar/request.py",
    "garrison/mesh/sidecar/answers.py",
    "garrison/mesh/sidecar/forward.py",
    "garrison/mesh/sidecar/relay.py",
    "garrison/mesh/sidecar/gate.py",
    "garrison/mesh/sidecar/inbound.py",
    "garrison/mesh/sidecar/outbound.py",
]

# The build's mypy options (see the docstring): no config file, no site-packages, errors only in
# the modules compiled (the rest of garrison is type-checked for their types, silently).
MYPY_OPTIONS = [
    "--config-file",
    os.devnull,
    "--no-site-packages",
    "--ignore-missing-imports",
    "--follow-imports",
    "silent",
]


def skip_compile() -> bool:
    return os.environ.get("GARRISON_NO_COMPILE", "").strip().lower() in ("1", "true", "yes")


def ext_modules() -> list[object]:
    if skip_compile():
        return []
    from mypyc.build import mypycify

    here = os.path.dirname(os.path.abspath(__file__))
    os.chdir(here)  # mypycify takes paths relative to the project
    paths = [os.path.join("src", module) for module in HOT_MODULES]
    return list(mypycify([*MYPY_OPTIONS, *paths], opt_level="3", group_name="garrison_hot"))


setup(ext_modules=ext_modules())
