"""The fleet at scale (DESIGN §10): 20 tenants, one `stella serve` and two `stella worker` processes on a
real PostgreSQL, with the tenants' repositories served by a real `git daemon`.

One example workspace is built and copied 20 times (`git clone --bare`); each copy gets a commit that
names its own tenant in `stella.yaml`, so that every tenant's records are its own, and opens a second
promotion (to staging), which stays pending. They share the evidence key. Ten tenants are triggered
only by signed webhooks (four each, one a redelivery of another, all forty sent at once); the other ten
only by polls (`pollInterval` 1s, 5s or 10s, ticked every 10 s by `stella.poll`), which keep polling
after the decision, so passes run again on decided tenants. The two workers have a workdir each, as on
two machines.

Outcomes: every open promotion that can be decided is decided exactly once (one decision record, one
evidence commit per tenant; the pending one has none and is in `stella_pending`); `stella audit verify`
is clean on a clone of every tenant's repository; the index holds exactly each tenant's records; both
workers ran passes; the server's answers, its metrics, the workers' counters and the queue agree. Then,
through the running server with every tenant's rows present: forged, missing and replayed signatures
are 401 and enqueue nothing; a token of one tenant on every API endpoint of another is 404 with none of
the other's data; as the service role, row-level security shows no rows without a tenant and only that
tenant's rows with one, and UPDATE and DELETE of evidence are refused.

Everything runs once in a module fixture (the setup is most of the cost); the two tests read it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.e2e.test_fleet_end_to_end import EVIDENCE_REF, PROMOTION, running_server
from tests.e2e.test_fleet_server import Server
from tests.e2e.test_fleet_worker import running_worker
from tests.support.cli import stella
from tests.support.fleet import TenantEntry, write_fleet_yaml
from tests.support.gitdaemon import GitDaemon, start_git_daemon
from tests.support.pipeline import example_workspace, promotion
from tests.support.postgres import PostgresServer, ScratchDatabase
from tests.support.repos import git

TENANTS = [f"tenant{i:02d}" for i in range(20)]
WEBHOOK_TENANTS = TENANTS[:10]
"""Triggered only by webhooks: their `pollInterval` is a year, so no poll runs during the test."""
POLL_TENANTS = TENANTS[10:]
POLL_INTERVALS = ("1s", "5s", "10s")
PENDING = "shop-1.4.0--staging"
"""The promotion each tenant has open besides example-repo's (`PROMOTION`): pending, never decided."""
DEADLINE = 120.0
"""Seconds to wait for a condition (generous: the machine is shared)."""
API = "/api/v1/tenants"
ENDPOINTS = ("promotions", "environments", "targets")
OUTCOMES = ("ok", "transient", "failed")
RESULTS = ("allow", "deny", "pending")
UNSIGNED = (401, {"error": "bad or missing X-Hub-Signature-256"})
NOT_YOURS = (404, {"error": "no such tenant"})


def secret(tenant: str) -> str:
    return f"{tenant}-webhook-secret"


def signature(key: str, body: bytes) -> dict[str, str]:
    digest = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


def neighbour(tenant: str) -> str:
    """The next tenant round the ring: every tenant is once the intruder and once the target."""
    return TENANTS[(TENANTS.index(tenant) + 1) % len(TENANTS)]


# --- the tenants' repositories ------------------------------------------------------------------------


def tenant_repository(template: Path, repos: Path, tenant: str) -> Path:
    """A bare copy of the example workspace at `template` whose main has one more commit: `stella.yaml`
    naming `tenant`, so that its records are its own, and a second open promotion, to staging, which
    stays pending (it needs an approval nobody gives). `git fast-import`: one process for the commit."""
    bare = repos / f"{tenant}.git"
    git(repos, "clone", "--quiet", "--bare", str(template), str(bare))
    settings = (template / "stella.yaml").read_bytes()
    assert b"\ntenant: shop\n" in settings
    settings = settings.replace(b"\ntenant: shop\n", f"\ntenant: {tenant}\n".encode())
    staging = promotion("shop-1.4.0", "staging").encode()
    message = f"stella.yaml: tenant {tenant}; promote shop-1.4.0 to staging\n".encode()
    stream = b"".join(
        [
            b"commit refs/heads/main\n",
            f"committer Requester <requester@example.com> {int(time.time())} +0000\n".encode(),
            b"data %d\n%s" % (len(message), message),
            b"from refs/heads/main^0\n",
            b"M 100644 inline stella.yaml\n",
            b"data %d\n%s" % (len(settings), settings),
            f"M 100644 inline promotions/{PENDING}.yaml\n".encode(),
            b"data %d\n%s\n" % (len(staging), staging),
        ]
    )
    subprocess.run(["git", "fast-import", "--quiet"], cwd=bare, input=stream, check=True, capture_output=True)
    return bare


