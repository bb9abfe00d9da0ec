"""Benchmark the fleet (DESIGN §10): many tenants deciding one new promotion each, a burst of webhooks,
and a poll with nothing to do, against the embedded default run one tenant after another.

Everything is real and on this machine: a throwaway PostgreSQL (`tests/support/postgres.py`), a `git
daemon` serving the tenants' repositories (`tests/support/gitdaemon.py`), and `stella fleet migrate`,
`stella serve` and `stella worker` as processes, the way a user runs them.

Set-up (not timed). One repository is built from example-repo/ (`tests/support/pipeline.py`): a first
`stella reconcile --once` ratifies its genesis policy and decides shop-1.4.0 to dev, then shop-1.3.0
and its promotion to dev are merged: that promotion is every tenant's one new promotion. Each tenant is
a `git clone --bare` of it (all tenants share one signing key); every run below gets fresh clones, a
fresh database and a fresh workdir, so the workers' first job of a tenant clones it. Workers run with
`--concurrency 1` (one job at a time each; `stella worker` defaults to 2), tenants poll every 3650
days (no periodic poll runs during the bench), and webhooks are signed like GitHub's.

Measured, with timestamps from procrastinate's own job events (`procrastinate_events`: a job's start and
its success, which comes after the push and the index):
(a) one webhook per tenant, all at once: the wall time from the first webhook until every tenant's
    decision is pushed, with 1 worker and with 2, the time per tenant (wall / tenants) and the median
    job. Every tenant must end with exactly one decision of the new promotion, on its repository's
    evidence branch and in the index.
(b) a burst of `--burst` signed webhooks (2.5 per tenant: every tenant twice and half of them a third
    time, shuffled) sent as fast as `--http-concurrency` connections allow, to a fresh fleet of 2
    workers: the latency from each webhook's 202 to its tenant's decision (p50, p95; a webhook that
    arrives after its tenant was decided is counted apart: it only triggers a no-op pass), the same
    from each tenant's first webhook, and how many passes ran for the webhooks sent (duplicates
    collapse into a queued job).
(c) on the 1-worker fleet of (a), every tenant decided: one poll per tenant (`defer_reconcile(...,
    "poll")`, what the periodic poll does): the median job and wall / tenants; nothing may be pushed.
    The fetch brings nothing, and since no branch moved after a pass that left nothing open, the
    worker skips the pass: this is the cost of that path (a tenant with a promotion still open runs
    its pass on every poll, which costs about the embedded no-op pass below, plus the fetch).
Baselines in the same run: the embedded default, `stella reconcile --once` (the command a job runs,
with the same environment) directly on a fresh copy of a tenant's repository, one after another on
`--baseline` tenants (in three rounds spread over the bench, so that a change of the machine's load
weighs on both sides), deciding the new promotion and then again with nothing to decide; and a bare
`git fetch` of each tenant from the daemon into an up-to-date clone of its own (the least any poll
must do). Ratios: the fleet's time per tenant and its median job over the embedded pass; the no-op
job over the fetch and over the embedded no-op pass.

`--tenants` defaults to 200 (`--burst` to 2.5 per tenant, 500), the sizes the fleet is measured at:
about 8 minutes on a 2-core machine (about 2.4 s per tenant: three runs deciding every tenant, one of
them one job at a time); `--tenants 100` takes about 4, and `--quick` is 10 tenants. Cleans up every
process and directory it made, also on Ctrl-C or SIGTERM. Skips (exit 0, a message on stderr) when
PostgreSQL is not installed. Run: `.venv/bin/python bench/bench_fleet.py` (`-o json` for the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psycopg

from reconciler.fleet.jobs import defer_reconcile, make_app
from tests.support.cli import STELLA
from tests.support.fleet import TenantEntry, write_fleet_yaml
from tests.support.gitdaemon import GitDaemon, start_git_daemon
from tests.support.pipeline import RELEASE_130, example_workspace, promotion
from tests.support.postgres import PostgresServer, ScratchDatabase, start_postgres
from tests.support.registry import ToolMissing
from tests.support.repos import commit_all

TASK = "stella.reconcile"
NEW_PROMOTION = "shop-1.3.0--dev"
EVIDENCE_REF = "refs/heads/stella/evidence"
SECRET_ENV = "STELLA_BENCH_WEBHOOK_SECRET"
SECRET = "bench-webhook-secret"
POLL_INTERVAL = "3650d"
"""No tenant is due for a periodic poll while the bench runs: only its triggers run passes."""
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
WATCH = 0.25
"""Seconds between two looks at the queue while waiting."""


class BenchFailed(RuntimeError):
    """Something did not happen as it must (a job failed, a worker died, a decision is missing)."""


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _p95(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def _r(value: float, digits: int = 3) -> float:
    return round(value, digits)


# --- repositories -------------------------------------------------------------------------------------


def _git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise BenchFailed(f"git {' '.join(args)}: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def embedded_pass(repo: Path, key: Path, home: Path) -> tuple[float, int]:
    """`stella reconcile --once` on `repo` as a job runs it (its command, only PATH, HOME and the key in
    its environment): (seconds, decisions)."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(home), "STELLA_SIGNING_KEY": str(key)}
    command = [sys.executable, "-m", "reconciler.cli", "reconcile", "--once", "--repo", str(repo)]
    command += ["-o", "json"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=home, env=env, capture_output=True, timeout=600, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace")[-800:]
        raise BenchFailed(f"stella reconcile --once on {repo}: exit {done.returncode}: {reason}")
    return elapsed, len(json.loads(done.stdout).get("decisions") or [])


def build_template(work: Path) -> tuple[Path, Path]:
    """The repository every tenant clones (genesis ratified, shop-1.4.0 in dev, shop-1.3.0--dev open) and
    the signing key."""
    ws = example_workspace(work / "template")
    home = work / "template" / "home"
    home.mkdir()
    _, decided = embedded_pass(ws.root, ws.key, home)
    if decided != 1:
        raise BenchFailed(f"the template's first pass decided {decided} promotions, not 1")
    (ws.root / "releases" / "shop-1.3.0.yaml").write_text(RELEASE_130)
    (ws.root / "promotions" / f"{NEW_PROMOTION}.yaml").write_text(promotion("shop-1.3.0", "dev"))
    commit_all(ws.root, f"promote shop-1.3.0 to dev ({NEW_PROMOTION})")
    return ws.root, ws.key


def clone_tenants(template: Path, into: Path, tenants: Sequence[str]) -> dict[str, Path]:
    into.mkdir(parents=True)
    repos = {}
    for name in tenants:
        repos[name] = into / f"{name}.git"
        _git("clone", "--quiet", "--bare", "--", str(template), str(repos[name]))
    return repos


def evidence_heads(repos: dict[str, Path]) -> dict[str, str]:
    return {name: _git("rev-parse", EVIDENCE_REF, cwd=path) for name, path in repos.items()}


# --- the fleet's processes ----------------------------------------------------------------------------


def write_fleet(path: Path, workdir: Path, role: str, urls: dict[str, str], key: Path) -> Path:
    entries = (
        TenantEntry(name, url, f"file:{key}", POLL_INTERVAL, f"env:{SECRET_ENV}")
        for name, url in urls.items()
    )
    return write_fleet_yaml(path, role, workdir, entries)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a worker finishes its job first, the server its requests), then SIGKILL to the process
    group it leads (a pass it left running) when it does not stop."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)
    if process.stdout is not None:
        process.stdout.close()


