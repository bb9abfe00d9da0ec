"""`stella fleet migrate` and `stella fleet token create` against a real PostgreSQL (DESIGN §10).

Migrating twice changes nothing the second time; the tables, the row-level security and the service
role are there; as the service role a query without `stella.tenant` sees no evidence rows, with a
tenant set only that tenant's, an insert for another tenant is refused and UPDATE and DELETE are not
allowed at all, while procrastinate's defer and worker work. A token is printed once and only its SHA-256
is stored; tokens are listed by id and revoked within their tenant only. The hourly prune deletes the
finished jobs past `jobRetention` and nothing else. A bad fleet.yaml is exit 2 naming file and line; a
database that does not answer, exit 3.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from reconciler.fleet.config import load_fleet
from reconciler.fleet.jobs import PRUNE, PRUNE_CRON, RECONCILE, make_app
from reconciler.fleet.schema import TABLES
from tests.support.cli import Run, stella
from tests.support.fleet import TenantEntry, write_fleet_yaml
from tests.support.postgres import ScratchDatabase
from tests.support.registry import free_port

TENANTS = ("shop", "blog")


def write_fleet(directory: Path, role: str, tenants: tuple[str, ...] = TENANTS) -> Path:
    entries = (
        TenantEntry(name, f"git://git.example.com/{name}.git", f"file:/etc/stella/{name}.pem")
        for name in tenants
    )
    return write_fleet_yaml(directory / "fleet.yaml", role, "/var/lib/stella/fleet", entries)


def fleet(db: ScratchDatabase, *args: str | Path) -> Run:
    return stella("fleet", *args, env={"STELLA_DATABASE_URL": db.url})


@contextmanager
def connect(db: ScratchDatabase, role: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the test's database, as the superuser or (`role`) as that role from the start."""
    url = db.url if role is None else make_conninfo(db.url, options=f"-c role={role}")
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def scalar(conn: psycopg.Connection[Any], query: Any, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def migrated(pg_database: ScratchDatabase, tmp_path: Path) -> ScratchDatabase:
    run = fleet(pg_database, "migrate", "--config", write_fleet(tmp_path, pg_database.role))
    assert run.code == 0, run.err
    return pg_database


def test_migrate_twice_creates_then_finds_everything(pg_database: ScratchDatabase, tmp_path: Path) -> None:
    config = write_fleet(tmp_path, pg_database.role)
    first = fleet(pg_database, "migrate", "--config", config, "-o", "json")
    assert first.code == 0, first.err
    assert first.json() == {
        "procrastinate": {"schema": "created", "version": first.json()["procrastinate"]["version"]},
        "tables": {name: "created" for name in TABLES},
        "rowLevelSecurity": {
            "table": "stella_evidence",
            "tables": ["stella_evidence", "stella_pending"],
            "policy": "stella_tenant_isolation",
            "setting": "stella.tenant",
        },
        "serviceRole": {"name": pg_database.role, "state": "created"},
        "tenants": {"added": ["blog", "shop"], "unlisted": []},
    }
    second = fleet(pg_database, "migrate", "--config", config, "-o", "json")
    assert second.code == 0, second.err
    assert second.json() == {
        **first.json(),
        "procrastinate": {"schema": "present", "version": first.json()["procrastinate"]["version"]},
        "tables": {name: "present" for name in TABLES},
        "serviceRole": {"name": pg_database.role, "state": "present"},
        "tenants": {"added": [], "unlisted": []},
    }
    third = fleet(
        pg_database, "migrate", "--config", write_fleet(tmp_path, pg_database.role, ("shop", "news"))
    )
    assert third.code == 0, third.err
    assert third.out.splitlines()[1:] == [
        "table stella_tenants: present",
        "table stella_tokens: present",
        "table stella_evidence: present",
        "table stella_pending: present",
        "table stella_counters: present",
        "row-level security: stella_evidence, stella_pending (ENABLE, FORCE; rows of current_setting('stella.tenant'))",
        f"service role {pg_database.role}: present (evidence: SELECT, INSERT only)",
        "tenants added: news",
        f"tenants kept but no longer in {tmp_path / 'fleet.yaml'}: blog",
    ]
    assert third.out.startswith("procrastinate schema: present (procrastinate ")

    with connect(pg_database) as conn:
        tenants = [r[0] for r in conn.execute("SELECT name FROM stella_tenants ORDER BY name")]
        assert tenants == ["blog", "news", "shop"]
        role = conn.execute(
            "SELECT rolsuper, rolbypassrls, rolcanlogin, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = %s",
            (pg_database.role,),
        ).fetchone()
        assert role == (False, False, False, False, False)
        rls = conn.execute(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = 'stella_evidence'"
        ).fetchone()
        assert rls == (True, True)
        policies = conn.execute(
            "SELECT count(*) FROM pg_policies WHERE tablename = 'stella_evidence'"
        ).fetchone()
        assert policies == (1,)
        granted = {
            (table, privilege): scalar(
                conn, "SELECT has_table_privilege(%s, %s, %s)", (pg_database.role, table, privilege)
            )
            for table in TABLES
            for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
        }
        assert {key for key, allowed in granted.items() if allowed} == {
            ("stella_evidence", "SELECT"),
            ("stella_evidence", "INSERT"),
            ("stella_pending", "SELECT"),
            ("stella_pending", "INSERT"),
            ("stella_pending", "DELETE"),
            ("stella_counters", "SELECT"),
            ("stella_counters", "INSERT"),
            ("stella_counters", "UPDATE"),
            ("stella_tenants", "SELECT"),
            ("stella_tokens", "SELECT"),
        }
        rls = conn.execute(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = 'stella_pending'"
        ).fetchone()
        assert rls == (True, True)


def _evidence(conn: psycopg.Connection[Any], tenant: str, id_: str) -> None:
    conn.execute(
        "INSERT INTO stella_evidence (tenant, id, type, environment, statement) VALUES (%s, %s, 'decision', 'prod', %s)",
        (tenant, id_, json.dumps({"id": id_})),
    )


def test_the_service_role_sees_and_writes_only_its_tenant(migrated: ScratchDatabase) -> None:
    with connect(migrated) as conn:  # the superuser bypasses row-level security
        for tenant, id_ in (("shop", "s1"), ("shop", "s2"), ("blog", "b1")):
            _evidence(conn, tenant, id_)

    with connect(migrated, migrated.role) as conn:
        assert scalar(conn, "SELECT current_user") == migrated.role
        assert conn.execute("SELECT tenant, id FROM stella_evidence").fetchall() == []
        with conn.transaction():
            conn.execute("SELECT set_config('stella.tenant', 'shop', true)")
            rows = conn.execute("SELECT tenant, id FROM stella_evidence ORDER BY id").fetchall()
            assert rows == [("shop", "s1"), ("shop", "s2")]
            _evidence(conn, "shop", "s3")
        assert conn.execute("SELECT count(*) FROM stella_evidence").fetchone() == (0,)  # the setting ended

        refused = {
            "another tenant's row": lambda: _evidence(conn, "blog", "b2"),
            "update": lambda: conn.execute("UPDATE stella_evidence SET result = 'allow'"),
            "delete": lambda: conn.execute("DELETE FROM stella_evidence"),
            "upsert": lambda: conn.execute(
                "INSERT INTO stella_evidence (tenant, id, type, statement) VALUES ('shop', 's1', 'x', '{}')"
                " ON CONFLICT (tenant, id) DO UPDATE SET result = 'allow'"
            ),
            "token insert": lambda: conn.execute(
                "INSERT INTO stella_tokens (tenant, token_hash) VALUES ('shop', %s)", ("0" * 64,)
            ),
        }
        messages = {}
        for what, attempt in refused.items():
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught, conn.transaction():
                conn.execute("SELECT set_config('stella.tenant', 'shop', true)")
                attempt()
            messages[what] = str(caught.value).splitlines()[0]
        assert messages == {
            "another tenant's row": 'new row violates row-level security policy for table "stella_evidence"',
            "update": "permission denied for table stella_evidence",
            "delete": "permission denied for table stella_evidence",
            "upsert": "permission denied for table stella_evidence",
            "token insert": "permission denied for table stella_tokens",
        }
        with conn.transaction():
            conn.execute("SELECT set_config('stella.tenant', 'blog', true)")
            assert conn.execute("SELECT tenant, id FROM stella_evidence").fetchall() == [("blog", "b1")]

    with connect(migrated) as conn:
        rows = conn.execute("SELECT tenant, id, result FROM stella_evidence ORDER BY tenant, id").fetchall()
        assert rows == [
            ("blog", "b1", None),
            ("shop", "s1", None),
            ("shop", "s2", None),
            ("shop", "s3", None),
        ]


def test_the_service_role_adds_to_its_own_tenants_counters_only(migrated: ScratchDatabase) -> None:
    upsert = (
        "INSERT INTO stella_counters (tenant, metric, label, value) VALUES (%s, 'passes', 'ok', 1)"
        " ON CONFLICT (tenant, metric, label) DO UPDATE SET value = stella_counters.value + 1"
    )
    with connect(migrated) as conn:
        conn.execute(upsert, ("blog",))
    with connect(migrated, migrated.role) as conn:
        with conn.transaction():
            conn.execute("SELECT set_config('stella.tenant', 'shop', true)")
            conn.execute(upsert, ("shop",))
            conn.execute(upsert, ("shop",))
            assert conn.execute("UPDATE stella_counters SET value = 0 WHERE tenant = 'blog'").rowcount == 0
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"),
            conn.transaction(),
        ):
            conn.execute("SELECT set_config('stella.tenant', 'shop', true)")
            conn.execute(upsert, ("blog",))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            conn.execute("DELETE FROM stella_counters")
        # readable by all, tenant set or not: `/metrics` shows every tenant's counters
        rows = conn.execute("SELECT tenant, value FROM stella_counters ORDER BY tenant").fetchall()
        assert rows == [("blog", 1.0), ("shop", 2.0)]


