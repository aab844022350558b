"""Identity tests run on SQLite and on a fresh PostgreSQL schema each: the ``backend`` fixture of
tests/helpers/db_backend.py (made available by tests/conftest.py), with the identity tables registered here so
that ``Backend.run`` and ``Backend.tables`` create them."""

from __future__ import annotations

from db_backend import Backend as Backend  # re-exported: test modules import the type from here

import garrison.identity.tables  # noqa: F401  (registers the identity tables on the shared metadata)
