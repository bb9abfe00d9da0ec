"""The fleet's jobs on procrastinate: a tenant's reconcile pass; polls, stalled-job recovery, pruning.

`make_app(conninfo)` is the procrastinate app servers defer with; `make_app(conninfo, fleet)` is the one
a worker runs, which also knows the tenants and so has the periodic tasks. `defer_reconcile` queues
`stella.reconcile(tenant, trigger)` with `lock` and `queueing_lock` `tenant:<name>`: one job per tenant
runs at a time, and a trigger while one is already queued collapses into it (False, not an error).

A reconcile job (`reconcile_tenant`), in the tenant's own directory `workdir/<tenant>` (0700):
1. clones the tenant's repository there (bare, into a temporary name then renamed, so that a killed
   clone leaves nothing half made) or fetches every branch of it (`--prune`, forced: the remote is the
   truth, and an evidence commit of an earlier attempt that was never pushed is dropped);
2. runs `stella reconcile --once -o json` on that clone in its own process, with only `PATH`, `HOME` (the
   tenant's directory) and `STELLA_SIGNING_KEY` (the path of the tenant's key; an `env:` key is written
   to a 0600 file in the tenant's directory) in its environment;
3. pushes the evidence ref back with `--force-with-lease=<ref>:<the fetched head>`: compare-and-swap, so
   a pass that raced another writer loses and is retried on the new head, never duplicating a decision;
4. indexes the statements on the pushed evidence branch into `stella_evidence` as the service role
   (`SET LOCAL ROLE`, `set_config('stella.tenant', …, true)`), `ON CONFLICT DO NOTHING`.

Exit 3 of the pass, a Git server that cannot be reached, a lost push or a database that fails are
`RetryLater`: procrastinate retries with exponential backoff (`RETRY`). Exit 2 (invalid input) or any
other failure is `JobFailed`: the job fails at once, logged. Secrets are never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import procrastinate
from procrastinate.exceptions import AlreadyEnqueued, UniqueViolation

from ..errors import StellaError
from .config import Fleet, Tenant, resolve_ref

log = logging.getLogger(__name__)

RECONCILE = "stella.reconcile"
POLL = "stella.poll"
RETRY_STALLED = "stella.retry_stalled"
PRUNE = "stella.prune"
Trigger = Literal["webhook", "poll", "manual"]
TRIGGERS: tuple[str, ...] = ("webhook", "poll", "manual")

POLL_TICK = 10
"""Seconds between two looks at which tenants are due for a poll (a periodic task)."""
STALLED_TICK = 5
"""Seconds between two looks for jobs of dead workers."""
HEARTBEAT = 2.0
"""Seconds between a worker's heartbeats."""
STALLED_AFTER = 10.0
"""A job whose worker has sent no heartbeat for this long is retried (its worker is dead)."""
POLLING = 1.0
"""Seconds between a worker's polls of the queue, besides LISTEN/NOTIFY (which a restart can lose)."""
DB_WAIT = 10.0
"""How long a query waits for a connection of the app's pool: a worker whose database went away stops
after this wait (and is started again) rather than after psycopg's 30 s."""
PRUNE_CRON = "23 * * * *"
"""Once an hour: the finished jobs older than fleet.yaml's `jobRetention` are deleted."""
HOUSEKEEPING = 100
"""The priority of the polls and of stalled-job recovery: taken before any reconcile job (priority 0),
so that a backed-up queue does not delay them behind every pass waiting."""
MAX_RETRIES = 5
GIT_TIMEOUT = 300.0
PASS_TIMEOUT = 1800.0
EXIT_INVALID, EXIT_TRANSIENT = 2, 3
_EVIDENCE_FILE = re.compile(r"^evidence/([0-9a-f]{64})\.json$")


class RetryLater(Exception):
    """A failure worth retrying with backoff: Git unreachable, exit 3, a lost push, the database."""


class JobFailed(Exception):
    """A failure a retry would not fix (exit 2 of the pass, an unknown tenant, a bad key reference)."""


