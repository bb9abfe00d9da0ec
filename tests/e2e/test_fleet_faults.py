"""The fleet under faults (DESIGN §10), with real processes: a real PostgreSQL, real `git daemon`s, and
`stella worker` / `stella serve` as subprocesses. Each worker runs in a session of its own, so that a
kill of its process group takes its passes and git commands along, as a machine that dies would.

- A worker killed with SIGKILL (its whole process group) while its pass runs: the job stays `doing`
  until the stalled-job recovery (`stella.retry_stalled`) of another worker takes it back; it then
  succeeds, and the tenant's evidence branch and the evidence index hold one decision for the
  promotion; `stella audit verify` passes on a clone of the tenant's repository.
- PostgreSQL (a cluster of the test's own) restarted (`pg_ctl -m fast restart`) while signed webhooks
  keep coming, then stopped as a crash would and left down for a while (`OUTAGE`); a webhook answered
  503, or not answered in time, is delivered again, as GitHub does. Either fault stops procrastinate's
  worker in every `stella worker` (its LISTEN connection fails), which starts it again. The worker
  processes and the server stay up, `/healthz` is 200 again, every promotion committed before a
  webhook answered 202 is decided exactly once, and every tenant has a pass that started after its
  last accepted webhook.
- One tenant's Git server down: the other tenants decide at their first attempt; the down tenant's job
  is retried with growing waits and is not failed; once its server is back on the same port, it
  decides.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from reconciler.fleet.jobs import defer_reconcile, make_app
from tests.e2e.test_fleet_end_to_end import EVIDENCE_REF, PROMOTION, running_server, write_fleet
from tests.e2e.test_fleet_worker import decisions, evidence_ids
from tests.support.cli import STELLA, stella
from tests.support.gitdaemon import restart_git_daemon, start_git_daemon
from tests.support.pipeline import RELEASE_130, Workspace, example_workspace, promotion
from tests.support.postgres import ScratchDatabase, start_postgres
from tests.support.registry import ToolMissing
from tests.support.repos import commit_all, write_files

DEADLINE = 90.0
"""Seconds to wait for any one outcome (generous: the machine is small and shared)."""
OUTAGE = float(os.environ.get("STELLA_TEST_PG_OUTAGE", "12"))
"""Seconds PostgreSQL stays down in the outage phase: long enough for a webhook to go unanswered and
for procrastinate's worker to stop (its LISTEN connection fails at once). `STELLA_TEST_PG_OUTAGE=35`
goes past procrastinate's 30 s pool wait too, at the cost of about 45 s more (psycopg_pool retries a
lost connection with a doubling delay, so the server's pools come back up to 30 s after the database)."""
RESTARTED = "starting it again"
"""What a worker logs when procrastinate's worker stopped on its own and is started again."""
SECRETS = {"shop": "shop-secret-1", "blog": "blog-secret-2", "wiki": "wiki-secret-3"}
HOOK_TIMEOUT = 10.0
"""Seconds a webhook delivery waits for its answer (GitHub's own limit)."""