def test_a_login_role_in_the_service_role_is_bound_by_it(migrated: ScratchDatabase) -> None:
    """The way docs/fleet.md says to connect: a login role that is a member of the service role."""
    login = f"{migrated.role}_login"
    with connect(migrated) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                sql.Identifier(login), sql.Identifier(migrated.role)
            )
        )
        _evidence(conn, "shop", "s1")
    try:
        with psycopg.connect(make_conninfo(migrated.url, user=login), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM stella_evidence").fetchone() == (0,)
            with conn.transaction():
                conn.execute("SELECT set_config('stella.tenant', 'shop', true)")
                assert conn.execute("SELECT tenant, id FROM stella_evidence").fetchall() == [("shop", "s1")]
            with pytest.raises(
                psycopg.errors.InsufficientPrivilege, match="permission denied for table stella_evidence"
            ):
                conn.execute("DELETE FROM stella_evidence")
    finally:
        with connect(migrated) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(login)))


def test_a_service_role_that_bypasses_rls_is_refused(pg_database: ScratchDatabase, tmp_path: Path) -> None:
    with connect(pg_database) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN BYPASSRLS").format(sql.Identifier(pg_database.role)))
        owner = scalar(conn, "SELECT current_user")
    run = fleet(pg_database, "migrate", "--config", write_fleet(tmp_path, pg_database.role))
    assert (run.code, run.out) == (2, "")
    assert run.err.strip() == (
        f"error: the service role '{pg_database.role}' exists and is a superuser or bypasses row-level security: refusing to use it"
    )
    run = fleet(pg_database, "migrate", "--config", write_fleet(tmp_path, owner))
    assert (run.code, run.out) == (2, "")
    assert (
        run.err.strip()
        == f"error: the service role '{owner}' is the role migrating (the owner): use another serviceRole"
    )
    with connect(pg_database) as conn:  # one transaction: nothing was left behind
        assert conn.execute(
            "SELECT to_regclass('stella_tenants'), to_regclass('procrastinate_jobs')"
        ).fetchone() == (None, None)