RETRY = procrastinate.RetryStrategy(
    max_attempts=MAX_RETRIES, exponential_wait=2, retry_exceptions={RetryLater}
)
"""Up to 5 retries, waiting 2, 4, 8, 16 and 32 seconds; only `RetryLater`."""


def tenant_lock(tenant: str) -> str:
    return f"tenant:{tenant}"


def make_app(conninfo: str, fleet: Fleet | None = None) -> procrastinate.App:
    """The procrastinate app of the fleet on the database `conninfo`. With `fleet` (a worker), it also
    runs the jobs and has the periodic tasks (polls, stalled-job recovery, pruning)."""
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo, timeout=DB_WAIT))
    _yield_retries_to_queued_triggers(app)

    @app.task(name=RECONCILE, retry=RETRY)
    def reconcile(tenant: str, trigger: str) -> dict[str, Any]:
        if fleet is None:
            raise JobFailed("this app has no fleet.yaml: only a worker runs reconcile jobs")
        started = time.monotonic()
        outcome, summary = "failed", None
        try:
            summary = reconcile_tenant(fleet, tenant, trigger, conninfo)
            outcome = "ok"
            return summary
        except RetryLater as exc:
            outcome = "transient"
            log.warning("tenant %s: %s (retried with backoff)", tenant, exc)
            raise
        finally:
            if fleet.tenant(tenant) is not None:
                record_pass(conninfo, fleet.serviceRole, tenant, outcome, time.monotonic() - started, summary)

    if fleet is None:
        return app

    @app.periodic(cron=f"* * * * * */{POLL_TICK}", periodic_id=POLL)
    @app.task(name=POLL, queueing_lock=POLL, priority=HOUSEKEEPING)
    async def poll(timestamp: int) -> list[str]:
        due = [t.name for t in fleet.tenants if due_for_poll(t, timestamp)]
        for name in due:
            await defer_reconcile_async(app, name, "poll")
        return due

    @app.periodic(cron=f"* * * * * */{STALLED_TICK}", periodic_id=RETRY_STALLED)
    @app.task(name=RETRY_STALLED, queueing_lock=RETRY_STALLED, priority=HOUSEKEEPING)
    async def retry_stalled(timestamp: int) -> list[int]:
        retried = []
        for job in await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=STALLED_AFTER):
            log.warning("job %s (%s, lock %s) lost its worker: retrying it", job.id, job.task_name, job.lock)
            await app.job_manager.retry_job(job)
            assert job.id is not None
            retried.append(job.id)
        return retried

    @app.periodic(cron=PRUNE_CRON, periodic_id=PRUNE)
    @app.task(name=PRUNE, queueing_lock=PRUNE, priority=HOUSEKEEPING)
    async def prune(timestamp: int) -> int:
        """Delete the jobs (and their events) finished more than `jobRetention` ago, whatever their end
        (the polls alone add 8,640 jobs a day); return that many hours. Jobs to do or running are never
        touched, and the evidence index and counters are tables of their own."""
        hours = fleet.job_retention_hours()
        await app.job_manager.delete_old_jobs(
            nb_hours=hours, include_failed=True, include_cancelled=True, include_aborted=True
        )
        log.info("pruned the jobs finished more than %d h ago", hours)
        return hours

    return app


def _yield_retries_to_queued_triggers(app: procrastinate.App) -> None:
    """Make a retry that a queued trigger of the same tenant already covers mark the job failed instead.

    A retry puts the job back in the queue, where its `queueing_lock` allows one job per tenant: with a
    trigger queued meanwhile, procrastinate's retry fails on that lock (`UniqueViolation`), and the job
    would stay `doing` under a live worker, its `lock` holding up the queued trigger for ever. The
    queued trigger does the same work, so the job that cannot go back ends `failed` (both for a
    `RetryLater` and for a stalled job taken back)."""
    retry_job = app.job_manager.retry_job

    async def retry_or_yield(job: procrastinate.jobs.Job, *args: Any, **kwargs: Any) -> None:
        try:
            await retry_job(job, *args, **kwargs)
        except UniqueViolation:
            log.warning("job %s is not retried: a trigger of its tenant is queued and does the work", job.id)
            await app.job_manager.finish_job(job, procrastinate.jobs.Status.FAILED, delete_job=False)

    app.job_manager.retry_job = retry_or_yield  # type: ignore[method-assign]


