"""`stella worker` against a real PostgreSQL and tenants' repositories served by a real `git daemon`.

Four tenants: `shop` (key by `file:`) and `blog` (key by `env:`) decide their open promotion offline,
push it to their own repository and index it under their own tenant only; `bad` names a key that does
not exist (exit 2 of the pass: failed, not retried); `down` names a Git server that does not answer
(retried with backoff). A trigger while one is queued collapses; a second job of `shop` decides nothing
new. SIGTERM stops the worker cleanly (exit 0).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from reconciler.fleet.config import Tenant
from reconciler.fleet.jobs import defer_reconcile, due_for_poll, evidence_rows, left_open, make_app
from tests.support.cli import STELLA, stella
from tests.support.fleet import TenantEntry, write_fleet_yaml
from tests.support.gitdaemon import start_git_daemon
from tests.support.pipeline import Workspace, decision_records, example_workspace
from tests.support.postgres import ScratchDatabase
from tests.support.registry import free_port
from tests.support.repos import commit_all

DEADLINE = 45.0


def write_fleet(tmp_path: Path, db: ScratchDatabase, repos: dict[str, tuple[str, str]]) -> Path:
    entries = (
        TenantEntry(name, repo, key, "24h", "env:UNUSED_SECRET") for name, (repo, key) in repos.items()
    )
    return write_fleet_yaml(tmp_path / "fleet.yaml", db.role, tmp_path / "work", entries)


def jobs(db: ScratchDatabase, tenant: str) -> list[tuple[str, int]]:
    """(status, attempts) of the manual reconcile jobs of `tenant`, oldest first."""
    with psycopg.connect(db.url) as conn:
        rows = conn.execute(
            "SELECT status, attempts FROM procrastinate_jobs WHERE task_name = 'stella.reconcile'"
            " AND lock = %s AND args->>'trigger' = 'manual' ORDER BY id",
            (f"tenant:{tenant}",),
        ).fetchall()
    return [(str(status), int(attempts)) for status, attempts in rows]


def pending(db: ScratchDatabase, tenant: str) -> list[str]:
    with psycopg.connect(db.url) as conn:
        rows = conn.execute("SELECT promotion FROM stella_pending WHERE tenant = %s ORDER BY 1", (tenant,))
        return [str(promotion) for (promotion,) in rows.fetchall()]


def counter(db: ScratchDatabase, tenant: str, metric: str, label: str) -> float | None:
    with psycopg.connect(db.url) as conn:
        row = conn.execute(
            "SELECT value FROM stella_counters WHERE tenant = %s AND metric = %s AND label = %s",
            (tenant, metric, label),
        ).fetchone()
    return None if row is None else float(row[0])


def wait_for(
    what: str, done: Callable[[], bool], worker: subprocess.Popen[bytes], log: Path, db: ScratchDatabase
) -> None:
    deadline = time.monotonic() + DEADLINE
    while not done():
        assert worker.poll() is None, f"the worker exited ({worker.returncode}):\n{log.read_text()}"
        if time.monotonic() > deadline:
            state = {t: jobs(db, t) for t in ("shop", "blog", "bad", "down")}
            pytest.fail(f"timed out waiting for {what} ({state}):\n{log.read_text()[-4000:]}", pytrace=False)
        time.sleep(0.2)


@contextmanager
def running_worker(config: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [STELLA, "worker", "--config", str(config), "--concurrency", "2"],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield worker
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=30)


def decisions(ws: Workspace) -> list[str]:
    return [
        p for p in decision_records(ws) if json.loads(ws.show(p))["predicate"]["type"] == "release_decision"
    ]


def evidence_ids(ws: Workspace) -> set[str]:
    return {
        "sha256:" + Path(p).name.removesuffix(".json")
        for p in ws.evidence_files()
        if p.startswith("evidence/") and not p.endswith(".sigstore.json")
    }


def test_worker_reconciles_each_tenant_in_isolation(tmp_path: Path, pg_database: ScratchDatabase) -> None:
    shop, blog, bad = (example_workspace(tmp_path / name) for name in ("shop", "blog", "bad"))
    daemon = start_git_daemon(tmp_path)
    blog_pem = blog.key.read_text()
    try:
        config = write_fleet(
            tmp_path,
            pg_database,
            {
                "shop": (daemon.url("shop/repo"), f"file:{shop.key}"),
                "blog": (daemon.url("blog/repo"), "env:BLOG_SIGNING_KEY"),
                "bad": (daemon.url("bad/repo"), f"file:{tmp_path / 'no-such-key.pem'}"),
                "down": (f"git://127.0.0.1:{free_port()}/down.git", f"file:{shop.key}"),
            },
        )
        env = {"STELLA_DATABASE_URL": pg_database.url, "BLOG_SIGNING_KEY": blog_pem}
        migrated = stella("fleet", "migrate", "--config", config, env=env)
        assert migrated.code == 0, migrated.err

        # duplicate triggers collapse while one is queued, in the library and on the command line
        with make_app(pg_database.url).open() as app:
            assert defer_reconcile(app, "shop", "manual") is True
            assert defer_reconcile(app, "shop", "manual") is False
            for name in ("bad", "down"):
                assert defer_reconcile(app, name, "manual") is True
        queued = [stella("fleet", "reconcile", "blog", "--config", config, env=env) for _ in range(2)]
        assert [(r.code, r.out.strip()) for r in queued] == [(0, "blog: queued"), (0, "blog: collapsed")]
        assert jobs(pg_database, "shop") == [("todo", 0)]

        log = tmp_path / "worker.log"
        with running_worker(config, env, log) as worker:
            wait_for(
                "shop and blog to succeed, bad to fail and down to be retried",
                lambda: (
                    [s for s, _ in jobs(pg_database, "shop")] == ["succeeded"]
                    and [s for s, _ in jobs(pg_database, "blog")] == ["succeeded"]
                    and jobs(pg_database, "bad")[0][0] == "failed"
                    and jobs(pg_database, "down")[0][1] >= 2
                ),
                worker,
                log,
                pg_database,
            )
            head = shop.git("rev-parse", "refs/heads/stella/evidence")
            # a second job of shop: nothing new to decide, nothing pushed, nothing indexed twice
            with make_app(pg_database.url).open() as app:
                assert defer_reconcile(app, "shop", "manual") is True
            wait_for(
                "the second job of shop",
                lambda: [s for s, _ in jobs(pg_database, "shop")] == ["succeeded", "succeeded"],
                worker,
                log,
                pg_database,
            )
            # the first pass left nothing open, and no branch moved since: the second ran no pass
            quiet = tmp_path / "work" / "shop" / "quiet.json"
            assert quiet.exists() and pending(pg_database, "shop") == []
            assert counter(pg_database, "shop", "passes", "ok") == 2.0
            # a new commit: the next job runs a pass again, which leaves the new promotion pending
            (shop.root / "promotions" / "shop-1.4.0--staging.yaml").write_text(
                "apiVersion: stella/v1\nkind: Promotion\nrelease: shop-1.4.0\nenvironment: staging\n"
            )
            commit_all(shop.root, "request staging")
            with make_app(pg_database.url).open() as app:
                assert defer_reconcile(app, "shop", "manual") is True
            wait_for(
                "the third job of shop",
                lambda: pending(pg_database, "shop") == ["shop-1.4.0--staging"],
                worker,
                log,
                pg_database,
            )
            assert not quiet.exists()
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0, log.read_text()
    finally:
        daemon.stop()

    for ws in (shop, blog):
        [decision] = decisions(ws)
        predicate = json.loads(ws.show(decision))["predicate"]
        assert (predicate["promotion"]["id"], predicate["decision"]["result"]) == ("shop-1.4.0--dev", "allow")
        verified = ws.stella("audit", "verify", "-o", "json")
        assert verified.code == 0 and verified.json()["ok"] is True, verified.out
    assert shop.git("rev-parse", "refs/heads/stella/evidence") == head
    assert not bad.git("for-each-ref", "refs/heads/stella/evidence")
    assert jobs(pg_database, "bad") == [("failed", 1)]  # one run, no retry
    assert jobs(pg_database, "shop") == jobs(pg_database, "blog")[:1] * 3 == [("succeeded", 1)] * 3

    # the evidence index: every statement of each branch, under its own tenant only (read as the
    # superuser, which row-level security does not restrict)
    with psycopg.connect(pg_database.url) as conn:
        rows = conn.execute("SELECT tenant, id, type, promotion, result FROM stella_evidence").fetchall()
    by_tenant: dict[str, set[str]] = {}
    for tenant, id_, *_ in rows:
        by_tenant.setdefault(tenant, set()).add(id_)
    assert by_tenant == {"shop": evidence_ids(shop), "blog": evidence_ids(blog)}
    assert sorted((t, ty, p, r) for t, _, ty, p, r in rows if ty == "release_decision") == [
        ("blog", "release_decision", "shop-1.4.0--dev", "allow"),
        ("shop", "release_decision", "shop-1.4.0--dev", "allow"),
    ]

    # each tenant's own directory; the env: key written for its pass only, never logged
    work = tmp_path / "work"
    assert {p.name: p.stat().st_mode & 0o777 for p in work.iterdir()} == {
        "shop": 0o700,
        "blog": 0o700,
        "bad": 0o700,
        "down": 0o700,
    }
    assert (work / "blog" / "signing-key.pem").stat().st_mode & 0o777 == 0o600
    assert not (work / "shop" / "signing-key.pem").exists()
    body = "".join(blog_pem.splitlines()[1:-1])
    assert body[:40] not in log.read_text().replace("\n", "")


def _tenant(name: str, interval: str) -> Tenant:
    return Tenant(
        name=name, repo="git://x/y.git", signingKey="env:K", webhookSecret="env:W", pollInterval=interval
    )


@pytest.mark.parametrize(
    ("interval", "polls_per_hour"),
    [("5s", 360), ("10s", 360), ("60s", 60), ("15m", 4), ("1h", 1)],
    ids=["shorter-than-a-tick", "one-tick", "a-minute", "quarter-hour", "hourly"],
)
def test_polls_follow_each_tenants_interval(interval: str, polls_per_hour: int) -> None:
    start = 1_800_000_000
    ticks = range(start, start + 3600, 10)
    for name in ("shop", "blog"):
        assert sum(due_for_poll(_tenant(name, interval), tick) for tick in ticks) == polls_per_hour


def test_index_rows_only_for_statements_that_hash_to_their_name() -> None:
    good: dict[str, Any] = {
        "predicate": {
            "type": "release_decision",
            "environment": "dev",
            "promotion": {"id": "shop-1.0--dev"},
            "release": {"name": "shop-1.0", "id": "sha256:" + "1" * 64},
            "decision": {"result": "allow"},
            "decidedAt": "2026-01-02T03:04:05Z",
        }
    }
    data = json.dumps(good).encode()
    good_id = hashlib.sha256(data).hexdigest()
    rows = evidence_rows("shop", {good_id: data, "0" * 64: data, "f" * 64: b"not json"})
    assert rows == [
        (
            "shop",
            f"sha256:{good_id}",
            "release_decision",
            "dev",
            "shop-1.0--dev",
            "shop-1.0",
            "sha256:" + "1" * 64,
            "allow",
            "2026-01-02T03:04:05Z",
            data.decode(),
        )
    ]


@pytest.mark.parametrize(
    ("result", "open_"),
    [
        ({"decisions": []}, False),
        ({"decisions": [{"decision": "allow", "evidence": "sha256:1"}, {"decision": "deny"}]}, False),
        ({"decisions": [{"decision": "pending", "evidence": None}]}, True),
        ({"decisions": [{"decision": "error", "problem": "bad release"}]}, True),
        ({"decisions": [], "transient": ["registry unreachable"]}, True),
        ({"decisions": [], "problems": [{"file": "releases/x.yaml"}]}, True),
        ({"decisions": [], "limits": ["quota"]}, True),
        ({"decisions": [], "policyChange": {"state": "pending"}}, True),
    ],
    ids=["nothing", "decided", "pending", "error", "transient", "problem", "limit", "policy-change"],
)
def test_only_a_pass_that_left_nothing_open_lets_the_next_skip(result: dict[str, Any], open_: bool) -> None:
    assert left_open(result) is open_
