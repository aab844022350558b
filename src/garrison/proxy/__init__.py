"""The HTTP/1.1 proxy core shared by the gateway and (later) the mesh sidecar.

``http1`` holds the wire rules llhttp leaves to us (the request-target parser and path normaliser
are ``garrison.uri.normalize``, whose rules garrison.yaml's checks share), ``stages`` the stage
protocol and the per-route ``Chain`` a request runs through, ``state`` the connection's one state
enum, and ``upstream`` the targets of a service: the ``UpstreamService`` that owns in-flight and
breaker accounting, pools, balancing, retries, breakers and health checks. Edge policy
(authentication, limits, cache, CORS) stays in ``garrison.gateway``.
"""