@dataclass
class Processes:
    """The test's `stella worker`s (each in a session of its own) and the logs of every process."""

    config: Path
    env: dict[str, str]
    directory: Path
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    watched: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def worker(self, name: str) -> subprocess.Popen[bytes]:
        log = self.directory / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [STELLA, "worker", "-v", "--config", str(self.config), "--concurrency", "2"],
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.workers[name] = self.watched[name] = process
        self.logs[name] = log
        return process

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def tails(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.log(name)[-4000:]}" for name in self.logs)

    def stop(self, name: str) -> int:
        """SIGTERM to a worker; its exit code."""
        process = self.workers[name]
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} did not stop within 60 s of SIGTERM:\n{self.tails()}", pytrace=False)

    def kill_all(self) -> None:
        """Kill every worker still running with its process group (its passes too)."""
        for process in self.workers.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)

    def check_alive(self, what: str, names: Sequence[str]) -> None:
        for name in names:
            code = self.watched[name].poll()
            if code is not None:
                pytest.fail(f"{name} exited ({code}) while {what}:\n{self.tails()}", pytrace=False)

    def eventually(
        self,
        what: str,
        done: Callable[[], bool],
        alive: Sequence[str] = (),
        state: Callable[[], object] = lambda: "",
        deadline: float = DEADLINE,
    ) -> None:
        """Wait until `done()`, failing with the logs when one of `alive` exits or at the deadline."""
        end = time.monotonic() + deadline
        while not done():
            self.check_alive(f"waiting for {what}", alive)
            if time.monotonic() > end:
                pytest.fail(
                    f"timed out after {deadline:.0f} s waiting for {what} ({state()}):\n{self.tails()}",
                    pytrace=False,
                )
            time.sleep(0.1)

    def hold(self, seconds: float, alive: Sequence[str]) -> None:
        """Let `seconds` pass (a fault's duration), checking that `alive` keep running."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.check_alive(f"the fault lasted ({seconds:.0f} s)", alive)
            time.sleep(0.2)


def migrate(config: Path, env: dict[str, str]) -> None:
    done = stella("fleet", "migrate", "--config", config, env=env)
    assert done.code == 0, done.err


def reconcile_jobs(db: ScratchDatabase, tenant: str) -> list[tuple[int, str, int]]:
    """(id, status, attempts) of every reconcile job of `tenant`, oldest first."""
    with psycopg.connect(db.url) as conn:
        rows = conn.execute(
            "SELECT id, status, attempts FROM procrastinate_jobs WHERE task_name = 'stella.reconcile'"
            " AND args->>'tenant' = %s ORDER BY id",
            (tenant,),
        ).fetchall()
    return [(int(id_), str(status), int(attempts)) for id_, status, attempts in rows]


def starts(db: ScratchDatabase, job: int) -> list[float]:
    """When each attempt of `job` started (epoch seconds), in order."""
    with psycopg.connect(db.url) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM at) FROM procrastinate_events WHERE job_id = %s AND type = 'started'"
            " ORDER BY at",
            (job,),
        ).fetchall()
    return [float(at) for (at,) in rows]


def decided(ws: Workspace) -> dict[str, list[str]]:
    """The results recorded on the evidence branch for each promotion (one item per decision record)."""
    if not ws.git("for-each-ref", EVIDENCE_REF):
        return {}
    out: dict[str, list[str]] = {}
    for path in decisions(ws):
        predicate = json.loads(ws.show(path))["predicate"]
        out.setdefault(predicate["promotion"]["id"], []).append(predicate["decision"]["result"])
    return out


def index(db: ScratchDatabase) -> list[tuple[str, str, str, str | None]]:
    """(tenant, id, type, promotion) of every row of the evidence index (read as the superuser)."""
    with psycopg.connect(db.url) as conn:
        rows = conn.execute(
            "SELECT tenant, id, type, promotion FROM stella_evidence ORDER BY 1, 2"
        ).fetchall()
    return [(str(t), str(i), str(ty), p) for t, i, ty, p in rows]


def assert_index_matches(db: ScratchDatabase, workspaces: dict[str, Workspace]) -> None:
    """The index holds every statement of each tenant's branch once, and one decision per promotion."""
    rows = index(db)
    by_tenant: dict[str, list[str]] = {}
    for tenant, id_, _, _ in rows:
        by_tenant.setdefault(tenant, []).append(id_)
    assert {t: sorted(ids) for t, ids in by_tenant.items()} == {
        name: sorted(evidence_ids(ws)) for name, ws in workspaces.items()
    }
    promotions = Counter((t, p) for t, _, ty, p in rows if ty == "release_decision")
    assert promotions == {(name, p): 1 for name, ws in workspaces.items() for p in decided(ws)}


def verify_clone(url: str, clone: Path) -> None:
    subprocess.run(["git", "clone", "--quiet", "--bare", url, str(clone)], check=True, capture_output=True)
    verified = stella("audit", "verify", "-o", "json", "--repo", clone)
    assert verified.code == 0 and verified.json()["ok"] is True, (verified.out, verified.err)