@contextmanager
def _process(
    argv: list[str], env: dict[str, str], log: Path, *, pipe: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` in a session of its own (a Ctrl-C reaches the bench only, which then stops it)."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe else out,
            stderr=out,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        _stop(process)


@dataclass
class Fleet:
    label: str
    config: Path
    db: ScratchDatabase
    conn: psycopg.Connection[Any]
    url: str
    tenants: list[str]
    repos: dict[str, Path]
    daemon: GitDaemon
    processes: list[subprocess.Popen[bytes]]
    logs: list[Path]

    def check_alive(self) -> None:
        for process, log in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                raise BenchFailed(f"{log.stem} exited ({process.returncode}):\n{_tail(log)}")

    def last_job(self) -> int:
        row = self.conn.execute("SELECT coalesce(max(id), 0) FROM procrastinate_jobs").fetchone()
        return int(row[0]) if row else 0


def _tail(log: Path, size: int = 4000) -> str:
    return log.read_text(errors="replace")[-size:] if log.exists() else ""


@contextmanager
def running_fleet(
    work: Path,
    label: str,
    server: PostgresServer,
    daemon: GitDaemon,
    template: Path,
    key: Path,
    tenants: list[str],
    workers: int,
    concurrency: int,
) -> Iterator[Fleet]:
    """Fresh clones of the tenants under the daemon, a fresh database migrated by `stella fleet migrate`,
    `stella serve` and `workers` worker processes, running and registered."""
    _say(f"{label}: {len(tenants)} clones, a database, `stella fleet migrate`, serve, {workers} worker(s)")
    repos = clone_tenants(template, daemon.base / label, tenants)
    root = work / label
    root.mkdir()
    db = server.new_database()
    try:
        urls = {name: daemon.url(f"{label}/{name}.git") for name in tenants}
        config = write_fleet(root / "fleet.yaml", root / "work", db.role, urls, key)
        env = {**os.environ, "STELLA_DATABASE_URL": db.url, SECRET_ENV: SECRET}
        migrated = subprocess.run(
            [STELLA, "fleet", "migrate", "--config", str(config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if migrated.returncode != 0:
            raise BenchFailed(f"stella fleet migrate: exit {migrated.returncode}: {migrated.stderr}")
        with ExitStack() as stack:
            conn = stack.enter_context(psycopg.connect(db.url, autocommit=True))
            serve_log = root / "serve.log"
            serve = stack.enter_context(
                _process(
                    [STELLA, "serve", "--config", str(config), "--listen", "127.0.0.1:0"],
                    env,
                    serve_log,
                    pipe=True,
                )
            )
            processes, logs = [serve], [serve_log]
            for n in range(workers):
                log = root / f"worker-{n + 1}.log"
                argv = [STELLA, "worker", "--config", str(config), "--concurrency", str(concurrency)]
                processes.append(stack.enter_context(_process(argv, env, log)))
                logs.append(log)
            fleet = Fleet(label, config, db, conn, "", tenants, repos, daemon, processes, logs)
            fleet.url = _listening(serve, serve_log)
            _until(fleet, f"{workers} workers to register", lambda: _workers(conn) >= workers, START_TIMEOUT)
            _say(f"{label}: running")
            yield fleet
            _say(f"{label}: stopping")
    finally:
        db.drop()
    _say(f"{label}: stopped")


def _listening(serve: subprocess.Popen[bytes], log: Path) -> str:
    assert serve.stdout is not None
    ready, _, _ = select.select([serve.stdout], [], [], START_TIMEOUT)
    line = serve.stdout.readline().decode() if ready else ""
    if not line.startswith("listening on http://"):
        raise BenchFailed(f"stella serve did not start ({line!r}):\n{_tail(log)}")
    return line.split()[-1]


def _workers(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
    return int(row[0]) if row else 0


def _until(fleet: Fleet, what: str, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        fleet.check_alive()
        if time.monotonic() > deadline:
            raise BenchFailed(f"{fleet.label}: timed out waiting for {what}:\n{_tail(fleet.logs[-1])}")
        time.sleep(WATCH)


# --- triggers and what they did -----------------------------------------------------------------------


@dataclass(frozen=True)
class Hook:
    tenant: str
    sent: float
    answered: float
    queued: bool | None


def _signature(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


async def _send(url: str, deliveries: Sequence[str], connections: int) -> list[Hook]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    gate = asyncio.Semaphore(connections)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def one(n: int, tenant: str) -> Hook:
            body = json.dumps({"ref": "refs/heads/main", "delivery": n}).encode()
            headers = {"X-Hub-Signature-256": _signature(body), "Content-Type": "application/json"}
            async with gate:
                sent = time.time()
                answer = await http.post(f"/hooks/{tenant}", content=body, headers=headers)
                answered = time.time()
            if answer.status_code != 202:
                raise BenchFailed(f"webhook of {tenant}: {answer.status_code} {answer.text[:200]}")
            queued = answer.json().get("queued")
            return Hook(tenant, sent, answered, queued if isinstance(queued, bool) else None)

        return list(await asyncio.gather(*(one(n, t) for n, t in enumerate(deliveries))))


def send_webhooks(fleet: Fleet, deliveries: Sequence[str], connections: int) -> list[Hook]:
    return asyncio.run(_send(fleet.url, deliveries, connections))


def wait_passes(fleet: Fleet, since: int, timeout: float) -> None:
    """Until no reconcile job after `since` is queued or running and every tenant has one that succeeded;
    a failed job stops the bench."""

    def settled() -> bool:
        rows = fleet.conn.execute(
            "SELECT status::text, count(*), count(DISTINCT args->>'tenant') FROM procrastinate_jobs"
            " WHERE task_name = %s AND id > %s GROUP BY 1",
            (TASK, since),
        ).fetchall()
        states = {status: (int(jobs), int(tenants)) for status, jobs, tenants in rows}
        if "failed" in states:
            raise BenchFailed(f"{fleet.label}: {states['failed'][0]} jobs failed:\n{_tail(fleet.logs[-1])}")
        busy = sum(states.get(s, (0, 0))[0] for s in ("todo", "doing"))
        return busy == 0 and states.get("succeeded", (0, 0))[1] == len(fleet.tenants)

    _until(fleet, "every tenant's pass", settled, timeout)


@dataclass(frozen=True)
class Job:
    tenant: str
    trigger: str
    attempts: int
    started: float
    succeeded: float

    @property
    def duration(self) -> float:
        return self.succeeded - self.started


def jobs_since(fleet: Fleet, since: int) -> list[Job]:
    """The reconcile jobs after `since`, with the times of their (last) start and their success."""
    rows = fleet.conn.execute(
        "SELECT j.args->>'tenant', j.args->>'trigger', j.attempts,"
        " extract(epoch FROM max(e.at) FILTER (WHERE e.type = 'started')),"
        " extract(epoch FROM max(e.at) FILTER (WHERE e.type = 'succeeded'))"
        " FROM procrastinate_jobs j JOIN procrastinate_events e ON e.job_id = j.id"
        " WHERE j.task_name = %s AND j.id > %s GROUP BY j.id ORDER BY j.id",
        (TASK, since),
    ).fetchall()
    return [Job(str(t), str(tr), int(a), float(s), float(d)) for t, tr, a, s, d in rows]


def landed(jobs: Sequence[Job]) -> dict[str, float]:
    """When each tenant's first pass (the one that decided) succeeded: pushed and indexed."""
    first: dict[str, float] = {}
    for job in jobs:
        first[job.tenant] = min(first.get(job.tenant, job.succeeded), job.succeeded)
    return first


def check_decided(fleet: Fleet, before: dict[str, str]) -> dict[str, str]:
    """Every tenant has exactly one decision of the new promotion, pushed to its repository (its
    evidence branch moved) and indexed; returns the evidence heads."""
    rows = fleet.conn.execute(
        "SELECT tenant, count(*) FROM stella_evidence WHERE type = 'release_decision' AND promotion = %s"
        " GROUP BY tenant",
        (NEW_PROMOTION,),
    ).fetchall()
    indexed = {str(tenant): int(count) for tenant, count in rows}
    if indexed != dict.fromkeys(fleet.tenants, 1):
        wrong = {t: indexed.get(t, 0) for t in fleet.tenants if indexed.get(t, 0) != 1}
        raise BenchFailed(f"{fleet.label}: decisions of {NEW_PROMOTION} indexed per tenant, not 1: {wrong}")
    heads = evidence_heads(fleet.repos)
    unmoved = [t for t in fleet.tenants if heads[t] == before[t]]
    if unmoved:
        raise BenchFailed(f"{fleet.label}: nothing was pushed to {unmoved[:10]}")
    return heads


# --- the phases ---------------------------------------------------------------------------------------


def decide_all(fleet: Fleet, template_head: str, connections: int, timeout: float) -> dict[str, Any]:
    """(a): one webhook per tenant at once, until every decision is pushed."""
    since = fleet.last_job()
    start = time.time()
    hooks = send_webhooks(fleet, fleet.tenants, connections)
    wait_passes(fleet, since, timeout)
    jobs = jobs_since(fleet, since)
    check_decided(fleet, dict.fromkeys(fleet.tenants, template_head))
    wall = max(landed(jobs).values()) - start
    durations = [j.duration for j in jobs]
    return {
        "workers": len(fleet.processes) - 1,
        "wall_s": _r(wall),
        "per_tenant_s": _r(wall / len(fleet.tenants)),
        "job_median_s": _r(_median(durations)),
        "job_p95_s": _r(_p95(durations)),
        "passes": len(jobs),
        "retried": sum(1 for j in jobs if j.attempts > 1),
        "send_s": _r(max(h.answered for h in hooks) - start),
    }


def burst(fleet: Fleet, template_head: str, count: int, connections: int, timeout: float) -> dict[str, Any]:
    """(b): `count` webhooks over the tenants in turn, shuffled, as fast as `connections` allow."""
    deliveries = [fleet.tenants[n % len(fleet.tenants)] for n in range(count)]
    random.Random(0).shuffle(deliveries)
    since = fleet.last_job()
    start = time.time()
    hooks = send_webhooks(fleet, deliveries, connections)
    wait_passes(fleet, since, timeout)
    jobs = jobs_since(fleet, since)
    check_decided(fleet, dict.fromkeys(fleet.tenants, template_head))
    decided = landed(jobs)
    waits = [decided[h.tenant] - h.answered for h in hooks]
    latencies = [w for w in waits if w >= 0]
    first: dict[str, float] = {}
    for hook in hooks:
        first[hook.tenant] = min(first.get(hook.tenant, hook.answered), hook.answered)
    per_tenant = [decided[t] - at for t, at in first.items()]
    queued = [h.queued for h in hooks]
    return {
        "webhooks": count,
        "tenants": len(fleet.tenants),
        "send_s": _r(max(h.answered for h in hooks) - start),
        "answered_queued": sum(1 for q in queued if q is True),
        "answered_collapsed": sum(1 for q in queued if q is False),
        "passes": len(jobs),
        "retried": sum(1 for j in jobs if j.attempts > 1),
        "collapse_ratio": _r(count / len(jobs), 2),
        "latency_p50_s": _r(_median(latencies)),
        "latency_p95_s": _r(_p95(latencies)),
        "latency_max_s": _r(max(latencies)),
        "after_decision": len(waits) - len(latencies),
        "first_webhook_p50_s": _r(_median(per_tenant)),
        "first_webhook_p95_s": _r(_p95(per_tenant)),
        "wall_s": _r(max(decided.values()) - start),
    }


def noop_polls(fleet: Fleet, timeout: float) -> dict[str, Any]:
    """(c): one poll per tenant with everything decided; nothing may be pushed."""
    before = evidence_heads(fleet.repos)
    since = fleet.last_job()
    start = time.time()
    with make_app(fleet.db.url).open() as app:
        for name in fleet.tenants:
            defer_reconcile(app, name, "poll")
    wait_passes(fleet, since, timeout)
    jobs = jobs_since(fleet, since)
    if evidence_heads(fleet.repos) != before:
        raise BenchFailed(f"{fleet.label}: a poll with nothing to decide pushed evidence")
    durations = [j.duration for j in jobs]
    wall = max(j.succeeded for j in jobs) - start
    return {
        "workers": len(fleet.processes) - 1,
        "passes": len(jobs),
        "job_median_s": _r(_median(durations)),
        "job_p95_s": _r(_p95(durations)),
        "wall_s": _r(wall),
        "per_tenant_s": _r(wall / len(fleet.tenants)),
    }


def fetch_baseline(fleet: Fleet, work: Path) -> list[float]:
    """A bare `git fetch` of each tenant (every branch, as a job fetches) into a clone of its own that is
    up to date: the least a poll must do."""
    clones = work / f"{fleet.label}-fetch"
    clones.mkdir()
    times = []
    for name in fleet.tenants:
        url = fleet.daemon.url(f"{fleet.label}/{name}.git")
        clone = clones / f"{name}.git"
        _git("clone", "--quiet", "--bare", "--", url, str(clone))
        start = time.perf_counter()
        _git("fetch", "--quiet", "--prune", "--", url, "+refs/heads/*:refs/heads/*", cwd=clone)
        times.append(time.perf_counter() - start)
    return times


@dataclass
class Embedded:
    """The baseline: `stella reconcile --once` on fresh copies of a tenant's repository, one after
    another, deciding the new promotion and then again with nothing to decide."""

    template: Path
    key: Path
    work: Path
    decide: list[float]
    noop: list[float]

    def round(self, count: int) -> None:
        if count < 1:
            return
        first = len(self.decide)
        names = [f"b{n:03d}" for n in range(first, first + count)]
        repos = clone_tenants(self.template, self.work / f"embedded-{first}", names)
        home = self.work / f"embedded-{first}" / "home"
        home.mkdir()
        _say(f"embedded baseline: {count} tenants, one after another")
        for name in names:
            elapsed, decided = embedded_pass(repos[name], self.key, home)
            if decided != 1:
                raise BenchFailed(f"the embedded pass on {name} decided {decided} promotions, not 1")
            self.decide.append(elapsed)
        for name in names:
            elapsed, decided = embedded_pass(repos[name], self.key, home)
            if decided != 0:
                raise BenchFailed(f"the embedded no-op pass on {name} decided {decided} promotions")
            self.noop.append(elapsed)


# --- the run ------------------------------------------------------------------------------------------


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    tenants = [f"t{n:03d}" for n in range(args.tenants)]
    timeout = 120.0 + 10.0 * len(tenants)
    with ExitStack() as stack:
        server = start_postgres()
        stack.callback(server.stop)
        served = work / "served"
        served.mkdir()
        daemon = start_git_daemon(served)
        stack.callback(daemon.stop)
        template, key = build_template(work)
        template_head = _git("rev-parse", EVIDENCE_REF, cwd=template)
        _say("PostgreSQL, git daemon and the template ready")

        def fleet(label: str, workers: int) -> Any:
            return running_fleet(
                work, label, server, daemon, template, key, tenants, workers, args.concurrency
            )

        # the baseline in three rounds, between the fleet's runs, so that a machine whose load changes
        # during the bench weighs on both sides alike
        embedded = Embedded(template, key, work, [], [])
        rounds = [args.baseline // 3 + (1 if n < args.baseline % 3 else 0) for n in range(3)]
        embedded.round(rounds[0])
        _say(f"(a) {len(tenants)} tenants, 1 worker; (c) a poll per tenant")
        with fleet("one", 1) as one:
            a1 = decide_all(one, template_head, args.http_concurrency, timeout)
            c = noop_polls(one, timeout)
            _say("(c) baseline: a bare git fetch of each tenant")
            fetch = fetch_baseline(one, work)
        embedded.round(rounds[1])
        _say(f"(a) {len(tenants)} tenants, 2 workers")
        with fleet("two", 2) as two:
            a2 = decide_all(two, template_head, args.http_concurrency, timeout)
        _say(f"(b) a burst of {args.burst} webhooks, 2 workers")
        with fleet("burst", 2) as three:
            b = burst(three, template_head, args.burst, args.http_concurrency, timeout)
        embedded.round(rounds[2])
    decide, noop = embedded.decide, embedded.noop
    embedded_decide = _median(decide)
    for row in (a1, a2):
        row["per_tenant_over_embedded"] = _r(row["per_tenant_s"] / embedded_decide, 2)
        row["job_over_embedded"] = _r(row["job_median_s"] / embedded_decide, 2)
    embedded_noop, fetch_s = _median(noop), _median(fetch)
    c["fetch_median_s"] = _r(fetch_s, 4)
    c["fetch_p95_s"] = _r(_p95(fetch), 4)
    c["embedded_noop_median_s"] = _r(embedded_noop)
    c["job_over_fetch"] = _r(c["job_median_s"] / fetch_s, 1)
    c["job_over_embedded_noop"] = _r(c["job_median_s"] / embedded_noop, 2)
    return {
        "tenants": len(tenants),
        "concurrency": args.concurrency,
        "embedded": {
            "tenants": args.baseline,
            "decide_median_s": _r(embedded_decide),
            "decide_p95_s": _r(_p95(decide)),
            "noop_median_s": _r(embedded_noop),
        },
        "decide": [a1, a2],
        "burst": b,
        "noop_poll": c,
    }


_STARTED = time.monotonic()
_PROGRESS = [True]


def _say(message: str) -> None:
    """A line of progress on stderr, with the seconds since the bench started (not with `-o json`)."""
    if _PROGRESS[0]:
        print(f"[{time.monotonic() - _STARTED:4.0f} s] {message}", file=sys.stderr, flush=True)


def report(figures: dict[str, Any]) -> None:
    n, emb = figures["tenants"], figures["embedded"]
    print(
        f"fleet: {n} tenants, one new promotion each; workers --concurrency {figures['concurrency']};"
        f" embedded baseline on {emb['tenants']} tenants"
    )
    print()
    print("(a) one webhook per tenant, until every decision is pushed")
    print("| | wall s | s per tenant | job median s | job p95 s | per tenant / embedded | job / embedded |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| embedded `stella reconcile --once`, one after another | {emb['decide_median_s'] * n:.1f}"
        f" (median x tenants) | {emb['decide_median_s']:.3f} | | {emb['decide_p95_s']:.3f} | 1.00 | |"
    )
    for row in figures["decide"]:
        print(
            f"| {row['workers']} worker{'s' if row['workers'] > 1 else ''} | {row['wall_s']:.1f}"
            f" | {row['per_tenant_s']:.3f} | {row['job_median_s']:.3f} | {row['job_p95_s']:.3f}"
            f" | {row['per_tenant_over_embedded']:.2f} | {row['job_over_embedded']:.2f} |"
        )
    b = figures["burst"]
    print()
    print(f"(b) a burst of {b['webhooks']} webhooks over {b['tenants']} tenants, 2 workers")
    print(
        f"sent in {b['send_s']:.2f} s; answered queued {b['answered_queued']}, collapsed"
        f" {b['answered_collapsed']}; passes {b['passes']} (webhooks / passes = {b['collapse_ratio']:.2f};"
        f" retried {b['retried']});"
        f" every tenant decided in {b['wall_s']:.1f} s"
    )
    print(
        f"webhook 202 -> its tenant's decision: p50 {b['latency_p50_s']:.1f} s,"
        f" p95 {b['latency_p95_s']:.1f} s, max {b['latency_max_s']:.1f} s"
        f" (webhooks that came after their tenant's decision: {b['after_decision']});"
        f" from a tenant's first webhook: p50 {b['first_webhook_p50_s']:.1f} s,"
        f" p95 {b['first_webhook_p95_s']:.1f} s"
    )
    c = figures["noop_poll"]
    print()
    print(f"(c) one poll per tenant with nothing to decide, {c['workers']} worker(s)")
    print("| | median s | p95 s | job / this |")
    print("|---|---|---|---|")
    print(f"| fleet job (a fetch that brings nothing) | {c['job_median_s']:.3f} | {c['job_p95_s']:.3f} | |")
    print(f"| wall / tenants | {c['per_tenant_s']:.3f} | | |")
    print(
        f"| bare `git fetch` of the tenant | {c['fetch_median_s']:.4f} | {c['fetch_p95_s']:.4f}"
        f" | {c['job_over_fetch']:.1f} |"
    )
    print(
        f"| embedded `stella reconcile --once`, nothing to decide | {c['embedded_noop_median_s']:.3f} | |"
        f" {c['job_over_embedded_noop']:.2f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--burst", type=int, default=None, help="webhooks in (b) (default 2.5 per tenant)")
    parser.add_argument("--baseline", type=int, default=20, help="tenants the embedded baseline runs on")
    parser.add_argument("--concurrency", type=int, default=1, help="jobs at once per worker")
    parser.add_argument("--http-concurrency", type=int, default=32, help="webhooks in flight at once")
    parser.add_argument("--quick", action="store_true", help="10 tenants, 25 webhooks, baseline on 5")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    args = parser.parse_args()
    if args.quick:
        args.tenants, args.baseline = 10, 5
        args.burst = args.burst or 25
    if args.burst is None:
        args.burst = args.tenants * 5 // 2
    args.baseline = max(1, min(args.baseline, args.tenants))
    _PROGRESS[0] = args.output == "text"
    if args.tenants < 1 or args.burst < args.tenants or args.concurrency < 1:
        parser.error("--tenants and --concurrency at least 1, --burst at least --tenants")

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    started = time.monotonic()
    try:
        figures = bench(args, work)
    except ToolMissing as exc:
        print(f"bench_fleet: skipped: {exc}", file=sys.stderr)
        return 0
    except BenchFailed as exc:
        print(f"bench_fleet: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_fleet: interrupted (every process and directory it made is gone)", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures["bench_s"] = _r(time.monotonic() - started, 1)
    if args.output == "json":
        print(json.dumps(figures, indent=2))
    else:
        report(figures)
        print(f"\nthe bench took {figures['bench_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