def defer_reconcile(app: procrastinate.App, tenant: str, trigger: str) -> bool:
    """Queue a reconcile of `tenant` (the app must be open): True when queued, False when it collapsed
    into one already queued."""
    try:
        _deferrer(app, tenant, trigger).defer(tenant=tenant, trigger=trigger)
    except AlreadyEnqueued:
        return False
    return True


async def defer_reconcile_async(app: procrastinate.App, tenant: str, trigger: str) -> bool:
    """`defer_reconcile` for an open async app."""
    try:
        await _deferrer(app, tenant, trigger).defer_async(tenant=tenant, trigger=trigger)
    except AlreadyEnqueued:
        return False
    return True


def _deferrer(app: procrastinate.App, tenant: str, trigger: str) -> procrastinate.jobs.JobDeferrer:
    if trigger not in TRIGGERS:
        raise ValueError(f"trigger {trigger!r} is not one of {', '.join(TRIGGERS)}")
    lock = tenant_lock(tenant)
    return app.configure_task(RECONCILE, lock=lock, queueing_lock=lock)


def due_for_poll(tenant: Tenant, tick: int, period: int = POLL_TICK) -> bool:
    """Whether the poll tick at `tick` (epoch seconds) crosses one of `tenant`'s poll times: every
    `pollInterval`, shifted by an offset of its own so that the tenants do not all poll at once. Pure:
    the periodic task (deduplicated across workers by procrastinate) needs no state."""
    from ..models.common import parse_duration

    interval = max(1, int(parse_duration(tenant.pollInterval).total_seconds()))
    if interval <= period:
        return True
    offset = zlib.crc32(tenant.name.encode("utf-8")) % interval
    return (tick - offset) // interval != (tick - period - offset) // interval