def add_promotion(ws: Workspace, release: str) -> str:
    """Commit a release (the images of 1.3.0 under another name) and its promotion to dev; its id."""
    write_files(
        ws.root,
        {
            f"releases/{release}.yaml": RELEASE_130.replace("shop-1.3.0", release),
            f"promotions/{release}--dev.yaml": promotion(release, "dev"),
        },
    )
    commit_all(ws.root, f"promote {release} to dev")
    return f"{release}--dev"


def pass_of(worker: subprocess.Popen[bytes], deadline: float = DEADLINE) -> int:
    """The PID of the pass (`python -m reconciler.cli reconcile --once`) `worker` runs: its child in
    /proc, looked for every 10 ms (a pass lasts about a second)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end and worker.poll() is None:
        with os.scandir("/proc") as entries:
            pids = [int(e.name) for e in entries if e.name.isdigit()]
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == worker.pid and b"reconciler.cli" in cmdline and b"--once" in cmdline:
                return pid
        time.sleep(0.01)
    raise AssertionError(f"no pass of worker {worker.pid} was seen (exit {worker.poll()})")


def gone(pid: int) -> bool:
    """Whether process `pid` has ended (no longer in /proc, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_a_worker_killed_mid_pass_is_taken_over_and_decides_once(
    tmp_path: Path, pg_database: ScratchDatabase
) -> None:
    shop = example_workspace(tmp_path / "shop")
    with ExitStack() as stack:
        daemon = start_git_daemon(tmp_path)
        stack.callback(daemon.stop)
        config = write_fleet(
            tmp_path, pg_database.role, {"shop": daemon.url("shop/repo")}, {"shop": shop.key}
        )
        env = {"STELLA_DATABASE_URL": pg_database.url}
        migrate(config, env)
        procs = Processes(config, env, tmp_path)
        stack.callback(procs.kill_all)

        first = procs.worker("first")
        with make_app(pg_database.url).open() as app:
            assert defer_reconcile(app, "shop", "manual") is True
        [(job, _, _)] = reconcile_jobs(pg_database, "shop")
        pid = pass_of(first)
        os.killpg(first.pid, signal.SIGKILL)  # the machine dies: the worker, its pass, its git commands
        assert first.wait(timeout=30) == -signal.SIGKILL
        procs.eventually("the killed pass to end", lambda: gone(pid))
        # nobody runs the job now, and its lock holds the tenant
        assert [status for _, status, _ in reconcile_jobs(pg_database, "shop")] == ["doing"]

        procs.worker("second")
        procs.eventually(
            "the killed worker's job to be taken back and to succeed",
            lambda: [s for _, s, _ in reconcile_jobs(pg_database, "shop")] == ["succeeded"],
            alive=["second"],
            state=lambda: reconcile_jobs(pg_database, "shop"),
        )
        assert [j for j, _, _ in reconcile_jobs(pg_database, "shop")] == [job]  # the same job, retried
        assert len(starts(pg_database, job)) == 2
        taken = [line for line in procs.log("second").splitlines() if "lost its worker" in line]
        assert [f"job {job} " in line for line in taken] == [True], taken  # by stella.retry_stalled
        assert procs.stop("second") == 0, procs.tails()

        assert decided(shop) == {PROMOTION: ["allow"]}  # one record, not one per attempt
        assert_index_matches(pg_database, {"shop": shop})
        verify_clone(daemon.url("shop/repo"), tmp_path / "clone.git")


@dataclass
class Deliveries:
    """Signed webhooks for every tenant in turn, on a thread, until `stop()`. One that is not answered
    202 (503, no answer in time, a refused connection) is delivered again, as GitHub redelivers."""

    url: str
    secrets: dict[str, str]
    accepted: list[tuple[str, float]] = field(default_factory=list)
    """(tenant, when it was sent) of every delivery answered 202."""
    refused: Counter[str] = field(default_factory=Counter)
    """Deliveries not answered 202, by status code or exception."""
    pause: float = 0.25
    _halt: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=HOOK_TIMEOUT + 10)
            assert not self._thread.is_alive(), "the webhook thread did not stop"
        if self._error is not None:
            raise self._error

    def last(self, tenant: str) -> float:
        return max(sent for name, sent in self.accepted if name == tenant)

    def _run(self) -> None:
        body = json.dumps({"ref": "refs/heads/main"}).encode()
        try:
            with httpx.Client(base_url=self.url, timeout=HOOK_TIMEOUT) as http:
                while not self._halt.is_set():
                    for tenant, secret in self.secrets.items():
                        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
                        headers = {
                            "X-Hub-Signature-256": f"sha256={digest}",
                            "Content-Type": "application/json",
                        }
                        self._deliver(http, tenant, body, headers)
        except BaseException as exc:  # reported by stop()
            self._error = exc

    def _deliver(self, http: httpx.Client, tenant: str, body: bytes, headers: dict[str, str]) -> None:
        while not self._halt.is_set():
            sent = time.time()
            try:
                answer: int | str = http.post(f"/hooks/{tenant}", content=body, headers=headers).status_code
            except httpx.TransportError as exc:
                answer = type(exc).__name__
            if answer == 202:
                self.accepted.append((tenant, sent))
                self._halt.wait(self.pause)
                return
            self.refused[str(answer)] += 1
            self._halt.wait(self.pause)


