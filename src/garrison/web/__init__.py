"""Small HTTP server pieces shared by every component (``simplehttp``: the side listeners' responder)."""
