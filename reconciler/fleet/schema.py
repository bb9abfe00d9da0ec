"""`stella fleet migrate` and `stella fleet token create|list|revoke`: the fleet's schema, roles and tokens.

`migrate` runs as the owner role of the database URL, in one transaction under an advisory lock, so
that it is idempotent and two migrations at once do not interleave. It applies procrastinate's schema
(from procrastinate's own schema manager) when it is not there yet, and Stella's tables:

- `stella_tenants(name)`: the tenants of fleet.yaml (upserted; a tenant no longer listed is kept and
  reported, never deleted here);
- `stella_tokens(tenant, token_hash, created_at)`: API tokens as SHA-256 hex, never in plain;
- `stella_evidence(tenant, id, …)`: the evidence index, with row-level security (ENABLE and FORCE) and
  one policy: a row is visible and insertable only when `tenant = current_setting('stella.tenant')`;
- `stella_pending(tenant, promotion, …)`: the promotions each tenant's last pass left pending (replaced
  by every pass), under the same row-level security;
- `stella_counters(tenant, metric, label, value)`: what the workers count for `/metrics` (passes by
  outcome, decisions by result, the pass duration histogram), added to by upsert; under row-level
  security to write (a session adds to its own tenant's counters only), readable by all.

It makes the service role (default `stella_service`; NOLOGIN, NOSUPERUSER, NOBYPASSRLS) and grants it
exactly: SELECT, INSERT on `stella_evidence` (no UPDATE, no DELETE), SELECT, INSERT, DELETE on
`stella_pending`, SELECT, INSERT, UPDATE on `stella_counters`, SELECT on the tenants and tokens, and
what procrastinate's workers and defers need (its tables, sequences and functions). An existing role
that is a superuser or bypasses RLS is refused, as is a service role equal to the owner.

Errors are translated here: a database that cannot be reached is `Transient` (exit 3); a role without
the privileges to migrate, or a database without the schema, is `InvalidInput` (exit 2).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg import sql

from ..errors import InvalidInput, Transient
from ..timefmt import rfc3339
from .config import Fleet
from .tokens import MIN_ID_LENGTH, new_token, token_hash, token_id

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10
"""Seconds to wait for the database to answer a connection."""
_LOCK_KEY = 0x5354454C4C41  # "STELLA": the advisory lock every migration takes
TABLES = ("stella_tenants", "stella_tokens", "stella_evidence", "stella_pending", "stella_counters")
ISOLATED = ("stella_evidence", "stella_pending")
"""The tables under row-level security by tenant, to read and to write."""
COUNTERS = "stella_counters"
"""Under row-level security to write only: a session adds to its own tenant's counters; `/metrics` reads
them all (they are public there anyway)."""
READ_POLICY = "stella_counters_read"
POLICY = "stella_tenant_isolation"

_CREATE: dict[str, sql.SQL] = {
    "stella_tenants": sql.SQL(
        """CREATE TABLE IF NOT EXISTS stella_tenants (
            name text PRIMARY KEY,
            created_at timestamptz NOT NULL DEFAULT now()
        )"""
    ),
    "stella_tokens": sql.SQL(
        """CREATE TABLE IF NOT EXISTS stella_tokens (
            tenant text NOT NULL REFERENCES stella_tenants (name),
            token_hash text PRIMARY KEY CHECK (token_hash ~ '^[0-9a-f]{64}$'),
            created_at timestamptz NOT NULL DEFAULT now()
        )"""
    ),
    "stella_evidence": sql.SQL(
        """CREATE TABLE IF NOT EXISTS stella_evidence (
            tenant text NOT NULL REFERENCES stella_tenants (name),
            id text NOT NULL,
            type text NOT NULL,
            environment text,
            promotion text,
            release_name text,
            release_id text,
            result text,
            decided_at timestamptz,
            statement jsonb NOT NULL,
            PRIMARY KEY (tenant, id)
        )"""
    ),
    "stella_pending": sql.SQL(
        """CREATE TABLE IF NOT EXISTS stella_pending (
            tenant text NOT NULL REFERENCES stella_tenants (name),
            promotion text NOT NULL,
            environment text,
            release_name text,
            seen_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant, promotion)
        )"""
    ),
    "stella_counters": sql.SQL(
        """CREATE TABLE IF NOT EXISTS stella_counters (
            tenant text NOT NULL REFERENCES stella_tenants (name),
            metric text NOT NULL,
            label text NOT NULL,
            value double precision NOT NULL,
            PRIMARY KEY (tenant, metric, label)
        )"""
    ),
}

TableState = Literal["created", "present"]


@dataclass(frozen=True)
class Migration:
    """What one `migrate` did."""

    procrastinate: TableState
    procrastinate_version: str
    tables: dict[str, TableState]
    role: str
    role_state: TableState
    tenants_added: list[str]
    tenants_unlisted: list[str]
    """In the database but no longer in fleet.yaml: kept."""

    def as_json(self) -> dict[str, Any]:
        return {
            "procrastinate": {"schema": self.procrastinate, "version": self.procrastinate_version},
            "tables": dict(self.tables),
            "rowLevelSecurity": {
                "table": "stella_evidence",
                "tables": list(ISOLATED),
                "policy": POLICY,
                "setting": "stella.tenant",
            },
            "serviceRole": {"name": self.role, "state": self.role_state},
            "tenants": {"added": list(self.tenants_added), "unlisted": list(self.tenants_unlisted)},
        }


@contextmanager
def connect(url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the fleet's database; one that cannot be made is `Transient` (exit 3)."""
    try:
        conn = psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Transient(f"cannot connect to the fleet database: {reason}") from exc
    except psycopg.ProgrammingError as exc:  # a malformed URL
        raise InvalidInput(f"the fleet database URL is not usable: {exc}") from exc
    try:
        with conn:
            yield conn
    except psycopg.errors.InsufficientPrivilege as exc:
        raise InvalidInput(f"the database role cannot do this: {_first_line(exc)}") from exc
    except psycopg.errors.UndefinedTable as exc:
        raise InvalidInput(
            f"the fleet database has no Stella schema ({_first_line(exc)}): run `stella fleet migrate`"
        ) from exc
    except psycopg.OperationalError as exc:
        raise Transient(f"the fleet database failed: {_first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise Transient(f"the fleet database refused: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def migrate(url: str, fleet: Fleet) -> Migration:
    """Bring the database of `url` to the fleet's schema, roles and tenants (idempotent)."""
    from procrastinate import __version__ as procrastinate_version

    with connect(url) as conn, conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        procrastinate = _procrastinate_schema(cur)
        tables = {name: _create_table(cur, name) for name in TABLES}
        _row_level_security(cur)
        role_state = _service_role(cur, fleet.serviceRole)
        _grant(cur, fleet.serviceRole)
        added, unlisted = _tenants(cur, [t.name for t in fleet.tenants])
    return Migration(
        procrastinate=procrastinate,
        procrastinate_version=procrastinate_version,
        tables=tables,
        role=fleet.serviceRole,
        role_state=role_state,
        tenants_added=added,
        tenants_unlisted=unlisted,
    )


def _exists(cur: psycopg.Cursor[Any], table: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
    row = cur.fetchone()
    return bool(row and row[0])


def _procrastinate_schema(cur: psycopg.Cursor[Any]) -> TableState:
    if _exists(cur, "procrastinate_jobs"):
        return "present"
    from procrastinate.schema import SchemaManager

    log.info("applying procrastinate's schema")
    cur.execute(SchemaManager.get_schema())
    return "created"


def _create_table(cur: psycopg.Cursor[Any], name: str) -> TableState:
    if _exists(cur, name):
        return "present"
    cur.execute(_CREATE[name])
    return "created"


def _row_level_security(cur: psycopg.Cursor[Any]) -> None:
    """ENABLE + FORCE row-level security on the tables of `ISOLATED`, each with its one policy, and on
    `COUNTERS`, readable by all and writable per tenant (replaced, so that a policy changed by hand is
    put back)."""
    own = sql.SQL("tenant = current_setting('stella.tenant', true)")
    rules: dict[str, dict[str, sql.Composable]] = {
        table: {POLICY: sql.SQL("FOR ALL USING ({}) WITH CHECK ({})").format(own, own)} for table in ISOLATED
    }
    rules[COUNTERS] = {
        READ_POLICY: sql.SQL("FOR SELECT USING (true)"),
        f"{POLICY}_insert": sql.SQL("FOR INSERT WITH CHECK ({})").format(own),
        f"{POLICY}_update": sql.SQL("FOR UPDATE USING ({}) WITH CHECK ({})").format(own, own),
    }
    for name, policies in rules.items():
        table = sql.Identifier(name)
        cur.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(table))
        cur.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(table))
        for policy, rule in policies.items():
            cur.execute(sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(sql.Identifier(policy), table))
            cur.execute(sql.SQL("CREATE POLICY {} ON {} {}").format(sql.Identifier(policy), table, rule))