def test_procrastinate_runs_as_the_service_role(migrated: ScratchDatabase) -> None:
    from procrastinate import App, PsycopgConnector

    ran: list[str] = []
    app = App(
        connector=PsycopgConnector(conninfo=make_conninfo(migrated.url, options=f"-c role={migrated.role}"))
    )

    @app.task(name="reconcile", lock="shop", queueing_lock="shop")
    def reconcile(tenant: str) -> None:
        ran.append(tenant)

    with app.open():
        reconcile.defer(tenant="shop")
    app.run_worker(wait=False, install_signal_handlers=False, listen_notify=False, delete_jobs="never")
    assert ran == ["shop"]
    with connect(migrated) as conn:
        jobs = conn.execute("SELECT task_name, status FROM procrastinate_jobs").fetchall()
        assert jobs == [("reconcile", "succeeded")]


def test_the_hourly_prune_deletes_finished_jobs_past_the_retention_only(
    migrated: ScratchDatabase, tmp_path: Path
) -> None:
    config = load_fleet(tmp_path / "fleet.yaml")
    assert config.jobRetention == "7d" and config.job_retention_hours() == 168

    async def prune() -> int:
        app = make_app(migrated.url, config)
        async with app.open_async():
            assert app.periodic_registry.periodic_tasks[(PRUNE, PRUNE)].cron == PRUNE_CRON
            return await app.tasks[PRUNE](timestamp=0)

    ends = {  # job: (its status, days since its last event)
        "old-succeeded": ("succeeded", 8),
        "old-failed": ("failed", 8),
        "old-cancelled": ("cancelled", 8),
        "recent-succeeded": ("succeeded", 6),
        "old-todo": ("todo", 8),
        "old-doing": ("doing", 8),
    }
    with make_app(migrated.url).open() as app:
        for name in ends:
            app.configure_task(RECONCILE, queue="elsewhere", queueing_lock=name).defer(
                tenant=name, trigger="manual"
            )
    with connect(migrated) as conn:
        for name, (status, days) in ends.items():
            if status != "todo":
                conn.execute(
                    "UPDATE procrastinate_jobs SET status = 'doing' WHERE queueing_lock = %s", (name,)
                )
            if status not in ("todo", "doing"):
                conn.execute(
                    "UPDATE procrastinate_jobs SET status = %s WHERE queueing_lock = %s", (status, name)
                )
            conn.execute(
                "UPDATE procrastinate_events SET at = now() - make_interval(days => %s) WHERE job_id ="
                " (SELECT id FROM procrastinate_jobs WHERE queueing_lock = %s)",
                (days, name),
            )

    assert asyncio.run(prune()) == 168
    with connect(migrated) as conn:
        left = conn.execute("SELECT queueing_lock FROM procrastinate_jobs ORDER BY queueing_lock").fetchall()
        orphans = conn.execute(
            "SELECT count(*) FROM procrastinate_events WHERE job_id NOT IN (SELECT id FROM procrastinate_jobs)"
        ).fetchone()
    assert [r[0] for r in left] == ["old-doing", "old-todo", "recent-succeeded"]
    assert orphans == (0,)


