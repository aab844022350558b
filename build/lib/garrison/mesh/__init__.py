"""The service mesh: the workload CA (``ca/``), and (to come) the sidecar policy on the shared proxy core."""