# --- one reconcile job --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Git:
    """The git CLI on one bare clone, with a timeout, no prompt, and failures as `RetryLater`."""

    path: Path

    def run(self, *args: str, what: str, check: bool = True, stdin: bytes | None = None) -> bytes:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
        try:
            done = subprocess.run(
                ["git", *args],
                cwd=self.path if self.path.exists() else self.path.parent,
                env=env,
                input=stdin,
                capture_output=True,
                timeout=GIT_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RetryLater(f"{what}: git did not answer within {GIT_TIMEOUT:.0f} s") from exc
        if check and done.returncode != 0:
            reason = done.stderr.decode(errors="replace").strip().splitlines()
            raise RetryLater(f"{what}: {reason[-1] if reason else f'git exit {done.returncode}'}")
        return done.stdout

    def ref(self, ref: str) -> str | None:
        out = self.run("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", what="rev-parse", check=False)
        return out.decode().strip() or None


def tenant_dir(fleet: Fleet, tenant: str) -> Path:
    """`workdir/<tenant>`, made 0700 (the workdir too, when this makes it)."""
    root = Path(fleet.workdir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = root / tenant
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    return path


def reconcile_tenant(fleet: Fleet, name: str, trigger: str, conninfo: str) -> dict[str, Any]:
    """One job: fetch, pass in its own process, push by compare-and-swap, index. Returns a summary.

    The pass is skipped when no branch moved since a pass that left nothing open (`left_open`): it
    would decide nothing, and a no-op poll then costs a fetch and an index check, not a process."""
    tenant = fleet.tenant(name)
    if tenant is None:
        raise JobFailed(f"tenant {name!r} is not in the fleet file")
    home = tenant_dir(fleet, name)
    git = sync_clone(tenant, home)
    from ..manifests import load_settings
    from ..repo import Repo

    try:
        settings = load_settings(Repo(git.path).tree(git.ref("HEAD") or ""))
        evidence_ref = settings.evidence.ref
    except (StellaError, ValueError) as exc:
        raise JobFailed(f"tenant {name}: cannot read stella.yaml on its branch: {exc}") from exc
    before = git.ref(evidence_ref)
    quiet = home / QUIET
    skipped = _read_quiet(quiet) == branch_heads(git)
    if skipped:
        result: dict[str, Any] = {}
    else:
        quiet.unlink(missing_ok=True)
        result = run_pass(tenant, home, git.path)
    after = git.ref(evidence_ref)
    pushed = False
    if after is not None and after != before:
        lease = f"--force-with-lease={evidence_ref}:{before or ''}"
        git.run("push", "--quiet", lease, "--", tenant.repo, f"{after}:{evidence_ref}", what=f"push {name}")
        pushed = True
    indexed = index_evidence(conninfo, fleet.serviceRole, name, git, evidence_ref, after) if after else 0
    if not skipped and not left_open(result):
        _write_quiet(quiet, branch_heads(git))
    decided: dict[str, int] = {}
    for outcome in _outcomes(result):
        if outcome.get("evidence") and isinstance(outcome.get("decision"), str):
            decided[outcome["decision"]] = decided.get(outcome["decision"], 0) + 1
    summary = {
        "tenant": name,
        "trigger": trigger,
        "decisions": decided,
        "pending": [
            {"id": o.get("promotion"), "environment": o.get("environment"), "release": o.get("release")}
            for o in _outcomes(result)
            if o.get("decision") == "pending" and isinstance(o.get("promotion"), str)
        ],
        "evidenceCommit": after,
        "pushed": pushed,
        "indexed": indexed,
        "skipped": skipped,
    }
    log.info("tenant %s (%s): %s", name, trigger, summary)
    return summary


QUIET = "quiet.json"
"""In the tenant's directory: the branch heads at the end of a pass that left nothing open."""


def left_open(result: Mapping[str, Any]) -> bool:
    """Whether a pass's result leaves something that a later pass may decide without a new commit:
    a pending promotion (a soak or a freeze window ends, a scan arrives), a promotion it could not
    decide, a problem, something unavailable, a limit reached, a race, a policy change under way. Pure."""
    if any(o.get("decision") not in ("allow", "deny") or o.get("problem") for o in _outcomes(result)):
        return True
    return any(result.get(key) for key in ("problems", "transient", "limits", "races", "policyChange"))


def branch_heads(git: _Git) -> str:
    """The SHA-256 of every branch of the clone and its commit."""
    listing = git.run("for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/", what="for-each-ref")
    return hashlib.sha256(listing).hexdigest()


def _read_quiet(path: Path) -> str | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("heads")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _write_quiet(path: Path, heads: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"heads": heads}), encoding="utf-8")
    os.replace(tmp, path)


