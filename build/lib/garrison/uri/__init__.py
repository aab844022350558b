"""The URI grammar that both garrison.yaml and the proxy core obey: one parser, two users.

``normalize`` is the request-target parser and path normaliser of the gateway (and later the
sidecar); ``origin`` parses an upstream target URL into the address and Host header the pool uses.
They are plain functions over strings and bytes, with no I/O and no proxy state.

Why a foundation package and not validation hooks: the config layer has to refuse exactly the route
paths and upstream targets the proxy would refuse, with the proxy's own rules. Two ways to get that
without the config importing the proxy (a layer pointing upwards) were open: a registry of
validators that each entry point installs before loading a file, or the grammar itself moved below
both. A registry fails open by construction -- a caller that loads a file without installing it
(a test, a new component, a script) would accept any path -- and needs a guard to make it fail
closed again. Moved grammar cannot be forgotten: ``garrison check``, the gateway and every other
component run the very same functions at load, and there is nothing to register. So the grammar
lives here, beside ``config`` in the bottom layer, and ``garrison.proxy`` imports it from here.
"""