def last_pass_started(db: ScratchDatabase, tenant: str) -> float:
    """When the newest succeeded reconcile job of `tenant` last started (epoch seconds; 0: none)."""
    with psycopg.connect(db.url) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(e.at)) FROM procrastinate_events e"
            " JOIN procrastinate_jobs j ON j.id = e.job_id WHERE j.task_name = 'stella.reconcile'"
            " AND j.args->>'tenant' = %s AND j.status = 'succeeded' AND e.type = 'started'",
            (tenant,),
        ).fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


def unfinished(db: ScratchDatabase) -> list[tuple[str, str]]:
    """(tenant, status) of the reconcile jobs queued or running."""
    with psycopg.connect(db.url) as conn:
        rows = conn.execute(
            "SELECT args->>'tenant', status FROM procrastinate_jobs WHERE task_name = 'stella.reconcile'"
            " AND status IN ('todo', 'doing') ORDER BY id"
        ).fetchall()
    return [(str(t), str(s)) for t, s in rows]


def healthz(url: str) -> int:
    try:
        return httpx.get(f"{url}/healthz", timeout=HOOK_TIMEOUT).status_code
    except httpx.TransportError:
        return 0


def test_postgres_restarted_and_down_under_webhooks_loses_no_trigger(tmp_path: Path) -> None:
    try:
        pg = start_postgres()  # a cluster of this test's own: the session's one is not restarted
    except ToolMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    workspaces = {name: example_workspace(tmp_path / name) for name in SECRETS}
    with ExitStack() as stack:
        stack.callback(pg.stop)
        db = pg.new_database()
        daemon = start_git_daemon(tmp_path)
        stack.callback(daemon.stop)
        config = write_fleet(
            tmp_path,
            db.role,
            {name: daemon.url(f"{name}/repo") for name in workspaces},
            {name: ws.key for name, ws in workspaces.items()},
        )
        env = {
            "STELLA_DATABASE_URL": db.url,
            **{f"{name.upper()}_WEBHOOK_SECRET": secret for name, secret in SECRETS.items()},
        }
        migrate(config, env)
        procs = Processes(config, env, tmp_path)
        stack.callback(procs.kill_all)
        server = stack.enter_context(running_server(config, env, db, {}, tmp_path / "serve.log"))
        procs.watched["serve"] = server.process
        procs.logs["serve"] = tmp_path / "serve.log"
        assert pg.root is not None
        procs.logs["postgres"] = pg.root / "sock" / "postgres.log"
        workers = ["worker-1", "worker-2"]
        for name in workers:
            procs.worker(name)
        alive = [*workers, "serve"]
        hooks = Deliveries(server.url, SECRETS)
        hooks.start()
        stack.callback(hooks.stop)

        def everywhere(promotion_id: str) -> Callable[[], bool]:
            return lambda: all(promotion_id in decided(ws) for ws in workspaces.values())

        def state() -> object:
            return {"decided": {n: decided(ws) for n, ws in workspaces.items()}, "refused": hooks.refused}

        procs.eventually(f"every tenant to decide {PROMOTION}", everywhere(PROMOTION), alive, state)

        # a fast restart right after a new promotion in every tenant, webhooks coming all along
        [second] = {add_promotion(ws, "shop-1.3.0") for ws in workspaces.values()}
        pg.restart()
        procs.eventually(f"every tenant to decide {second} after a restart", everywhere(second), alive, state)

        # down (as a crash would) for a while, with a new promotion meanwhile
        pg.halt()
        down = time.monotonic()
        [third] = {add_promotion(ws, "shop-1.3.1") for ws in workspaces.values()}
        assert healthz(server.url) == 503
        procs.hold(OUTAGE - (time.monotonic() - down), alive)
        pg.start()
        procs.eventually("/healthz to answer 200 again", lambda: healthz(server.url) == 200, alive, state)
        procs.eventually(f"every tenant to decide {third} after the outage", everywhere(third), alive, state)

        hooks.stop()
        last = {name: hooks.last(name) for name in workspaces}
        procs.eventually(
            "a pass of every tenant that started after its last accepted webhook, and nothing queued",
            lambda: not unfinished(db) and all(last_pass_started(db, n) >= last[n] for n in workspaces),
            alive,
            lambda: {
                "unfinished": unfinished(db),
                "last": last,
                **{n: last_pass_started(db, n) for n in last},
            },
        )
        for name in workers:  # procrastinate's worker stopped with the database, and was started again
            procs.eventually(
                f"{name} to start procrastinate's worker again",
                lambda name=name: RESTARTED in procs.log(name),
            )
            assert procs.stop(name) == 0, procs.tails()
        assert server.stop() == 0, procs.tails()

        assert hooks.refused, "no webhook was refused while PostgreSQL was down"
        for name, ws in workspaces.items():
            assert decided(ws) == {PROMOTION: ["allow"], second: ["allow"], third: ["allow"]}, name
        assert_index_matches(db, workspaces)


