"""``python -m garrison.mesh.sidecar.validate FILE``: a sidecar's settings from garrison.yaml, as JSON.

The short-lived half of mesh/sidecar/settings.py (see there why): the whole file is loaded with the
one loader, so a sidecar refuses exactly what ``garrison check`` refuses, and the part a sidecar needs
is printed on stdout: ``{"settings": ...}``, or ``{"filename": ..., "problems": [...]}`` when the file
is refused. Exit status 0 either way; anything else (a crash) is the parent's to report.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from garrison.config.loader import ConfigError, load_config
from garrison.mesh.sidecar.settings import settings_from_config, settings_to_json

__all__ = ["main"]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m garrison.mesh.sidecar.validate FILE\n")
        return 2
    try:
        loaded = load_config(argv[0])
    except ConfigError as exc:
        refused = {"filename": exc.filename, "problems": [asdict(problem) for problem in exc.problems]}
        sys.stdout.write(json.dumps(refused))
        return 0
    sys.stdout.write(
        '{"settings": ' + settings_to_json(settings_from_config(loaded.config, loaded.source)) + "}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
