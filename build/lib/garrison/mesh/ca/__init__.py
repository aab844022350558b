"""The workload certificate authority: join tokens, issuance and renewal, revocation, trust bundles.

The certificates themselves (what goes in them, how keys are kept) are ``garrison.pki.authority`` and
``garrison.pki.authority_files``, shared because the gateway and the identity provider take their
``auto`` certificates from the same authority.
"""
