"""The OAuth 2.0 / OpenID Connect identity provider: Authlib's grants and endpoints, a thin async web
adapter, and storage through SQLAlchemy (SQLite under the state dir, or PostgreSQL)."""
