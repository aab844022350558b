"""The HTTP/1.1 proxy core shared by the gateway and (later) the mesh sidecar.

``http1`` holds the wire rules llhttp leaves to us (the request-target parser and path normaliser
are ``garrison.uri.normalize``, whose rules garrison.yaml's checks share); ``state`` the client
connection's one state enum and the response phase of an exchange; ``connection`` the
protocol-neutral base of a client connection (state machine, flow control, output); ``exchange`` the
protocol-neutral part of an exchange; ``stages`` the stage protocol and the per-route ``Chain`` a
request runs through; ``upstream`` the targets of a service: the ``UpstreamService`` that owns
in-flight and breaker accounting, pools, balancing, retries, breakers and health checks. Edge policy
(authentication, limits, cache, CORS) and the order of its stages stay in ``garrison.gateway``.
"""
