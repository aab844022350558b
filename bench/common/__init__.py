"""What the gateway and identity benchmarks share: wrk, processes under test, figures, rendering, CLI.

The benchmarks are run as scripts (``.venv/bin/python bench/gateway/run.py``), so Python puts the
script's own folder on ``sys.path``, not ``bench/``; each ``run.py`` adds ``bench/`` before its first
local import so that ``import common`` finds this package, without installing it or making ``bench``
a package that would have to be run with ``-m``.
"""
