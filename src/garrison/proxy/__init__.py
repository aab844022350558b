"""The HTTP/1.1 proxy core shared by the gateway and (later) the mesh sidecar.

``http1`` holds the wire rules llhttp leaves to us, ``normalize`` the one request-target parser and
path normaliser (defined in ``garrison.uri``, whose rules garrison.yaml's checks share), and
``upstream`` the targets of a service: pools, balancing, retries, breakers and health checks. Edge
policy (authentication, limits, cache, CORS) stays in ``garrison.gateway``.
"""