def test_a_tenant_whose_git_server_is_down_is_retried_and_holds_up_no_other(
    tmp_path: Path, pg_database: ScratchDatabase
) -> None:
    workspaces = {name: example_workspace(tmp_path / name) for name in ("shop", "blog", "wiki")}
    with ExitStack() as stack:
        shared = start_git_daemon(tmp_path)  # shop's and blog's server
        stack.callback(shared.stop)
        own = start_git_daemon(tmp_path / "wiki")  # wiki's own server, stopped before the worker starts
        own.stop()
        repos = {name: shared.url(f"{name}/repo") for name in ("shop", "blog")}
        config = write_fleet(
            tmp_path,
            pg_database.role,
            {**repos, "wiki": own.url("repo")},
            {name: ws.key for name, ws in workspaces.items()},
        )
        env = {"STELLA_DATABASE_URL": pg_database.url}
        migrate(config, env)
        procs = Processes(config, env, tmp_path)
        stack.callback(procs.kill_all)
        procs.worker("worker")

        def jobs() -> dict[str, list[tuple[int, str, int]]]:
            return {name: reconcile_jobs(pg_database, name) for name in workspaces}

        # wiki first: its job fails and waits for its retry; then shop and blog are triggered
        with make_app(pg_database.url).open() as app:
            assert defer_reconcile(app, "wiki", "manual") is True
        procs.eventually(
            "wiki's first attempt to fail",
            lambda: reconcile_jobs(pg_database, "wiki")[0][2] >= 1,
            ["worker"],
            jobs,
        )
        with make_app(pg_database.url).open() as app:
            for name in ("shop", "blog"):
                assert defer_reconcile(app, name, "manual") is True

        procs.eventually(
            "shop and blog to decide while wiki's Git server is down, and wiki's job to be retried",
            lambda: (
                [s for _, s, _ in reconcile_jobs(pg_database, "shop")] == ["succeeded"]
                and [s for _, s, _ in reconcile_jobs(pg_database, "blog")] == ["succeeded"]
                and reconcile_jobs(pg_database, "wiki")[0][2] >= 2
            ),
            ["worker"],
            jobs,
        )
        # shop and blog at their first attempt; wiki waiting for its next one, not failed
        now = jobs()
        assert (
            [(s, a) for _, s, a in now["shop"]] == [(s, a) for _, s, a in now["blog"]] == [("succeeded", 1)]
        )
        [(wiki_job, wiki_status, _)] = now["wiki"]
        assert wiki_status in ("todo", "doing"), now
        assert not workspaces["wiki"].git("for-each-ref", EVIDENCE_REF)

        revived = restart_git_daemon(tmp_path / "wiki", own.port)  # the same server again, on the same port
        stack.callback(revived.stop)
        procs.eventually(
            "wiki to decide once its Git server is back",
            lambda: [s for _, s, _ in reconcile_jobs(pg_database, "wiki")] == ["succeeded"],
            ["worker"],
            jobs,
        )
        [(job, _, attempts)] = reconcile_jobs(pg_database, "wiki")
        assert job == wiki_job and attempts >= 3
        started = starts(pg_database, job)
        waits = [b - a for a, b in itertools.pairwise(started)]
        assert len(waits) == attempts - 1 and all(w >= 2.0 ** (i + 1) - 0.5 for i, w in enumerate(waits)), (
            waits
        )
        assert "WARNING reconciler.fleet.jobs: tenant wiki: clone wiki: " in procs.log("worker")
        assert procs.stop("worker") == 0, procs.tails()

        for name, ws in workspaces.items():
            assert decided(ws) == {PROMOTION: ["allow"]}, name
        assert_index_matches(pg_database, workspaces)