def _service_role(cur: psycopg.Cursor[Any], role: str) -> TableState:
    cur.execute("SELECT current_user")
    row = cur.fetchone()
    if row and row[0] == role:
        raise InvalidInput(
            f"the service role {role!r} is the role migrating (the owner): use another serviceRole"
        )
    cur.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", (role,))
    found = cur.fetchone()
    if found is None:
        cur.execute(
            sql.SQL(
                "CREATE ROLE {} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION"
            ).format(sql.Identifier(role))
        )
        return "created"
    if found[0] or found[1]:
        raise InvalidInput(
            f"the service role {role!r} exists and is a superuser or bypasses row-level security: "
            "refusing to use it"
        )
    return "present"


def _grant(cur: psycopg.Cursor[Any], role: str) -> None:
    """Exactly the service role's privileges on Stella's tables (revoked first, so that a grant added by
    hand goes away), and what procrastinate needs."""
    who = sql.Identifier(role)
    cur.execute("SELECT current_schema()")
    row = cur.fetchone()
    if not row or row[0] is None:
        raise InvalidInput("the database URL's search_path has no schema to migrate into")
    schema = sql.Identifier(row[0])
    cur.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, who))
    for table in TABLES:
        cur.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(sql.Identifier(table), who))
    cur.execute(sql.SQL("GRANT SELECT, INSERT ON stella_evidence TO {}").format(who))
    cur.execute(sql.SQL("GRANT SELECT, INSERT, DELETE ON stella_pending TO {}").format(who))
    cur.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON stella_counters TO {}").format(who))
    cur.execute(sql.SQL("GRANT SELECT ON stella_tenants, stella_tokens TO {}").format(who))
    cur.execute(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relname LIKE 'procrastinate\\_%'"
        " AND c.relkind IN ('r', 'p', 'S') ORDER BY c.relname"
    )
    for name, kind in cur.fetchall():
        privileges = sql.SQL("USAGE" if kind == "S" else "SELECT, INSERT, UPDATE, DELETE")
        cur.execute(sql.SQL("GRANT {} ON {} TO {}").format(privileges, sql.Identifier(name), who))
    cur.execute(sql.SQL("GRANT EXECUTE ON ALL ROUTINES IN SCHEMA {} TO {}").format(schema, who))


