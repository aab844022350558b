"""garrison.yaml: the model, its loader and its generated reference.

``common`` holds the types several sections share, ``gateway`` / ``routes`` / ``services`` and
``identity`` one component's sections each, and ``assembly`` the whole file (``GarrisonConfig``) and
the run of every component's derived-default hook. ``loader`` reads a file with line numbers and
cross-checks; ``docs`` renders docs/config.md. ``model`` re-exports the names of the model as it was
before the split. Nothing here imports a component or the proxy: route paths and upstream targets
are checked with ``garrison.uri``, the grammar the proxy runs on.
"""
