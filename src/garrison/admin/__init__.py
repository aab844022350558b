"""The admin listener shared by every component: who may use it (``auth``: the admin token, the Host
and Origin checks, admin TLS)."""
