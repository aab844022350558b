"""The process core every component runs through (DESIGN.md, "Code layout and style"; docs/core.md).

- ``sockets``: binding a listener (port 0 read back, IPv6, SO_REUSEPORT for workers).
- ``ready``: the one ready-file schema, written atomically, read back by ``read_ready``.
- ``runner``: ``run_component``: start, ready file, SIGTERM/SIGINT drain, SIGHUP reload, exit codes.
- ``supervisor``: the one supervisor of child processes (``garrison up``, the gateway's ``workers: N``).
- ``restart``: the back-off schedule the supervisor restarts a dead child on.

It sits below the components (gateway, identity, ...) and knows none of them.
"""
