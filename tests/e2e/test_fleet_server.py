"""`stella serve` against a real PostgreSQL, as a real process on a free port, through httpx (DESIGN §10).

Webhooks: a good signature queues one `stella.reconcile` job (a second one while it is queued collapses
into it); a bad or missing signature, a body signed for another tenant, an unknown tenant and a body
over 1 MiB enqueue nothing. API: no or an unknown token is 401, a token used on another tenant 404,
and a tenant's token sees only its tenant's rows (row-level security as the service role). `/healthz`,
`/metrics`, and SIGTERM stops the server with exit 0.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import select
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from reconciler.fleet.config import load_fleet
from reconciler.fleet.schema import create_token, migrate
from tests.support.cli import STELLA, stella
from tests.support.fleet import TenantEntry, write_fleet_yaml
from tests.support.postgres import ScratchDatabase

SECRETS = {"shop": "shop-secret-1", "blog": "blog-secret-2"}
MIB = 1 << 20
START_TIMEOUT = 30


@dataclass
class Server:
    url: str
    db: ScratchDatabase
    process: subprocess.Popen[bytes]
    tokens: dict[str, str]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=15)

    def jobs(self) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db.url) as conn:
            return conn.execute(
                "SELECT task_name, lock, queueing_lock, args, status FROM procrastinate_jobs ORDER BY id"
            ).fetchall()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise
        finally:
            if self.process.stdout is not None:
                self.process.stdout.close()


def write_fleet(directory: Path, role: str) -> Path:
    entries = (
        TenantEntry(name, f"git://git.example.com/{name}.git", f"file:/etc/stella/{name}.pem")
        for name in SECRETS
    )
    return write_fleet_yaml(directory / "fleet.yaml", role, "/srv/fleet", entries)


def _first_line(process: subprocess.Popen[bytes]) -> str:
    """The server's first line of stdout, waited for with a deadline (never a sleep)."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
    if not ready:
        raise AssertionError(f"stella serve printed nothing in {START_TIMEOUT} s")
    return process.stdout.readline().decode()


