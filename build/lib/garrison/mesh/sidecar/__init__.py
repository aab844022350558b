"""The mesh sidecar (`garrison sidecar`): mutual TLS in from peers, plain HTTP out from the local app.

``identity`` what the sidecar needs from a workload identity (pki/workload.py's WorkloadIdentity, or
static files); ``gate`` the decisions (policy, revocations, quarantine); ``relay`` the HTTP/1.1
connection both sides share, on the proxy core; ``inbound`` and ``outbound`` the two sides;
``upstreams`` the app's and the peers' UpstreamServices; ``component`` the process (run_component).
"""
