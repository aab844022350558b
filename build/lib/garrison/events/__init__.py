"""Audit events: the one schema every component emits (schema.py) and the emitter that carries them
to the audit collector (emitter.py). A shared package below the components: each component emits,
none imports the collector (garrison.audit)."""
