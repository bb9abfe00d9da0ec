"""The fleet as a user runs it (DESIGN §10): `stella fleet migrate`, `stella fleet token create`, `stella
serve` and `stella worker` as real processes, on a real PostgreSQL, with two tenants whose repositories
a real `git daemon` serves and which decide their open promotion offline.

A signed webhook of one tenant is answered 202, the worker runs its job, the decision is pushed to the
tenant's repository and indexed, and the API answers it to the tenant's token only (another tenant's
token gets 404); the other tenant has nothing until its own webhook, and afterwards each tenant's API
still shows its own rows only. `stella audit verify` passes on a clone of each tenant's repository.
SIGTERM stops the server and the worker with exit 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from tests.e2e.test_fleet_server import SECRETS, Server, _first_line, signed
from tests.e2e.test_fleet_worker import decisions, evidence_ids, running_worker, wait_for
from tests.support.cli import STELLA, stella
from tests.support.fleet import TenantEntry, write_fleet_yaml
from tests.support.gitdaemon import start_git_daemon
from tests.support.pipeline import Workspace, example_workspace
from tests.support.postgres import ScratchDatabase

PROMOTION = "shop-1.4.0--dev"
"""The promotion example-repo has open (the same in both tenants' copies)."""
EVIDENCE_REF = "refs/heads/stella/evidence"


def write_fleet(tmp_path: Path, role: str, repos: dict[str, str], keys: dict[str, Path]) -> Path:
    # pollInterval 24h: no poll decides a tenant during the test, only its webhook does
    entries = (TenantEntry(name, repo, f"file:{keys[name]}", "24h") for name, repo in repos.items())
    return write_fleet_yaml(tmp_path / "fleet.yaml", role, tmp_path / "work", entries)


@contextmanager
def running_server(
    config: Path, env: dict[str, str], db: ScratchDatabase, tokens: dict[str, str], log: Path
) -> Iterator[Server]:
    with open(log, "wb") as err:
        process = subprocess.Popen(
            [STELLA, "serve", "--config", str(config), "--listen", "127.0.0.1:0"],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    running = Server("", db, process, tokens)
    try:
        line = _first_line(process)
        assert line.startswith("listening on http://127.0.0.1:"), (line, log.read_text())
        running.url = line.split()[-1]
        yield running
    finally:
        running.stop()


def webhook_jobs(db: ScratchDatabase, tenant: str) -> list[str]:
    """The statuses of the webhook-triggered reconcile jobs of `tenant`, oldest first."""
    with psycopg.connect(db.url) as conn:
        rows = conn.execute(
            "SELECT status FROM procrastinate_jobs WHERE task_name = 'stella.reconcile'"
            " AND args->>'tenant' = %s AND args->>'trigger' = 'webhook' ORDER BY id",
            (tenant,),
        ).fetchall()
    return [str(status) for (status,) in rows]


def decision_id(ws: Workspace) -> str:
    [path] = decisions(ws)
    return "sha256:" + Path(path).name.removesuffix(".json")


def test_a_webhook_decides_its_tenant_and_the_api_answers_it_to_that_tenant_only(
    tmp_path: Path, pg_database: ScratchDatabase
) -> None:
    workspaces = {name: example_workspace(tmp_path / name) for name in SECRETS}
    shop, blog = workspaces["shop"], workspaces["blog"]
    daemon = start_git_daemon(tmp_path)
    try:
        config = write_fleet(
            tmp_path,
            pg_database.role,
            {name: daemon.url(f"{name}/repo") for name in workspaces},
            {name: ws.key for name, ws in workspaces.items()},
        )
        env = {
            "STELLA_DATABASE_URL": pg_database.url,
            **{f"{name.upper()}_WEBHOOK_SECRET": secret for name, secret in SECRETS.items()},
        }
        migrated = stella("fleet", "migrate", "--config", config, env=env)
        assert migrated.code == 0, migrated.err
        tokens = {}
        for name in SECRETS:
            created = stella("fleet", "token", "create", name, "--config", config, env=env)
            assert created.code == 0 and created.out.startswith("stl_"), created.err
            tokens[name] = created.out.strip()
        bearer = {name: {"Authorization": f"Bearer {token}"} for name, token in tokens.items()}
        api = "/api/v1/tenants"
        body = b'{"ref": "refs/heads/main"}'

        worker_log = tmp_path / "worker.log"
        with (
            running_server(config, env, pg_database, tokens, tmp_path / "serve.log") as server,
            running_worker(config, env, worker_log) as worker,
            server.client() as http,
        ):

            def decided(name: str) -> bool:
                return webhook_jobs(pg_database, name) == ["succeeded"]

            # tenant shop's webhook: queued, run by the worker, pushed to shop's repository, indexed
            hook = http.post("/hooks/shop", content=body, headers=signed("shop", body))
            assert (hook.status_code, hook.json()) == (202, {"queued": True})
            wait_for("shop's webhook job", lambda: decided("shop"), worker, worker_log, pg_database)
            assert shop.git("for-each-ref", "--format=%(refname)", EVIDENCE_REF) == EVIDENCE_REF
            shop_decision = decision_id(shop)

            promotions = http.get(f"{api}/shop/promotions", headers=bearer["shop"])
            assert promotions.status_code == 200, promotions.text
            shop_promotions = [
                {
                    "id": PROMOTION,
                    "environment": "dev",
                    "release": "shop-1.4.0",
                    "state": "allow",
                    "evidence": shop_decision,
                }
            ]
            assert promotions.json() == shop_promotions
            statement = http.get(f"{api}/shop/evidence/{shop_decision}", headers=bearer["shop"])
            assert statement.status_code == 200, statement.text
            predicate = statement.json()["predicate"]
            assert (predicate["type"], predicate["promotion"]["id"], predicate["decision"]["result"]) == (
                "release_decision",
                PROMOTION,
                "allow",
            )

            # blog's token on shop's paths: 404, as for a tenant that does not exist
            for path in ("promotions", "environments", "targets", f"evidence/{shop_decision}"):
                foreign = http.get(f"{api}/shop/{path}", headers=bearer["blog"])
                assert (foreign.status_code, foreign.json()) == (404, {"error": "no such tenant"}), path

            # blog: no webhook yet, so nothing decided, pushed or indexed
            assert not blog.git("for-each-ref", EVIDENCE_REF)
            assert webhook_jobs(pg_database, "blog") == []
            for path in ("promotions", "environments", "targets"):
                empty = http.get(f"{api}/blog/{path}", headers=bearer["blog"])
                assert (empty.status_code, empty.json()) == (200, []), path

            # blog's webhook: blog decided too; each tenant's API shows its own rows only
            hook = http.post("/hooks/blog", content=body, headers=signed("blog", body))
            assert (hook.status_code, hook.json()) == (202, {"queued": True})
            wait_for("blog's webhook job", lambda: decided("blog"), worker, worker_log, pg_database)
            blog_decision = decision_id(blog)
            assert blog_decision != shop_decision
            blog_promotions = http.get(f"{api}/blog/promotions", headers=bearer["blog"])
            assert blog_promotions.status_code == 200, blog_promotions.text
            assert blog_promotions.json() == [{**shop_promotions[0], "evidence": blog_decision}]
            assert http.get(f"{api}/shop/promotions", headers=bearer["shop"]).json() == shop_promotions
            environments = http.get(f"{api}/shop/environments", headers=bearer["shop"]).json()
            assert [(e["environment"], e["evidence"]) for e in environments] == [("dev", shop_decision)]
            for owner, other, other_id in (("shop", "blog", blog_decision), ("blog", "shop", shop_decision)):
                crossed = http.get(f"{api}/{owner}/evidence/{other_id}", headers=bearer[owner])
                assert (crossed.status_code, crossed.json()) == (404, {"error": "no such evidence"})
                barred = http.get(f"{api}/{other}/evidence/{other_id}", headers=bearer[owner])
                assert (barred.status_code, barred.json()) == (404, {"error": "no such tenant"})

            assert server.stop() == 0
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0, worker_log.read_text()[-4000:]

        # the index holds every statement of each branch, under its own tenant (read as the superuser)
        with psycopg.connect(pg_database.url) as conn:
            rows = conn.execute("SELECT tenant, id FROM stella_evidence").fetchall()
        by_tenant: dict[str, set[str]] = {}
        for tenant, id_ in rows:
            by_tenant.setdefault(tenant, set()).add(id_)
        assert by_tenant == {name: evidence_ids(ws) for name, ws in workspaces.items()}

        # what was pushed verifies on a clone of each tenant's repository
        for name in workspaces:
            clone = tmp_path / "clones" / f"{name}.git"
            subprocess.run(
                ["git", "clone", "--quiet", "--bare", daemon.url(f"{name}/repo"), str(clone)],
                check=True,
                capture_output=True,
                timeout=60,
            )
            verified = stella("audit", "verify", "-o", "json", "--repo", clone)
            assert verified.code == 0 and verified.json()["ok"] is True, (name, verified.out, verified.err)
    finally:
        daemon.stop()