def sync_clone(tenant: Tenant, home: Path) -> _Git:
    """The tenant's bare clone in `home/repo.git`, with every branch as the remote has it now."""
    path = home / "repo.git"
    git = _Git(path)
    if not (path / "HEAD").exists():
        for stale in home.glob("repo.git.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)
        tmp = home / f"repo.git.tmp{os.getpid()}"
        _Git(tmp).run("clone", "--quiet", "--bare", "--", tenant.repo, str(tmp), what=f"clone {tenant.name}")
        tmp.rename(path)
        return git
    git.run(
        "fetch",
        "--quiet",
        "--prune",
        "--",
        tenant.repo,
        "+refs/heads/*:refs/heads/*",
        what=f"fetch {tenant.name}",
    )
    return git


def signing_key_path(tenant: Tenant, home: Path, environ: Mapping[str, str] | None = None) -> Path:
    """The file of the tenant's signing key: a `file:` reference's path, or an `env:` one's value written
    to `home/signing-key.pem` (0600)."""
    kind, _, where = tenant.signingKey.partition(":")
    if kind == "file":
        return Path(where)
    try:
        pem = resolve_ref(tenant.signingKey, os.environ if environ is None else environ, what="signing key")
    except StellaError as exc:
        raise JobFailed(f"tenant {tenant.name}: {exc}") from exc
    path = home / "signing-key.pem"
    tmp = home / "signing-key.pem.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(pem if pem.endswith("\n") else pem + "\n")
    os.replace(tmp, path)
    return path


def run_pass(tenant: Tenant, home: Path, clone: Path) -> dict[str, Any]:
    """`stella reconcile --once -o json` on the clone, in its own process with only what it needs."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "STELLA_SIGNING_KEY": str(signing_key_path(tenant, home)),
    }
    command = [
        sys.executable,
        "-m",
        "reconciler.cli",
        "reconcile",
        "--once",
        "--repo",
        str(clone),
        "-o",
        "json",
    ]
    try:
        done = subprocess.run(
            command, cwd=home, env=env, capture_output=True, timeout=PASS_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RetryLater(f"tenant {tenant.name}: the pass took more than {PASS_TIMEOUT:.0f} s") from exc
    reason = done.stderr.decode(errors="replace").strip()[-500:]
    if done.returncode == EXIT_TRANSIENT or done.returncode < 0:
        raise RetryLater(f"tenant {tenant.name}: the pass failed (exit {done.returncode}): {reason}")
    if done.returncode != 0:
        log.error("tenant %s: the pass refused its input (exit %s): %s", tenant.name, done.returncode, reason)
        raise JobFailed(f"tenant {tenant.name}: the pass failed (exit {done.returncode}): {reason}")
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except ValueError as exc:
        raise JobFailed(f"tenant {tenant.name}: the pass printed no JSON") from exc
    return result


# --- the evidence index -------------------------------------------------------------------------------


def evidence_rows(tenant: str, statements: Mapping[str, bytes]) -> list[tuple[Any, ...]]:
    """Rows of `stella_evidence` for statements by their hex id (bytes whose SHA-256 is not their id,
    or that are no JSON object, are skipped). Pure: the caller passes only statements that verified."""
    rows = []
    for hex_id, data in sorted(statements.items()):
        if hashlib.sha256(data).hexdigest() != hex_id:
            log.warning("tenant %s: evidence/%s.json does not hash to its name: not indexed", tenant, hex_id)
            continue
        try:
            statement = json.loads(data)
        except ValueError:
            continue
        predicate = statement.get("predicate") if isinstance(statement, dict) else None
        if not isinstance(predicate, dict):
            continue
        promotion, release, decision = (_obj(predicate.get(k)) for k in ("promotion", "release", "decision"))
        rows.append(
            (
                tenant,
                f"sha256:{hex_id}",
                _text(predicate.get("type")) or "unknown",
                _text(predicate.get("environment")),
                _text(promotion.get("id")),
                _text(release.get("name")),
                _text(release.get("id")),
                _text(decision.get("result")),
                _text(predicate.get("decidedAt")),
                data.decode("utf-8"),
            )
        )
    return rows


def _outcomes(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    decisions = result.get("decisions")
    return [o for o in decisions if isinstance(o, dict)] if isinstance(decisions, list) else []


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _statements(git: _Git, commit: str, wanted_ids: set[str]) -> dict[str, bytes]:
    """The statements `evidence/<hex>.json` of `commit` whose id is in `wanted_ids`, by hex id."""
    listing = git.run("ls-tree", "-r", "-z", commit, "--", "evidence/", what="ls-tree")
    wanted: dict[str, str] = {}
    for entry in listing.split(b"\0"):
        if not entry:
            continue
        meta, _, path = entry.decode(errors="replace").partition("\t")
        match = _EVIDENCE_FILE.match(path)
        if match and f"sha256:{match[1]}" in wanted_ids:
            wanted[meta.split()[2]] = match[1]
    if not wanted:
        return {}
    out = git.run(
        "cat-file", "--batch", stdin="".join(f"{oid}\n" for oid in wanted).encode(), what="cat-file"
    )
    found, at = {}, 0
    for oid, hex_id in wanted.items():
        end = out.index(b"\n", at)
        header = out[at:end].split()
        size = int(header[2]) if len(header) == 3 and header[0].decode() == oid else -1
        if size < 0:
            raise RetryLater(f"cat-file: unexpected answer for {oid}")
        found[hex_id] = out[end + 1 : end + 1 + size]
        at = end + 1 + size + 1
    return found


def verified_ids(git: _Git, ref: str, commit: str) -> set[str]:
    """The ids of the statements on `ref` at `commit` that verify under the policy they name: the
    reconciler's own evidence index of the clone (brought up to date, verifying what it has not seen).
    A statement that does not verify (unsigned, signed by a key its policy does not trust, under a
    policy never ratified) is left out and logged: the fleet's index believes what a pass would."""
    from ..indexing import open_index
    from ..repo import Repo

    try:
        index = open_index(Repo(git.path), ref, commit)
    except (StellaError, sqlite3.Error) as exc:
        raise RetryLater(f"the evidence index of {ref}: {exc}") from exc
    try:
        for path, code, message in index.rejected():
            log.warning("not indexed: %s (%s): %s", path, code, message)
        return index.evidence_ids()
    finally:
        index.close()


def index_evidence(conninfo: str, role: str, tenant: str, git: _Git, ref: str, commit: str) -> int:
    """Insert the statements of `commit`'s evidence that verify and are not indexed yet, as the service
    role with the tenant set; returns how many rows were added."""
    import psycopg

    verified = verified_ids(git, ref, commit)
    try:
        with psycopg.connect(conninfo, connect_timeout=10) as conn, conn.transaction(), conn.cursor() as cur:
            _as_tenant(cur, role, tenant)
            cur.execute("SELECT id FROM stella_evidence")
            known = {str(row[0]) for row in cur.fetchall()}
            rows = evidence_rows(tenant, _statements(git, commit, verified - known))
            cur.executemany(
                "INSERT INTO stella_evidence (tenant, id, type, environment, promotion, release_name,"
                " release_id, result, decided_at, statement)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING",
                rows,
            )
            return len(rows)
    except psycopg.OperationalError as exc:
        raise RetryLater(f"tenant {tenant}: the evidence index: {exc}") from exc
    except psycopg.Error as exc:
        raise JobFailed(f"tenant {tenant}: the evidence index refused: {exc}") from exc


def _as_tenant(cur: Any, role: str, tenant: str) -> None:
    from psycopg import sql

    cur.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
    cur.execute("SELECT set_config('stella.tenant', %s, true)", (tenant,))


# --- what a pass leaves for the API and the metrics ---------------------------------------------------

PASS_BUCKETS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Upper bounds (seconds) of the pass duration histogram's buckets (and `+Inf`)."""
INF = "+Inf"


def pass_counters(
    outcome: str, seconds: float, summary: Mapping[str, Any] | None
) -> list[tuple[str, str, float]]:
    """The (metric, label, increment) rows one job adds to `stella_counters`. Pure."""
    rows: list[tuple[str, str, float]] = [("passes", outcome, 1.0), ("pass_seconds_sum", "", seconds)]
    rows += [("pass_seconds_bucket", _le(bound), 1.0) for bound in PASS_BUCKETS if seconds <= bound]
    rows.append(("pass_seconds_bucket", INF, 1.0))
    decided = summary.get("decisions") if summary else None
    if isinstance(decided, dict):
        rows += [("decisions", str(result), float(n)) for result, n in sorted(decided.items()) if n]
    return rows


def _le(bound: float) -> str:
    return repr(float(bound))


def record_pass(
    conninfo: str, role: str, tenant: str, outcome: str, seconds: float, summary: Mapping[str, Any] | None
) -> None:
    """Add the job to the fleet's counters and, after a pass that ran (`summary`), replace the tenant's
    pending promotions: one transaction as the service role with the tenant set. Best effort: a
    database that fails here is logged (the job's own outcome stands)."""
    import psycopg

    try:
        with psycopg.connect(conninfo, connect_timeout=10) as conn, conn.transaction(), conn.cursor() as cur:
            _as_tenant(cur, role, tenant)
            cur.executemany(
                "INSERT INTO stella_counters (tenant, metric, label, value) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (tenant, metric, label)"
                " DO UPDATE SET value = stella_counters.value + EXCLUDED.value",
                [(tenant, *row) for row in pass_counters(outcome, seconds, summary)],
            )
            if summary is not None:
                cur.execute("DELETE FROM stella_pending")
                cur.executemany(
                    "INSERT INTO stella_pending (tenant, promotion, environment, release_name)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [(tenant, p["id"], p["environment"], p["release"]) for p in summary.get("pending", [])],
                )
    except psycopg.Error as exc:
        log.warning("tenant %s: the pass was not counted (%s)", tenant, type(exc).__name__)


# --- the worker ---------------------------------------------------------------------------------------


def run_worker(fleet: Fleet, conninfo: str, concurrency: int) -> None:
    """Run jobs until SIGTERM or SIGINT (the jobs running then finish first), then return.

    procrastinate's worker stops by itself when the database goes away: at once when a restart ends its
    LISTEN connection, after its pool's `DB_WAIT` when the database stays down. It is then started
    again, with a new pool, after 1 s, doubling up to 30 s while it keeps stopping (1 s again after a
    run of a minute). A job it had not finished is taken back by `stella.retry_stalled` once its
    heartbeat is old. A signal stops it at any time, also while it waits to start again. `Transient`
    when the database cannot be reached at start (after procrastinate's pool waited 30 s)."""
    import asyncio
    import signal

    from ..errors import Transient

    first_wait, last_wait, steady = 1.0, 30.0, 60.0
    opened = False

    async def run_once() -> None:
        nonlocal opened
        app = make_app(conninfo, fleet)
        try:
            await app.open_async()
            opened = True
            await app.run_worker_async(
                concurrency=concurrency,
                update_heartbeat_interval=HEARTBEAT,
                stalled_worker_timeout=STALLED_AFTER,
                fetch_job_polling_interval=POLLING,
                install_signal_handlers=False,
            )
        finally:
            try:
                await app.close_async()
            except Exception as exc:  # the pool of a database that is gone: nothing to give back
                log.debug("closing the worker's pool: %s", type(exc).__name__)

    def reason(error: BaseException | None) -> str:
        if error is None:  # a side task (LISTEN, heartbeat) failed: procrastinate logged it
            return "see the error above"
        cause = error.__cause__ or error
        return f"{type(cause).__name__}: {' '.join(str(cause).split())}"[:300]

    async def supervise() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        wait = first_wait
        while True:
            started = loop.time()
            run = asyncio.create_task(run_once(), name="procrastinate worker")
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait((run, stopping), return_when=asyncio.FIRST_COMPLETED)
            if not run.done():
                run.cancel()  # procrastinate's worker takes it as a stop: its running jobs finish first
                await asyncio.wait((run,))
            stopping.cancel()
            error = None if run.cancelled() else run.exception()
            if stop.is_set():
                if error is not None:
                    log.warning("the worker stopped with an error: %s", reason(error))
                return
            if not opened:
                raise Transient(f"the worker cannot reach the fleet database: {reason(error)}")
            if loop.time() - started >= steady:
                wait = first_wait
            log.error("the worker stopped on its own (%s): starting it again in %.0f s", reason(error), wait)
            try:
                await asyncio.wait_for(stop.wait(), wait)
                return
            except TimeoutError:
                wait = min(2 * wait, last_wait)

    asyncio.run(supervise())