def _tenants(cur: psycopg.Cursor[Any], names: Sequence[str]) -> tuple[list[str], list[str]]:
    cur.execute(
        "INSERT INTO stella_tenants (name) SELECT unnest(%s::text[]) ON CONFLICT (name) DO NOTHING"
        " RETURNING name",
        (list(names),),
    )
    added = sorted(r[0] for r in cur.fetchall())
    cur.execute("SELECT name FROM stella_tenants WHERE name <> ALL(%s::text[]) ORDER BY name", (list(names),))
    return added, [r[0] for r in cur.fetchall()]


def create_token(url: str, fleet: Fleet, tenant: str) -> str:
    """A new API token for `tenant`, whose SHA-256 only is stored; the tenant must be in fleet.yaml and
    migrated."""
    if fleet.tenant(tenant) is None:
        raise InvalidInput(f"unknown tenant {tenant!r}: fleet.yaml does not list it")
    token = new_token()
    with connect(url) as conn, conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT 1 FROM stella_tenants WHERE name = %s", (tenant,))
        if cur.fetchone() is None:
            raise InvalidInput(f"tenant {tenant!r} is not in the database yet: run `stella fleet migrate`")
        cur.execute(
            "INSERT INTO stella_tokens (tenant, token_hash) VALUES (%s, %s)", (tenant, token_hash(token))
        )
    return token


