"""Which garrison modules run compiled (mypyc), and the switch that runs them all as plain Python.

setup.py compiles the data plane's hot modules into C extensions beside their .py files, and
Python's import system prefers an extension to a .py file of the same name. Two cases must load the
.py files anyway, which a finder placed first on ``sys.meta_path`` (installed by
``garrison/__init__.py`` before any other garrison module is imported) takes care of:

- ``GARRISON_PURE_PYTHON=1``: the pure-Python path, on request (tests of both paths, profiling
  with py-spy, which sees no Python frames inside an extension, a suspected mypyc bug);
- a source checkout (an editable install) where a hot .py file is newer than its extension: the
  extensions no longer match the code being edited, so none of them is used (they form one
  shared library, and mixing compiled and interpreted halves of one class hierarchy would give two
  copies of each class) until ``make compile`` (or ``pip install -e .``) builds them again.

``compiled_modules()`` says which modules run compiled in this process; ``garrison version``
shows it. Nothing here runs per request: the choice is made at import.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.machinery import (
    BYTECODE_SUFFIXES,
    EXTENSION_SUFFIXES,
    SOURCE_SUFFIXES,
    FileFinder,
    ModuleSpec,
    SourceFileLoader,
    SourcelessFileLoader,
)
from pathlib import Path
from types import ModuleType

ENV = "GARRISON_PURE_PYTHON"
_PACKAGE_DIR = Path(__file__).resolve().parent
# An editable install imports from the checkout: src/garrison/ with setup.py two levels up.
_CHECKOUT = (_PACKAGE_DIR.parent.parent / "setup.py").is_file()


def pure_python_requested() -> bool:
    """Whether GARRISON_PURE_PYTHON asks for plain Python (1, true, yes)."""
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes")


def _extensions() -> dict[str, Path]:
    """Module name -> compiled extension file, for every extension under the package."""
    found: dict[str, Path] = {}
    for directory, _dirs, files in os.walk(_PACKAGE_DIR):
        for file in files:
            for suffix in EXTENSION_SUFFIXES:
                if file.endswith(suffix):
                    relative = Path(directory, file[: -len(suffix)]).relative_to(_PACKAGE_DIR.parent)
                    found[".".join(relative.parts)] = Path(directory, file)
                    break
    return found


def stale_extensions() -> list[str]:
    """In a source checkout, the compiled modules whose .py file changed after the build."""
    if not _CHECKOUT:
        return []
    stale = []
    for name, extension in _extensions().items():
        source = extension.parent / (name.rpartition(".")[2] + ".py")
        try:
            if source.stat().st_mtime > extension.stat().st_mtime:
                stale.append(name)
        except OSError:
            stale.append(name)
    return sorted(stale)


class SourceFinder:
    """A meta-path finder for ``garrison.*`` that knows only .py (and .pyc) files, never extensions."""

    _loaders = ((SourceFileLoader, SOURCE_SUFFIXES), (SourcelessFileLoader, BYTECODE_SUFFIXES))

    def __init__(self) -> None:
        self._finders: dict[str, FileFinder] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not fullname.startswith("garrison.") or path is None:
            return None
        for entry in path:
            finder = self._finders.get(entry)
            if finder is None:
                finder = self._finders[entry] = FileFinder(entry, *self._loaders)
            spec = finder.find_spec(fullname, target)
            if spec is not None and spec.loader is not None:
                return spec
        return None

    def invalidate_caches(self) -> None:
        for finder in self._finders.values():
            finder.invalidate_caches()


_reason = ""


def install() -> None:
    """Put a SourceFinder first on sys.meta_path when the .py files must be loaded (see above)."""
    global _reason
    if pure_python_requested():
        _reason = f"{ENV} is set"
    elif stale := stale_extensions():
        _reason = f"stale extensions ({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''})"
    else:
        return
    if not any(isinstance(finder, SourceFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, SourceFinder())


def compiled_modules() -> list[str]:
    """The garrison modules this process runs compiled: imported ones, plus those it would import so."""
    if _reason:
        return []
    return sorted(_extensions())


def build_status() -> str:
    """One line: how many modules run compiled, or why none does."""
    if _reason:
        return f"pure Python: {_reason}"
    modules = compiled_modules()
    if not modules:
        return "pure Python: no compiled modules installed"
    return f"compiled with mypyc: {len(modules)} modules"