def test_token_create_stores_only_the_hash(migrated: ScratchDatabase, tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    first = fleet(migrated, "token", "create", "shop", "--config", config)
    second = fleet(migrated, "token", "create", "shop", "--config", config, "-o", "json")
    assert (first.code, first.err, second.code, second.err) == (0, "", 0, "")
    token = first.out.removesuffix("\n")
    assert "\n" not in token and token.startswith("stl_") and len(token) == 4 + 43
    other = second.json()
    assert other.keys() == {"tenant", "token"} and other["tenant"] == "shop" and other["token"] != token

    with connect(migrated) as conn:
        stored = conn.execute(
            "SELECT tenant, token_hash FROM stella_tokens ORDER BY created_at, token_hash"
        ).fetchall()
        expected = {("shop", hashlib.sha256(t.encode()).hexdigest()) for t in (token, other["token"])}
        assert set(stored) == expected and len(stored) == 2
        dump = conn.execute("SELECT string_agg(t::text, '|') FROM (SELECT * FROM stella_tokens) t").fetchone()
        assert dump is not None and token not in dump[0] and other["token"] not in dump[0]


def test_tokens_are_listed_by_id_and_revoked_one_or_all_within_their_tenant(
    migrated: ScratchDatabase, tmp_path: Path
) -> None:
    config = tmp_path / "fleet.yaml"
    shop = [fleet(migrated, "token", "create", "shop", "--config", config).out.strip() for _ in range(3)]
    blog = fleet(migrated, "token", "create", "blog", "--config", config).out.strip()
    ids = [hashlib.sha256(t.encode()).hexdigest()[:12] for t in shop]
    blog_id = hashlib.sha256(blog.encode()).hexdigest()[:12]

    listed = fleet(migrated, "token", "list", "shop", "--config", config, "-o", "json")
    assert (listed.code, listed.err) == (0, "")
    assert listed.json()["tenant"] == "shop"
    assert [t["id"] for t in listed.json()["tokens"]] == ids  # oldest first
    assert all(t["createdAt"].endswith("Z") for t in listed.json()["tokens"])
    text = fleet(migrated, "token", "list", "shop", "--config", config)
    assert [line.split()[0] for line in text.out.splitlines()] == ids
    assert not any(token in listed.out + text.out for token in shop)

    # another tenant's token is not found through shop, and stays
    refused = {
        "blog's id under shop": fleet(migrated, "token", "revoke", "shop", blog_id, "--config", config),
        "too short": fleet(migrated, "token", "revoke", "shop", ids[0][:7], "--config", config),
        "not hex": fleet(migrated, "token", "revoke", "shop", "stl_" + ids[0], "--config", config),
        "no id": fleet(migrated, "token", "revoke", "shop", "--config", config),
        "id and --all": fleet(migrated, "token", "revoke", "shop", ids[0], "--all", "--config", config),
        "unknown tenant": fleet(migrated, "token", "list", "nobody", "--config", config),
    }
    assert {what: (run.code, run.out) for what, run in refused.items()} == dict.fromkeys(refused, (2, ""))
    assert refused["blog's id under shop"].err.strip() == (
        f"error: tenant 'shop' has no token '{blog_id}' (`stella fleet token list`)"
    )
    assert "at least 8 hex digits" in refused["too short"].err and "at least 8" in refused["not hex"].err
    assert (
        refused["unknown tenant"].err.strip()
        == "error: unknown tenant 'nobody': the fleet database does not have it"
    )

    one = fleet(migrated, "token", "revoke", "shop", ids[1][:8].upper(), "--config", config)
    assert (one.code, one.err) == (0, "") and one.out.startswith(f"revoked {ids[1]} (created ")
    every = fleet(migrated, "token", "revoke", "shop", "--all", "--config", config, "-o", "json")
    assert every.code == 0 and [t["id"] for t in every.json()["revoked"]] == [ids[0], ids[2]]
    again = fleet(migrated, "token", "revoke", "shop", "--all", "--config", config)
    assert (again.code, again.out) == (0, "tenant shop had no API token\n")
    with connect(migrated) as conn:
        left = conn.execute("SELECT tenant, left(token_hash, 12) FROM stella_tokens").fetchall()
    assert left == [("blog", blog_id)]


def test_token_for_an_unknown_tenant_is_refused(migrated: ScratchDatabase, tmp_path: Path) -> None:
    run = fleet(migrated, "token", "create", "nobody", "--config", tmp_path / "fleet.yaml")
    assert (run.code, run.out) == (2, "")
    assert run.err.strip() == "error: unknown tenant 'nobody': fleet.yaml does not list it"
    with connect(migrated) as conn:
        assert conn.execute("SELECT count(*) FROM stella_tokens").fetchone() == (0,)


def test_token_before_migrate_says_to_migrate(pg_database: ScratchDatabase, tmp_path: Path) -> None:
    run = fleet(pg_database, "token", "create", "shop", "--config", write_fleet(tmp_path, pg_database.role))
    assert (run.code, run.out) == (2, "")
    assert run.err.startswith("error: the fleet database has no Stella schema (")
    assert run.err.strip().endswith("run `stella fleet migrate`")


HEAD = "apiVersion: stella/v1\nkind: Fleet\nworkdir: /var/lib/stella/fleet\ntenants:\n"
SHOP = "  - {name: shop, repo: /srv/git/shop.git, signingKey: env:K, webhookSecret: env:W}\n"
BAD_CONFIGS = [
    pytest.param(HEAD + SHOP + "extra: 1\n", "6: unknown field 'extra'", id="unknown-field"),
    pytest.param(
        HEAD + SHOP + SHOP.replace("env:K", "env:K2"), "6: duplicate tenant 'shop'", id="duplicate-tenant"
    ),
    pytest.param(
        HEAD + SHOP + SHOP.replace("shop", "news").replace("env:K", "/etc/key.pem"),
        "6: tenants.1.signingKey: String should match pattern",
        id="bad-ref",
    ),
    pytest.param(
        HEAD.replace("kind: Fleet", "kind: Fleets"), "2: kind must be 'Fleet', not 'Fleets'", id="bad-kind"
    ),
    pytest.param(HEAD + "  - [\n", "6: YAML syntax error", id="bad-yaml"),
    pytest.param(
        HEAD.replace("tenants:", "jobRetention: 30m\ntenants:") + SHOP,
        "4: jobRetention: '30m' is less than an hour",
        id="short-retention",
    ),
]


@pytest.mark.parametrize(("text", "where"), BAD_CONFIGS)
def test_bad_fleet_yaml_is_exit_2_with_file_and_line(tmp_path: Path, text: str, where: str) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text(text)
    for command in (("migrate",), ("token", "create", "shop")):
        run = stella(
            "fleet", *command, "--config", config, env={"STELLA_DATABASE_URL": "postgresql://127.0.0.1:1/x"}
        )
        assert (run.code, run.out) == (2, ""), run.err
        assert run.err.startswith(f"error: {config}:{where}"), run.err
        assert "Traceback" not in run.err


def test_unreachable_database_is_exit_3(tmp_path: Path) -> None:
    url = f"postgresql://stella@127.0.0.1:{free_port()}/fleet"
    config = write_fleet(tmp_path, "stella_service")
    for command in (("migrate",), ("token", "create", "shop")):
        run = stella("fleet", *command, "--config", config, env={"STELLA_DATABASE_URL": url})
        assert (run.code, run.out) == (3, ""), run.err
        assert run.err.startswith("error: cannot connect to the fleet database: "), run.err
        assert "Traceback" not in run.err and len(run.err.strip().splitlines()) == 1


def test_database_url_from_an_unset_variable_is_exit_2(tmp_path: Path) -> None:
    config = write_fleet(tmp_path, "stella_service")
    run = stella("fleet", "migrate", "--config", config, env={"STELLA_DATABASE_URL": ""})
    assert (run.code, run.out) == (2, "")
    assert run.err.strip() == (
        "error: the database URL (env:STELLA_DATABASE_URL): environment variable STELLA_DATABASE_URL is not set or empty"
    )
