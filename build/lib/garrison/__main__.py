"""``python -m garrison``: the same as the ``garrison`` command (entry.py: a sidecar without the CLI)."""

from garrison.entry import main

main()
