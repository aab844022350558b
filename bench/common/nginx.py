"""nginx as a benchmark server: render a config template, start it in the foreground, wait until it answers.

Templates use ``@name`` placeholders (nginx itself uses ``$`` for its variables); ``@tmp`` is always
the run's temporary directory, where nginx keeps its pid file, logs and temp paths.
"""

from __future__ import annotations

import string
import subprocess
from pathlib import Path

from common.processes import Server


class _NginxTemplate(string.Template):
    delimiter = "@"


def render(template: Path, tmp: Path, **values: object) -> Path:
    """template filled in with tmp and values, written to tmp/<template's name>."""
    text = _NginxTemplate(template.read_text()).substitute(tmp=tmp, **values)
    conf = tmp / template.name
    conf.write_text(text)
    return conf


def argv(name: str, conf: Path, tmp: Path, prefix: list[str]) -> list[str]:
    """nginx in the foreground with conf; its pid file named after the server in tmp."""
    directives = f"daemon off; pid {tmp / name}.pid;"
    return [*prefix, "nginx", "-p", str(tmp), "-c", str(conf), "-g", directives]


def start(name: str, conf: Path, tmp: Path, prefix: list[str]) -> Server:
    """The started nginx process group (the caller waits for it to answer)."""
    return Server(name, argv(name, conf, tmp, prefix), tmp / f"{name}.out")


def check(conf: Path, tmp: Path) -> str:
    """`nginx -t` on conf: "" if the configuration is valid, else what nginx said."""
    done = subprocess.run(
        [*argv("check", conf, tmp, []), "-t"], capture_output=True, text=True, timeout=30, check=False
    )
    return "" if done.returncode == 0 else done.stderr + done.stdout