def statements(repo: Path) -> dict[str, bytes]:
    """The statements on `repo`'s evidence branch by id (`sha256:<hex>`), as their exact bytes."""
    listing = git(repo, "ls-tree", "-r", EVIDENCE_REF, "--", "evidence/").splitlines()
    wanted = {
        meta.split()[2]: "sha256:" + Path(path).name.removesuffix(".json")
        for meta, path in (line.split("\t", 1) for line in listing)
        if not path.endswith(".sigstore.json")
    }
    out = subprocess.run(
        ["git", "cat-file", "--batch"],
        cwd=repo,
        input="".join(f"{oid}\n" for oid in wanted).encode(),
        check=True,
        capture_output=True,
    ).stdout
    found, at = {}, 0
    for oid, id_ in wanted.items():
        end = out.index(b"\n", at)
        header = out[at:end].decode().split()
        assert header[:2] == [oid, "blob"], header
        found[id_] = out[end + 1 : end + 1 + int(header[2])]
        at = end + 1 + int(header[2]) + 1
    return found


def write_fleet(path: Path, role: str, workdir: Path, repos: dict[str, str], key: Path) -> Path:
    entries = (
        TenantEntry(
            name,
            repo,
            f"file:{key}",
            "365d" if name in WEBHOOK_TENANTS else POLL_INTERVALS[i % len(POLL_INTERVALS)],
        )
        for i, (name, repo) in enumerate(repos.items())
    )
    return write_fleet_yaml(path, role, workdir, entries)


# --- the queue ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    id: int
    task: str
    args: dict[str, Any]
    status: str
    attempts: int
    worker: int | None

    @property
    def tenant(self) -> str:
        return str(self.args.get("tenant"))

    @property
    def trigger(self) -> str:
        return str(self.args.get("trigger"))


def queue(db: ScratchDatabase) -> list[Job]:
    with psycopg.connect(db.url) as conn:
        rows = conn.execute(
            "SELECT id, task_name, args, status, attempts, worker_id FROM procrastinate_jobs ORDER BY id"
        ).fetchall()
    return [Job(int(i), str(t), dict(a), str(s), int(n), w) for i, t, a, s, n, w in rows]


def registered_workers(db: ScratchDatabase) -> list[int]:
    with psycopg.connect(db.url) as conn:
        return [int(r[0]) for r in conn.execute("SELECT id FROM procrastinate_workers ORDER BY id")]


def index(db: ScratchDatabase) -> dict[str, dict[str, Any]]:
    """The evidence index by tenant and id, read as the superuser (row-level security does not apply)."""
    rows: dict[str, dict[str, Any]] = {}
    with psycopg.connect(db.url) as conn:
        for tenant, id_, statement in conn.execute("SELECT tenant, id, statement FROM stella_evidence"):
            rows.setdefault(tenant, {})[id_] = statement
    return rows


def pending(db: ScratchDatabase) -> dict[str, set[tuple[str, str, str]]]:
    """The pending promotions the workers left, by tenant, read as the superuser."""
    rows: dict[str, set[tuple[str, str, str]]] = {}
    with psycopg.connect(db.url) as conn:
        for tenant, *row in conn.execute(
            "SELECT tenant, promotion, environment, release_name FROM stella_pending"
        ):
            rows.setdefault(tenant, set()).add(tuple(row))
    return rows


def decided_tenants(db: ScratchDatabase) -> set[str]:
    with psycopg.connect(db.url) as conn:
        rows = conn.execute("SELECT DISTINCT tenant FROM stella_evidence WHERE type = 'release_decision'")
        return {str(r[0]) for r in rows}


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
_SAMPLE = re.compile(r"^(stella_\w+)(?:\{(.*)\})? (\S+)$")


