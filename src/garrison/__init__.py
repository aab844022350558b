"""Garrison: a zero-trust security plane for HTTP microservices.

The data plane's hot modules may be compiled with mypyc (setup.py); ``_purepython`` decides, before
any other garrison module is imported, whether this process loads them compiled or as plain Python
(GARRISON_PURE_PYTHON=1), and ``compiled_modules()`` says which run compiled.
"""

from garrison._purepython import build_status, compiled_modules, install

__version__ = "0.1.0"
__all__ = ["__version__", "build_status", "compiled_modules"]

install()
