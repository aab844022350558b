"""The admin listener shared by every component: the API (``api``: /live, /ready, /metrics and the
component's sub-APIs), who may use it (``auth``: the admin token, the Host and Origin checks, admin
TLS), and binding and serving it (``listener``)."""
