"""What the fleet believes and shows of a tenant's evidence branch, with real processes: `stella serve`
and `stella worker` on a real PostgreSQL, the tenant's repository served by a real `git daemon`.

The tenant has two open promotions: one the pass allows, one it leaves pending (staging needs an
approval). A statement someone pushes to the evidence branch without a signature is never indexed, so
the API does not serve it (404) and does not count it. The API's promotions answer the pending one with
no evidence; `/metrics` shows the workers' passes, decisions and pass durations, read from PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
from pathlib import Path

import psycopg

from tests.e2e.test_fleet_end_to_end import PROMOTION, decision_id, running_server, write_fleet
from tests.e2e.test_fleet_server import SECRETS
from tests.e2e.test_fleet_worker import evidence_ids, running_worker, wait_for
from tests.support.cli import stella
from tests.support.gitdaemon import start_git_daemon
from tests.support.pipeline import change_evidence, example_workspace
from tests.support.postgres import ScratchDatabase
from tests.support.repos import commit_all

STAGING = "shop-1.4.0--staging"


def manual_jobs(db: ScratchDatabase) -> list[str]:
    with psycopg.connect(db.url) as conn:
        rows = conn.execute(
            "SELECT status FROM procrastinate_jobs WHERE task_name = 'stella.reconcile' ORDER BY id"
        ).fetchall()
    return [str(status) for (status,) in rows]


def sample(metrics: str, name: str, **labels: str) -> float | None:
    """The value of one sample of Prometheus text, or None when it is absent."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in metrics.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match and match[1] == name and ",".join(sorted((match[2] or "").split(","))) == wanted:
            return float(match[3])
    return None


def test_only_signed_statements_are_indexed_and_pending_promotions_are_served(
    tmp_path: Path, pg_database: ScratchDatabase
) -> None:
    shop = example_workspace(tmp_path / "shop")
    (shop.root / "promotions" / f"{STAGING}.yaml").write_text(
        "apiVersion: stella/v1\nkind: Promotion\nrelease: shop-1.4.0\nenvironment: staging\n"
    )
    commit_all(shop.root, "request staging")
    daemon = start_git_daemon(tmp_path)
    try:
        config = write_fleet(
            tmp_path, pg_database.role, {"shop": daemon.url("shop/repo")}, {"shop": shop.key}
        )
        env = {"STELLA_DATABASE_URL": pg_database.url, "SHOP_WEBHOOK_SECRET": SECRETS["shop"]}
        assert stella("fleet", "migrate", "--config", config, env=env).code == 0
        created = stella("fleet", "token", "create", "shop", "--config", config, env=env)
        assert created.code == 0, created.err
        bearer = {"Authorization": f"Bearer {created.out.strip()}"}
        api = "/api/v1/tenants/shop"

        worker_log = tmp_path / "worker.log"
        with (
            running_server(config, env, pg_database, {}, tmp_path / "serve.log") as server,
            running_worker(config, env, worker_log) as worker,
            server.client() as http,
        ):
            queued = stella("fleet", "reconcile", "shop", "--config", config, env=env)
            assert (queued.code, queued.out.strip()) == (0, "shop: queued")
            wait_for(
                "the first job",
                lambda: manual_jobs(pg_database) == ["succeeded"],
                worker,
                worker_log,
                pg_database,
            )
            allowed = decision_id(shop)

            # a statement pushed without a signature: a copy of the decision, for prod
            statement = json.loads(shop.show(f"evidence/{allowed.removeprefix('sha256:')}.json"))
            statement["predicate"]["environment"] = "prod"
            statement["predicate"]["promotion"]["id"] = "shop-1.4.0--prod"
            forged = json.dumps(statement).encode()
            forged_id = "sha256:" + hashlib.sha256(forged).hexdigest()
            change_evidence(shop, {f"evidence/{forged_id.removeprefix('sha256:')}.json": forged}, "unsigned")
            assert forged_id in evidence_ids(shop)

            queued = stella("fleet", "reconcile", "shop", "--config", config, env=env)
            assert queued.code == 0, queued.err
            wait_for(
                "the second job",
                lambda: manual_jobs(pg_database) == ["succeeded", "succeeded"],
                worker,
                worker_log,
                pg_database,
            )
            assert "not indexed" in worker_log.read_text()

            promotions = http.get(f"{api}/promotions", headers=bearer)
            assert promotions.status_code == 200, promotions.text
            assert promotions.json() == [
                {
                    "id": PROMOTION,
                    "environment": "dev",
                    "release": "shop-1.4.0",
                    "state": "allow",
                    "evidence": allowed,
                },
                {
                    "id": STAGING,
                    "environment": "staging",
                    "release": "shop-1.4.0",
                    "state": "pending",
                    "evidence": None,
                },
            ]
            missing = http.get(f"{api}/evidence/{forged_id}", headers=bearer)
            assert (missing.status_code, missing.json()) == (404, {"error": "no such evidence"})
            environments = http.get(f"{api}/environments", headers=bearer).json()
            assert [(e["environment"], e["evidence"]) for e in environments] == [("dev", allowed)]

            metrics = http.get("/metrics").text
            assert sample(metrics, "stella_passes_total", tenant="shop", outcome="ok") == 2.0
            assert sample(metrics, "stella_decisions_total", tenant="shop", result="allow") == 1.0
            assert sample(metrics, "stella_decisions_total", tenant="shop", result="pending") is None
            assert sample(metrics, "stella_pass_duration_seconds_count", tenant="shop") == 2.0
            assert sample(metrics, "stella_pass_duration_seconds_bucket", tenant="shop", le="+Inf") == 2.0
            total = sample(metrics, "stella_pass_duration_seconds_sum", tenant="shop")
            assert total is not None and 0.0 < total < 120.0

            assert server.stop() == 0
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0, worker_log.read_text()[-4000:]
    finally:
        daemon.stop()

    with psycopg.connect(pg_database.url) as conn:
        indexed = {row[0] for row in conn.execute("SELECT id FROM stella_evidence WHERE tenant = 'shop'")}
        pending = conn.execute(
            "SELECT tenant, promotion, environment, release_name FROM stella_pending"
        ).fetchall()
    assert indexed == evidence_ids(shop) - {forged_id}
    assert pending == [("shop", STAGING, "staging", "shop-1.4.0")]