def metric_samples(http: httpx.Client) -> Samples:
    """The server's `stella_*` samples by name and labels."""
    answer = http.get("/metrics")
    assert answer.status_code == 200, answer.text
    samples: Samples = {}
    for line in answer.text.splitlines():
        if match := _SAMPLE.match(line):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
            samples[(match[1], labels)] = float(match[3])
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample (0 when the server has none: a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


# --- the fleet, run once for the module ----------------------------------------------------------------


@dataclass
class Run:
    """What the module fixture ran and saw."""

    tmp: Path
    db: ScratchDatabase
    daemon: GitDaemon
    server: Server
    tokens: dict[str, str]
    repos: dict[str, Path]
    workdirs: list[Path]
    logs: list[Path]
    answers: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    """The answer to every webhook the webhook tenants were sent, by tenant."""
    jobs: list[Job] = field(default_factory=list)
    """The queue once the workers stopped, with each job's worker as seen while both were registered
    (procrastinate nulls `worker_id` when a worker stops)."""
    workers: list[int] = field(default_factory=list)
    """procrastinate's ids of worker 0 and worker 1 (started one after the other)."""
    exits: list[int | None] = field(default_factory=list)

    def logs_text(self) -> str:
        return "\n".join(
            f"--- {p.name}:\n{p.read_text(errors='replace')[-4000:] if p.exists() else '(not started)'}"
            for p in self.logs
        )


def send_all(
    http: httpx.Client, requests: Sequence[tuple[str, bytes, dict[str, str]]]
) -> list[httpx.Response]:
    """POST every (path, body, headers) at once, from as many threads."""
    with ThreadPoolExecutor(max_workers=min(32, len(requests))) as pool:
        return list(pool.map(lambda r: http.post(r[0], content=r[1], headers=r[2]), requests))


def wait_for(
    what: str, done: Callable[[], bool], run: Run, processes: Sequence[subprocess.Popen[bytes]]
) -> None:
    deadline = time.monotonic() + DEADLINE
    while not done():
        for process in processes:
            assert process.poll() is None, (
                f"{process.args!r} exited ({process.returncode}):\n{run.logs_text()}"
            )
        if time.monotonic() > deadline:
            states = Counter(
                (j.tenant, j.trigger, j.status) for j in queue(run.db) if j.task == "stella.reconcile"
            )
            pytest.fail(
                f"timed out waiting for {what}:\n{sorted(states.items())}\n{run.logs_text()}", pytrace=False
            )
        time.sleep(0.5)


@pytest.fixture(scope="module")
def fleet(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("scale")
    db = postgres.new_database()  # what `pg_database` does, for the module
    with ExitStack() as stack:
        stack.callback(db.drop)
        template = example_workspace(tmp / "template")
        served = tmp / "repos"
        served.mkdir()
        repos = {name: tenant_repository(template.root, served, name) for name in TENANTS}
        daemon = start_git_daemon(served)
        stack.callback(daemon.stop)
        urls = {name: daemon.url(f"{name}.git") for name in TENANTS}
        workdirs = [tmp / "work-0", tmp / "work-1"]  # a workdir per worker, as on two machines
        configs = [
            write_fleet(tmp / f"fleet-{i}.yaml", db.role, w, urls, template.key)
            for i, w in enumerate(workdirs)
        ]
        env = {
            "STELLA_DATABASE_URL": db.url,
            **{f"{name.upper()}_WEBHOOK_SECRET": secret(name) for name in TENANTS},
        }
        migrated = stella("fleet", "migrate", "--config", configs[0], env=env)
        assert migrated.code == 0, migrated.err

        logs = [tmp / "serve.log", tmp / "worker-0.log", tmp / "worker-1.log"]
        tokens: dict[str, str] = {}
        server = stack.enter_context(running_server(configs[0], env, db, tokens, logs[0]))
        run = Run(tmp, db, daemon, server, tokens, repos, workdirs, logs)

        workers: list[subprocess.Popen[bytes]] = []

        def registered(n: int) -> Callable[[], bool]:
            return lambda: len(registered_workers(db)) == n

        for i in (0, 1):  # one after the other, so that procrastinate's ids say which is which
            workers.append(stack.enter_context(running_worker(configs[i], env, logs[i + 1])))
            wait_for(f"worker {i} to register", registered(i + 1), run, workers)
        run.workers = registered_workers(db)
        processes = [server.process, *workers]

        # the webhook tenants' webhooks, all at once: three deliveries each and a redelivery of the first
        http = stack.enter_context(server.client())
        requests = []
        for name, repo in repos.items():
            if name in WEBHOOK_TENANTS:
                head = git(repo, "rev-parse", "main")
                bodies = [
                    json.dumps({"ref": "refs/heads/main", "after": head, "n": k}).encode() for k in range(3)
                ]
                requests += [(f"/hooks/{name}", b, signature(secret(name), b)) for b in [*bodies, bodies[0]]]
        requests = requests[::2] + requests[1::2]  # the tenants interleaved
        for (path, _, _), answer in zip(requests, send_all(http, requests), strict=True):
            run.answers.setdefault(path.removeprefix("/hooks/"), []).append(
                (answer.status_code, answer.json())
            )

        def create(name: str) -> tuple[str, str]:
            made = stella("fleet", "token", "create", name, "--config", configs[0], env=env)
            assert made.code == 0 and made.out.startswith("stl_"), made.err
            return name, made.out.strip()

        def settled() -> bool:
            jobs = [j for j in queue(db) if j.task == "stella.reconcile"]
            failed = [j for j in jobs if j.status == "failed"]
            assert not failed, f"failed jobs {failed}:\n{run.logs_text()}"
            busy = {j.tenant for j in jobs if j.trigger == "webhook" and j.status in ("todo", "doing")}
            return not busy and decided_tenants(db) == set(TENANTS)

        with ThreadPoolExecutor(max_workers=2) as pool:
            created = pool.map(create, TENANTS)  # the API tokens (for test 2), while the workers work
            wait_for("every tenant to be decided and every webhook job to be done", settled, run, processes)
            running = {j.id: j.worker for j in queue(db)}
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            run.exits = [w.wait(timeout=60) for w in workers]
            tokens.update(created)
        # the final states, with the worker of each job as it was before the workers unregistered (a job
        # taken between that look and the stop has none)
        run.jobs = [replace(j, worker=running.get(j.id)) for j in queue(db)]
        yield run


# --- 1. every open promotion decided exactly once -----------------------------------------------------


def test_twenty_tenants_two_workers_decide_every_promotion_exactly_once(fleet: Run) -> None:
    assert fleet.exits == [0, 0], fleet.logs_text()
    reconciles = [j for j in fleet.jobs if j.task == "stella.reconcile"]

    # the webhooks: all accepted; each `queued: true` is one job of the tenant's, the rest collapsed
    for name in WEBHOOK_TENANTS:
        answers = fleet.answers[name]
        assert len(answers) == 4 and {s for s, _ in answers} == {202}, (name, answers)
        queued = [body["queued"] for _, body in answers]
        assert set(queued) <= {True, False} and queued.count(True) >= 1, (name, answers)
        mine = [j for j in reconciles if j.tenant == name]
        assert [j.trigger for j in mine] == ["webhook"] * queued.count(True), (name, mine, answers)
    assert set(fleet.answers) == set(WEBHOOK_TENANTS)
    # the pollers: polled only, every one at least once
    for name in POLL_TENANTS:
        assert {j.trigger for j in reconciles if j.tenant == name} == {"poll"}, name
    # each tick of `stella.poll` deferred once, whatever the number of workers
    ticks = [j.args["timestamp"] for j in fleet.jobs if j.task == "stella.poll"]
    assert ticks and len(ticks) == len(set(ticks)), ticks

    # every job that ran succeeded at its first attempt (no lost push, no retry); both workers ran passes
    assert {(j.status, j.attempts) for j in reconciles if j.status != "todo"} == {("succeeded", 1)}, (
        reconciles
    )
    assert len(fleet.workers) == 2
    by_worker = {w: {j.tenant for j in reconciles if j.worker == w} for w in fleet.workers}
    assert all(by_worker.values()), by_worker
    late = {j.tenant for j in reconciles if j.worker is None and j.status == "succeeded"}
    # ... each in its own workdir: a tenant is cloned in the workdir of every worker that ran it
    for workdir, tenants in zip(fleet.workdirs, by_worker.values(), strict=True):
        cloned = {p.parent.name for p in workdir.glob("*/repo.git")}
        assert tenants <= cloned <= tenants | late, (workdir, cloned, tenants, late)
        assert {p.stat().st_mode & 0o777 for p in workdir.iterdir()} == {0o700}

    # each tenant's repository: its genesis and one decision, of its own tenant, in one evidence commit
    fleet_index = index(fleet.db)
    decisions: dict[str, str] = {}
    for name, repo in fleet.repos.items():
        records = statements(repo)
        assert all(
            hashlib.sha256(data).hexdigest() == id_.removeprefix("sha256:") for id_, data in records.items()
        )
        predicates = {id_: json.loads(data)["predicate"] for id_, data in records.items()}
        assert sorted(p["type"] for p in predicates.values()) == [
            "policy_ratification",
            "release_decision",
        ], name
        assert {p["tenant"] for p in predicates.values()} == {name}
        [(decision, predicate)] = [(i, p) for i, p in predicates.items() if p["type"] == "release_decision"]
        assert (predicate["promotion"]["id"], predicate["environment"], predicate["decision"]["result"]) == (
            PROMOTION,
            "dev",
            "allow",
        ), name
        decisions[name] = decision
        # the index holds exactly those records, under that tenant
        assert fleet_index.get(name) == {i: json.loads(data) for i, data in records.items()}, name
    assert set(fleet_index) == set(TENANTS)
    assert len(set(decisions.values())) == len(TENANTS)
    # the promotion to staging: no record (above), and pending for every tenant
    assert pending(fleet.db) == {name: {(PENDING, "staging", "shop-1.4.0")} for name in TENANTS}

    # what was pushed verifies on a clone of every tenant's repository
    def verify(name: str) -> tuple[str, int, Any]:
        clone = fleet.tmp / "clones" / f"{name}.git"
        git(fleet.tmp, "clone", "--quiet", "--bare", fleet.daemon.url(f"{name}.git"), str(clone))
        verified = stella("audit", "verify", "-o", "json", "--repo", clone)
        return name, verified.code, verified.json() if verified.code in (0, 1) else verified.err

    (fleet.tmp / "clones").mkdir(exist_ok=True)
    with ThreadPoolExecutor(max_workers=4) as pool:
        for name, code, report in pool.map(verify, TENANTS):
            assert code == 0 and report["ok"] is True and report["findings"] == [], (name, report)
            # one evidence commit: the passes after the deciding one wrote nothing
            assert (report["records"], report["commits"], report["chains"]["dev"]) == (2, 1, decisions[name])

    # the server counted what it answered, and the workers' counters (read by the server) what they did
    with fleet.server.client() as http:
        samples = metric_samples(http)
    for name in WEBHOOK_TENANTS:
        queued = [body["queued"] for _, body in fleet.answers[name]]
        assert sample(samples, "stella_webhook_accepted_total", tenant=name) == len(queued)
        enqueued = sample(samples, "stella_triggers_enqueued_total", tenant=name, trigger="webhook")
        collapsed = sample(samples, "stella_triggers_collapsed_total", tenant=name, trigger="webhook")
        assert (enqueued, collapsed) == (queued.count(True), queued.count(False)), name
    for name in TENANTS:
        ran = sum(j.status == "succeeded" for j in reconciles if j.tenant == name)
        passes = {o: sample(samples, "stella_passes_total", tenant=name, outcome=o) for o in OUTCOMES}
        assert passes == {"ok": ran, "transient": 0, "failed": 0}, name
        decided = {r: sample(samples, "stella_decisions_total", tenant=name, result=r) for r in RESULTS}
        assert decided == {"allow": 1, "deny": 0, "pending": 0}, name


# --- 2. security at scale, through the running server --------------------------------------------------


def test_at_scale_signatures_tokens_and_row_level_security_keep_every_tenant_apart(fleet: Run) -> None:
    rows = index(fleet.db)
    assert set(rows) == set(TENANTS) and all(len(r) == 2 for r in rows.values()), rows.keys()
    before = queue(fleet.db)

    # webhooks: a forged signature, none, and a body signed for the neighbour, for every tenant at once
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    attempts = {}
    for name in TENANTS:
        other = neighbour(name)
        attempts[(name, "forged")] = (f"/hooks/{name}", body, signature(secret(name) + "-forged", body))
        attempts[(name, "missing")] = (f"/hooks/{name}", body, {"Content-Type": "application/json"})
        attempts[(name, f"signed for {other}")] = (f"/hooks/{name}", body, signature(secret(other), body))
    with fleet.server.client() as http:
        metrics = [metric_samples(http)]
        answers = send_all(http, list(attempts.values()))
        metrics.append(metric_samples(http))
    assert {
        what: (a.status_code, a.json()) for what, a in zip(attempts, answers, strict=True)
    } == dict.fromkeys(attempts, UNSIGNED)
    assert queue(fleet.db) == before  # nothing enqueued, nothing changed
    for name in TENANTS:
        refused = [
            sample(m, "stella_webhook_rejected_total", tenant=name, reason="signature") for m in metrics
        ]
        accepted = [sample(m, "stella_webhook_accepted_total", tenant=name) for m in metrics]
        assert (refused[1] - refused[0], accepted[1] - accepted[0]) == (3, 0), name

    # the API, every tenant at once: its token answers its own rows, and nothing of its neighbour's
    decision = {
        name: next(i for i, s in r.items() if s["predicate"]["type"] == "release_decision")
        for name, r in rows.items()
    }
    expected: dict[tuple[str, str, str], tuple[int, Any]] = {}
    for name in TENANTS:
        other = neighbour(name)
        promotions = [
            {
                "id": PROMOTION,
                "environment": "dev",
                "release": "shop-1.4.0",
                "state": "allow",
                "evidence": decision[name],
            },
            {
                "id": PENDING,
                "environment": "staging",
                "release": "shop-1.4.0",
                "state": "pending",
                "evidence": None,
            },
        ]
        expected[(name, name, "promotions")] = (200, promotions)
        for id_, statement in rows[name].items():
            expected[(name, name, f"evidence/{id_}")] = (200, statement)
        for path in (*ENDPOINTS, *(f"evidence/{id_}" for id_ in rows[other])):
            expected[(name, other, path)] = NOT_YOURS
        for id_ in rows[other]:  # the neighbour's evidence asked through one's own tenant
            expected[(name, name, f"evidence/{id_}")] = (404, {"error": "no such evidence"})

    def get(key: tuple[str, str, str]) -> httpx.Response:
        token, tenant, path = key
        return http.get(f"{API}/{tenant}/{path}", headers={"Authorization": f"Bearer {fleet.tokens[token]}"})

    with fleet.server.client() as http, ThreadPoolExecutor(max_workers=8) as pool:
        api = dict(zip(expected, pool.map(get, expected), strict=True))
    assert {key: (a.status_code, a.json()) for key, a in api.items()} == expected
    for (token, tenant, _), answer in api.items():
        if token != tenant:  # a refusal names nothing of the other tenant's
            assert tenant not in answer.text and not any(i[7:] in answer.text for i in rows[tenant])

    # SQL as the service role, on both tables under row-level security: no tenant, no rows; a tenant,
    # its rows only; no UPDATE at all, no DELETE of evidence, and a DELETE of pending promotions (what
    # each pass does) reaches the tenant's own rows only
    waiting = pending(fleet.db)
    assert set(waiting) == set(TENANTS)
    own = {
        "stella_evidence": {name: {(name, id_) for id_ in rows[name]} for name in TENANTS},
        "stella_pending": {name: {(name, p) for p, _, _ in waiting[name]} for name in TENANTS},
    }
    denied: dict[tuple[str, str], str] = {}
    with psycopg.connect(fleet.db.url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(fleet.db.role)))
        assert conn.execute("SELECT current_user").fetchone() == (fleet.db.role,)
        keys = {"stella_evidence": "tenant, id", "stella_pending": "tenant, promotion"}
        for table in own:
            every = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            assert conn.execute(every).fetchone() == (0,), table
            ask = sql.SQL("SELECT count(*) FROM {} WHERE tenant = %s").format(sql.Identifier(table))
            assert conn.execute(ask, (TENANTS[0],)).fetchone() == (0,), table
        for name in TENANTS:
            with conn.transaction():
                conn.execute("SELECT set_config('stella.tenant', %s, true)", (name,))
                for table, columns in keys.items():
                    query = sql.SQL("SELECT {} FROM {}").format(sql.SQL(columns), sql.Identifier(table))
                    assert set(conn.execute(query).fetchall()) == own[table][name], (table, name)
            for what, statement in (
                ("update evidence", "UPDATE stella_evidence SET result = 'deny'"),
                ("delete evidence", "DELETE FROM stella_evidence"),
                ("update pending", "UPDATE stella_pending SET environment = 'prod'"),
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught, conn.transaction():
                    conn.execute("SELECT set_config('stella.tenant', %s, true)", (name,))
                    conn.execute(statement)
                denied[(name, what)] = str(caught.value).splitlines()[0]
            with conn.transaction(force_rollback=True):
                conn.execute("SELECT set_config('stella.tenant', %s, true)", (name,))
                deleted = conn.execute("DELETE FROM stella_pending RETURNING tenant, promotion").fetchall()
                assert set(deleted) == own["stella_pending"][name], name
        assert conn.execute("SELECT count(*) FROM stella_evidence").fetchone() == (0,)  # the setting ended
    assert denied == {
        (name, what): f"permission denied for table stella_{what.split()[1]}"
        for name in TENANTS
        for what in ("update evidence", "delete evidence", "update pending")
    }
    assert (index(fleet.db), pending(fleet.db)) == (rows, waiting)  # every row still there, unchanged
