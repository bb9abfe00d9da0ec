"""The fleet (DESIGN §10): many tenants' repositories on PostgreSQL and procrastinate.

This package's face is the configuration (`fleet.yaml`) and the tokens, which need no database driver;
`reconciler.fleet.schema` (migrations, token storage) imports psycopg and procrastinate, and is imported
only by the commands that use it.
"""

from __future__ import annotations

from .config import DATABASE_ENV, Fleet, Tenant, database_url, load_fleet, resolve_ref
from .tokens import new_token, token_hash

__all__ = [
    "DATABASE_ENV",
    "Fleet",
    "Tenant",
    "database_url",
    "load_fleet",
    "new_token",
    "resolve_ref",
    "token_hash",
]
