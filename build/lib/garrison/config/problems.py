"""What is wrong with a config file: ``Problem`` and ``ConfigError``, apart from the loader.

Apart so that a process handed a config's verdict by another one (the mesh sidecar validates its file
in a short-lived child, mesh/sidecar/settings.py) raises the very error the loader raises, with the
same wording, without importing YAML or pydantic. ``config.loader`` re-exports both names.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConfigError", "Problem"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or risky) in a config file."""

    path: str
    message: str
    line: int | None = None

    def render(self, filename: str) -> str:
        where = f"{filename}:{self.line}: " if self.line else f"{filename}: "
        return f"{where}{self.path or '<top>'}: {self.message}"


class ConfigError(Exception):
    """A config file that cannot be used; ``problems`` lists every error found."""

    def __init__(self, filename: str, problems: list[Problem]) -> None:
        self.filename = filename
        self.problems = problems
        super().__init__("\n".join(p.render(filename) for p in problems))
