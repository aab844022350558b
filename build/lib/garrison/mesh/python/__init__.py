"""mTLS for Python services that run without a sidecar (issue 9).

- ``transport.GarrisonTransport``: an ``httpx`` transport that calls ``https://<peer service>/...``
  over mutual TLS with the workload's current certificate and refuses a server that is not
  ``spiffe://<td>/svc/<peer>``;
- ``asgi.GarrisonMiddleware``: the call policy (default deny) in front of an ASGI app, with the
  caller's verified SPIFFE ID handed to the app;
- ``serving``: how uvicorn serves such an app with the identity's live server context and puts the
  peer's certificate where the middleware reads it (the ASGI ``tls`` extension).

All of it rides on ``garrison.pki.workload.WorkloadIdentity``: certificates renewed in place, trust
bundle changes announced through ``on_contexts``. See docs/mesh.md, "Python services without a
sidecar".
"""