class SlowFailingGitServer:
    """A TCP server on loopback that accepts every connection and closes it after `hold` seconds
    without a word: a Git server that takes a job's time and then fails it."""

    def __init__(self, hold: float) -> None:
        import socket

        self.hold = hold
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Timer(self.hold, conn.close).start()

    def close(self) -> None:
        self.listener.close()


def test_a_failed_attempt_with_a_trigger_queued_yields_to_it_instead_of_holding_the_tenant(
    tmp_path: Path, pg_database: ScratchDatabase
) -> None:
    """A job that fails for a retry while a trigger of its tenant is queued cannot go back in the queue
    (one queued job per tenant): it ends `failed`, and the queued trigger runs; the tenant is not held."""
    ws = example_workspace(tmp_path / "shop")
    server = SlowFailingGitServer(hold=3.0)
    with ExitStack() as stack:
        stack.callback(server.close)
        config = write_fleet(
            tmp_path, pg_database.role, {"shop": f"git://127.0.0.1:{server.port}/shop.git"}, {"shop": ws.key}
        )
        env = {"STELLA_DATABASE_URL": pg_database.url}
        migrate(config, env)
        procs = Processes(config, env, tmp_path)
        stack.callback(procs.kill_all)
        procs.worker("worker")

        with make_app(pg_database.url).open() as app:
            assert defer_reconcile(app, "shop", "manual") is True
            procs.eventually(
                "the first attempt to reach the Git server",
                lambda: server.accepted >= 1 and reconcile_jobs(pg_database, "shop")[0][1] == "doing",
                ["worker"],
                lambda: reconcile_jobs(pg_database, "shop"),
            )
            assert defer_reconcile(app, "shop", "webhook") is True  # queued behind the running one
        procs.eventually(
            "the first job to yield to the queued trigger, and that trigger to run",
            lambda: (
                [(s, a) for _, s, a in reconcile_jobs(pg_database, "shop")][:1] == [("failed", 1)]
                and reconcile_jobs(pg_database, "shop")[1][2] >= 1
            ),
            ["worker"],
            lambda: reconcile_jobs(pg_database, "shop"),
            deadline=30.0,
        )
        assert "is not retried: a trigger of its tenant is queued" in procs.log("worker")
        assert procs.stop("worker") == 0, procs.tails()
