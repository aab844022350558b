"""``python -m garrison``: the same as the ``garrison`` command."""

from garrison.cli import main

main()
