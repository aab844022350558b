"""The process protocol every component runs through (DESIGN.md, "Code layout and style").

For now it holds the restart policy shared by ``garrison up`` and the gateway's ``workers: N``
supervisor; the rest of the protocol (bind, ready file, drain, reload, signals) moves here with
issue 8. Socket-free and clock-injectable, so it is tested without processes or waiting.
"""
