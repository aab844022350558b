"""Small HTTP pieces shared by every component: the app layer for component APIs (``http``: request,
response, JSON errors; ``router``; ``app``: an ASGI app with limits and headers), the ONE definition
of the security headers (``headers``), and ``simplehttp``, the side listeners' responder."""