@dataclass(frozen=True)
class TokenEntry:
    """One API token as the database knows it: its id (never the token) and when it was made."""

    id: str
    created_at: datetime

    def as_json(self) -> dict[str, str]:
        return {"id": self.id, "createdAt": rfc3339(self.created_at)}


def list_tokens(url: str, tenant: str) -> list[TokenEntry]:
    """The API tokens of `tenant`, oldest first. A tenant no longer in fleet.yaml is listed too (its
    tokens are still in the database), an unknown one is `InvalidInput`."""
    with connect(url) as conn, conn.transaction(), conn.cursor() as cur:
        _known_tenant(cur, tenant)
        return _tokens(cur, tenant)


def revoke_tokens(url: str, tenant: str, prefix: str | None) -> list[TokenEntry]:
    """Delete the token of `tenant` whose id starts with `prefix` (at least `MIN_ID_LENGTH` hex digits,
    matching exactly one of that tenant's tokens), or all its tokens when `prefix` is None; return what
    was revoked, oldest first. A server looks every request's token up, so a revoked token is refused
    from the next request on. Another tenant's token is never matched."""
    if prefix is not None:
        prefix = prefix.strip().lower()
        if not MIN_ID_LENGTH <= len(prefix) <= 64 or prefix.strip("0123456789abcdef"):
            raise InvalidInput(
                f"token id {prefix!r}: give at least {MIN_ID_LENGTH} hex digits of an id that"
                " `stella fleet token list` shows"
            )
    with connect(url) as conn, conn.transaction(), conn.cursor() as cur:
        _known_tenant(cur, tenant)
        if prefix is None:
            cur.execute(
                "DELETE FROM stella_tokens WHERE tenant = %s RETURNING token_hash, created_at", (tenant,)
            )
        else:
            cur.execute(
                "SELECT token_hash FROM stella_tokens WHERE tenant = %s AND starts_with(token_hash, %s)"
                " FOR UPDATE",
                (tenant, prefix),
            )
            matches = [token_id(row[0]) for row in cur.fetchall()]
            if not matches:
                raise InvalidInput(f"tenant {tenant!r} has no token {prefix!r} (`stella fleet token list`)")
            if len(matches) > 1:
                raise InvalidInput(
                    f"token id {prefix!r} of tenant {tenant!r} is ambiguous ({', '.join(sorted(matches))}):"
                    " give more digits"
                )
            cur.execute(
                "DELETE FROM stella_tokens WHERE tenant = %s AND starts_with(token_hash, %s)"
                " RETURNING token_hash, created_at",
                (tenant, prefix),
            )
        revoked = [TokenEntry(token_id(h), created) for h, created in cur.fetchall()]
    return sorted(revoked, key=lambda t: (t.created_at, t.id))


def _known_tenant(cur: psycopg.Cursor[Any], tenant: str) -> None:
    cur.execute("SELECT 1 FROM stella_tenants WHERE name = %s", (tenant,))
    if cur.fetchone() is None:
        raise InvalidInput(f"unknown tenant {tenant!r}: the fleet database does not have it")


def _tokens(cur: psycopg.Cursor[Any], tenant: str) -> list[TokenEntry]:
    cur.execute(
        "SELECT token_hash, created_at FROM stella_tokens WHERE tenant = %s ORDER BY created_at, token_hash",
        (tenant,),
    )
    return [TokenEntry(token_id(h), created) for h, created in cur.fetchall()]