@pytest.fixture
def server(pg_database: ScratchDatabase, tmp_path: Path) -> Iterator[Server]:
    config = write_fleet(tmp_path, pg_database.role)
    fleet = load_fleet(config)
    migrate(pg_database.url, fleet)
    tokens = {name: create_token(pg_database.url, fleet, name) for name in SECRETS}
    env = {
        **os.environ,
        "STELLA_DATABASE_URL": pg_database.url,
        **{f"{name.upper()}_WEBHOOK_SECRET": secret for name, secret in SECRETS.items()},
    }
    with open(tmp_path / "serve.log", "wb") as log:
        process = subprocess.Popen(
            [STELLA, "serve", "--config", str(config), "--listen", "127.0.0.1:0"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    running = Server("", pg_database, process, tokens)
    try:
        line = _first_line(process)
        assert line.startswith("listening on http://127.0.0.1:"), (line, (tmp_path / "serve.log").read_text())
        running.url = line.split()[-1]
        yield running
    finally:
        running.stop()


def signed(tenant: str, body: bytes) -> dict[str, str]:
    digest = hmac.new(SECRETS[tenant].encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


def test_webhooks_queue_once_and_refuse_what_is_not_signed(server: Server) -> None:
    body = json.dumps({"ref": "refs/heads/main", "after": "0" * 40}).encode()
    job = ("stella.reconcile", "tenant:shop", "tenant:shop", {"tenant": "shop", "trigger": "webhook"}, "todo")
    with server.client() as http:
        first = http.post("/hooks/shop", content=body, headers=signed("shop", body))
        assert (first.status_code, first.json()) == (202, {"queued": True})
        assert server.jobs() == [job]
        again = http.post("/hooks/shop", content=body, headers=signed("shop", body))
        assert (again.status_code, again.json()) == (202, {"queued": False})
        assert server.jobs() == [job]

        blog = signed("blog", body)
        big = b"x" * (MIB + 1)
        refused = {
            "bad signature": http.post(
                "/hooks/blog", content=body, headers={"X-Hub-Signature-256": "sha256=" + "0" * 64}
            ),
            "not sha256=": http.post(
                "/hooks/blog", content=body, headers={"X-Hub-Signature-256": blog["X-Hub-Signature-256"][7:]}
            ),
            "missing header": http.post("/hooks/blog", content=body),
            "shop's body replayed to blog": http.post(
                "/hooks/blog", content=body, headers=signed("shop", body)
            ),
            "a body changed after signing": http.post("/hooks/blog", content=body + b" ", headers=blog),
            "unknown tenant": http.post("/hooks/nobody", content=body, headers=blog),
            "over 1 MiB (Content-Length)": http.post("/hooks/blog", content=big, headers=signed("blog", big)),
            "over 1 MiB (streamed)": http.post(
                "/hooks/blog", content=iter([big[:MIB], big[MIB:]]), headers=signed("blog", big)
            ),
        }
        answers = {what: (r.status_code, r.json()) for what, r in refused.items()}
        unsigned = (401, {"error": "bad or missing X-Hub-Signature-256"})
        too_large = (413, {"error": f"the body is larger than {MIB} bytes"})
        assert answers == {
            "bad signature": unsigned,
            "not sha256=": unsigned,
            "missing header": unsigned,
            "shop's body replayed to blog": unsigned,
            "a body changed after signing": unsigned,
            "unknown tenant": unsigned,
            "over 1 MiB (Content-Length)": too_large,
            "over 1 MiB (streamed)": too_large,
        }
        assert server.jobs() == [job]

        exactly = b"y" * MIB  # the limit itself is accepted
        ok = http.post("/hooks/blog", content=exactly, headers=signed("blog", exactly))
        assert (ok.status_code, ok.json()) == (202, {"queued": True})
        assert [j[1] for j in server.jobs()] == ["tenant:shop", "tenant:blog"]

        metrics = http.get("/metrics")
    assert metrics.status_code == 200
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.text.splitlines()
        if line and not line.startswith("#") and "_created" not in line
    }
    assert {k: v for k, v in samples.items() if k.startswith("stella_")} == {
        'stella_webhook_accepted_total{tenant="shop"}': 2.0,
        'stella_webhook_accepted_total{tenant="blog"}': 1.0,
        'stella_webhook_rejected_total{reason="signature",tenant="blog"}': 5.0,
        'stella_webhook_rejected_total{reason="signature",tenant="-"}': 1.0,
        'stella_webhook_rejected_total{reason="too_large",tenant="blog"}': 2.0,
        'stella_triggers_enqueued_total{tenant="shop",trigger="webhook"}': 1.0,
        'stella_triggers_enqueued_total{tenant="blog",trigger="webhook"}': 1.0,
        'stella_triggers_collapsed_total{tenant="shop",trigger="webhook"}': 1.0,
        'stella_queue_depth{tenant="blog"}': 1.0,
        'stella_queue_depth{tenant="shop"}': 1.0,
    }
    assert SECRETS["shop"] not in metrics.text and SECRETS["blog"] not in metrics.text


def _record(tenant: str, n: int, kind: str, env: str, **fields: Any) -> dict[str, Any]:
    predicate = {"type": kind, "tenant": tenant, "environment": env, **fields.pop("predicate", {})}
    statement = {"_type": "https://in-toto.io/Statement/v1", "predicate": predicate}
    return {
        "tenant": tenant,
        "id": f"sha256:{tenant}{n}",
        "type": kind,
        "environment": env,
        "statement": statement,
        **fields,
    }


AT = [datetime(2026, 3, 1, 10, minute, tzinfo=UTC) for minute in range(6)]
RECORDS = [
    _record(
        "shop",
        1,
        "release_decision",
        "staging",
        promotion="r1--staging",
        release_name="r1",
        release_id="sha256:aa",
        result="allow",
        decided_at=AT[0],
    ),
    _record(
        "shop",
        2,
        "release_decision",
        "prod",
        promotion="r1--prod",
        release_name="r1",
        release_id="sha256:aa",
        result="allow",
        decided_at=AT[1],
    ),
    _record(
        "shop",
        3,
        "release_decision",
        "prod",
        promotion="r2--prod",
        release_name="r2",
        release_id="sha256:bb",
        result="deny",
        decided_at=AT[2],
    ),
    _record(
        "shop",
        4,
        "deployment",
        "prod",
        release_name="r1",
        release_id="sha256:aa",
        result="failed",
        decided_at=AT[3],
        predicate={"target": {"name": "web-1"}},
    ),
    _record(
        "shop",
        5,
        "rollback",
        "prod",
        release_name="r0",
        release_id="sha256:00",
        result="succeeded",
        decided_at=AT[4],
        predicate={"target": {"name": "web-1"}},
    ),
    _record(
        "shop",
        6,
        "deployment",
        "prod",
        release_name="r1",
        release_id="sha256:aa",
        result="succeeded",
        decided_at=AT[2],
        predicate={"target": {"name": "web-2"}},
    ),
    _record(
        "blog",
        1,
        "release_decision",
        "prod",
        promotion="b1--prod",
        release_name="b1",
        release_id="sha256:cc",
        result="allow",
        decided_at=AT[5],
    ),
    _record(
        "blog",
        2,
        "deployment",
        "prod",
        release_name="b1",
        release_id="sha256:cc",
        result="succeeded",
        decided_at=AT[5],
        predicate={"target": {"name": "web-1"}},
    ),
]


def test_the_api_answers_a_tenant_its_own_rows_only(server: Server) -> None:
    columns = (
        "tenant",
        "id",
        "type",
        "environment",
        "promotion",
        "release_name",
        "release_id",
        "result",
        "decided_at",
    )
    with psycopg.connect(server.db.url) as conn:  # the superuser, as the indexer's owner would
        for r in RECORDS:
            conn.execute(
                f"INSERT INTO stella_evidence ({', '.join(columns)}, statement) VALUES ({', '.join(['%s'] * (len(columns) + 1))})",
                (*[r.get(c) for c in columns], json.dumps(r["statement"])),
            )
    shop = {"Authorization": f"Bearer {server.tokens['shop']}"}
    base = "/api/v1/tenants"
    with server.client() as http:
        refused = {
            "no token": http.get(f"{base}/shop/promotions"),
            "basic": http.get(f"{base}/shop/promotions", headers={"Authorization": "Basic c2hvcDp4"}),
            "unknown token": http.get(
                f"{base}/shop/promotions", headers={"Authorization": "Bearer stl_nope"}
            ),
            "shop's token on blog": http.get(f"{base}/blog/promotions", headers=shop),
            "shop's token on a tenant that does not exist": http.get(f"{base}/nobody/targets", headers=shop),
            "blog's evidence through blog": http.get(f"{base}/blog/evidence/sha256:blog1", headers=shop),
            "blog's evidence through shop": http.get(f"{base}/shop/evidence/sha256:blog1", headers=shop),
            "evidence that does not exist": http.get(f"{base}/shop/evidence/sha256:none", headers=shop),
        }
        assert {what: (r.status_code, r.json()) for what, r in refused.items()} == {
            "no token": (401, {"error": "a bearer token is required"}),
            "basic": (401, {"error": "a bearer token is required"}),
            "unknown token": (401, {"error": "unknown token"}),
            "shop's token on blog": (404, {"error": "no such tenant"}),
            "shop's token on a tenant that does not exist": (404, {"error": "no such tenant"}),
            "blog's evidence through blog": (404, {"error": "no such tenant"}),
            "blog's evidence through shop": (404, {"error": "no such evidence"}),
            "evidence that does not exist": (404, {"error": "no such evidence"}),
        }
        assert refused["no token"].headers["www-authenticate"] == 'Bearer realm="stella"'

        answers = {
            what: http.get(f"{base}/shop/{what}", headers=shop)
            for what in ("promotions", "environments", "targets", "evidence/sha256:shop5")
        }
        blog = http.get(
            f"{base}/blog/promotions", headers={"Authorization": f"Bearer {server.tokens['blog']}"}
        )
    assert {what: r.status_code for what, r in answers.items()} == dict.fromkeys(answers, 200)
    assert answers["promotions"].json() == [
        {
            "id": "r1--prod",
            "environment": "prod",
            "release": "r1",
            "state": "allow",
            "evidence": "sha256:shop2",
        },
        {
            "id": "r2--prod",
            "environment": "prod",
            "release": "r2",
            "state": "deny",
            "evidence": "sha256:shop3",
        },
        {
            "id": "r1--staging",
            "environment": "staging",
            "release": "r1",
            "state": "allow",
            "evidence": "sha256:shop1",
        },
    ]
    assert answers["environments"].json() == [
        {
            "environment": "prod",
            "release": "r1",
            "releaseId": "sha256:aa",
            "promotion": "r1--prod",
            "evidence": "sha256:shop2",
            "decidedAt": "2026-03-01T10:01:00Z",
        },
        {
            "environment": "staging",
            "release": "r1",
            "releaseId": "sha256:aa",
            "promotion": "r1--staging",
            "evidence": "sha256:shop1",
            "decidedAt": "2026-03-01T10:00:00Z",
        },
    ]
    assert answers["targets"].json() == [
        {
            "environment": "prod",
            "target": "web-1",
            "record": "rollback",
            "result": "succeeded",
            "release": "r0",
            "releaseId": "sha256:00",
            "evidence": "sha256:shop5",
            "at": "2026-03-01T10:04:00Z",
        },
        {
            "environment": "prod",
            "target": "web-2",
            "record": "deployment",
            "result": "succeeded",
            "release": "r1",
            "releaseId": "sha256:aa",
            "evidence": "sha256:shop6",
            "at": "2026-03-01T10:02:00Z",
        },
    ]
    assert answers["evidence/sha256:shop5"].json() == RECORDS[4]["statement"]
    assert (blog.status_code, blog.json()) == (
        200,
        [
            {
                "id": "b1--prod",
                "environment": "prod",
                "release": "b1",
                "state": "allow",
                "evidence": "sha256:blog1",
            }
        ],
    )


def test_a_revoked_token_is_refused_from_the_next_request_on(server: Server, tmp_path: Path) -> None:
    config = write_fleet(tmp_path, server.db.role)
    spare = stella(
        "fleet", "token", "create", "shop", "--config", config, env={"STELLA_DATABASE_URL": server.db.url}
    )
    assert spare.code == 0, spare.err
    headers = {name: {"Authorization": f"Bearer {token}"} for name, token in server.tokens.items()}
    with server.client() as http:
        before = http.get("/api/v1/tenants/shop/targets", headers=headers["shop"])
        revoke = stella(
            "fleet",
            "token",
            "revoke",
            "shop",
            hashlib.sha256(server.tokens["shop"].encode()).hexdigest()[:12],
            "--config",
            config,
            env={"STELLA_DATABASE_URL": server.db.url},
        )
        assert revoke.code == 0, revoke.err
        after = {
            "revoked": http.get("/api/v1/tenants/shop/targets", headers=headers["shop"]),
            "shop's other token": http.get(
                "/api/v1/tenants/shop/targets", headers={"Authorization": f"Bearer {spare.out.strip()}"}
            ),
            "blog's": http.get("/api/v1/tenants/blog/targets", headers=headers["blog"]),
        }
    assert before.status_code == 200
    assert {what: r.status_code for what, r in after.items()} == {
        "revoked": 401,
        "shop's other token": 200,
        "blog's": 200,
    }


def test_healthz_and_a_clean_stop_on_sigterm(server: Server) -> None:
    with server.client() as http:
        health = http.get("/healthz")
        wrong_method = http.get("/hooks/shop")
    assert (health.status_code, health.json()) == (200, {"ok": True})
    assert wrong_method.status_code == 405
    assert server.stop() == 0
    with pytest.raises(httpx.ConnectError), server.client() as http:
        http.get("/healthz")


def test_a_secret_that_does_not_resolve_or_a_bad_listen_is_exit_2(tmp_path: Path) -> None:
    config = write_fleet(tmp_path, "stella_service")
    env = {"STELLA_DATABASE_URL": "postgresql://127.0.0.1:1/x", "SHOP_WEBHOOK_SECRET": "s"}
    missing = stella("serve", "--config", config, "--listen", "127.0.0.1:0", env=env)
    assert (missing.code, missing.out) == (2, "")
    assert missing.err.strip() == (
        "error: the webhook secret of tenant 'blog' (env:BLOG_WEBHOOK_SECRET): environment variable BLOG_WEBHOOK_SECRET is not set or empty"
    )
    bad = stella("serve", "--config", config, "--listen", "8080", env=env)
    assert (bad.code, bad.out, bad.err.strip()) == (2, "", "error: --listen: '8080' is not HOST:PORT")
