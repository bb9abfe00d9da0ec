"""`stella serve`: the fleet's HTTP face (DESIGN §10): webhooks, the read API, `/healthz` and `/metrics`.

`build_app(fleet, database_url, enqueue)` is a Starlette (ASGI) app; `serve()` runs it under uvicorn
until SIGTERM or SIGINT. The app enqueues and reads; it never reconciles (that is the worker's job).

- `POST /hooks/<tenant>`: the body is read up to `MAX_BODY` bytes (a larger `Content-Length`, or a
  stream that goes past it, is 413); GitHub's `X-Hub-Signature-256: sha256=<hex>`, the HMAC-SHA256 of
  the raw body under the tenant's `webhookSecret`, compared in constant time. A missing or wrong
  signature is 401, and so is a tenant fleet.yaml does not list (its answer is that of a bad signature,
  so that the endpoint does not tell which tenants exist). A good one calls `enqueue(tenant, "webhook")`
  and answers 202 `{"queued": true}`, or `{"queued": false}` when it collapsed into a job already queued.
- `GET /api/v1/tenants/<tenant>/{promotions,environments,targets,evidence/<id>}`: a bearer token whose
  SHA-256 `stella_tokens` has for that tenant. No token or an unknown one is 401; a token of another
  tenant is 404, the answer for a tenant that does not exist. Every query runs in one transaction as
  the service role (`SET LOCAL ROLE`) with `stella.tenant` set, so that row-level security, not this
  code, keeps the tenants apart.
- `GET /healthz`: 200 `{"ok": true}` when the database answers, else 503 `{"ok": false}`.
- `GET /metrics`: Prometheus text from the app's own registry (webhooks accepted and rejected, triggers
  queued and collapsed); read at scrape, the queue depth and the workers' counters (passes by outcome,
  decisions by result, the pass duration histogram, which every worker adds to in `stella_counters`),
  so that any server shows the whole fleet's figures.

Secrets (webhook secrets, tokens) are never logged; the secrets are resolved once, when the app is built
(`InvalidInput` naming the reference when one does not resolve).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..timefmt import evidence_time
from .config import Fleet, resolve_ref
from .tokens import token_hash

if TYPE_CHECKING:
    import procrastinate
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

Enqueue = Callable[[str, str], Awaitable[bool]]
"""`enqueue(tenant, trigger)`: queue a reconcile of `tenant`; False when it collapsed into a queued job."""
Opener = Callable[[], AbstractAsyncContextManager[Any]]
"""Something the app opens when it starts and closes when it stops (procrastinate's app, a pool)."""

MAX_BODY = 1 << 20
"""The largest webhook body accepted (GitHub caps its payloads at 25 MB; pushes are a few KB)."""
MAX_TOKEN = 512
MAX_ID = 256
TASK = "stella.reconcile"
WEBHOOK = "webhook"
SIGNATURE_HEADER = "x-hub-signature-256"
DB_TIMEOUT = 5.0
"""Seconds to wait for a pooled connection before answering 503."""
UNKNOWN = "-"
"""The `tenant` label of a rejected webhook for a tenant fleet.yaml does not list (the path is the
caller's, so it is never used as a label)."""


def tenant_lock(tenant: str) -> str:
    """The `lock` and `queueing_lock` of a tenant's reconcile jobs (one running, one queued)."""
    return f"tenant:{tenant}"


def as_role(url: str, role: str) -> str:
    """`url` whose sessions start as `role` (`-c role=…` added to its `options`)."""
    options = str(conninfo_to_dict(url).get("options") or "")
    return make_conninfo(url, options=f"{options} -c role={role}".strip())


def procrastinate_app(url: str, role: str) -> procrastinate.App:
    """A procrastinate app on the fleet's database, acting as the service role. Its pool waits at most
    `DB_TIMEOUT` for a connection, so that a webhook during a database outage is answered 503 before
    its sender gives up (GitHub waits 10 s)."""
    from procrastinate import App, PsycopgConnector

    return App(connector=PsycopgConnector(conninfo=as_role(url, role), timeout=DB_TIMEOUT))


def procrastinate_enqueue(app: procrastinate.App) -> Enqueue:
    """`Enqueue` through procrastinate: a `stella.reconcile` job with the tenant's lock and queueing lock;
    `AlreadyEnqueued` (a job of the tenant is queued already) is a collapsed trigger, False."""
    from procrastinate.exceptions import AlreadyEnqueued

    async def enqueue(tenant: str, trigger: str) -> bool:
        lock = tenant_lock(tenant)
        task = app.configure_task(name=TASK, lock=lock, queueing_lock=lock)
        try:
            await task.defer_async(tenant=tenant, trigger=trigger)
        except AlreadyEnqueued:
            return False
        return True

    return enqueue


class WorkerCounters(Collector):
    """The workers' counters (`stella_counters`, which every worker adds to after each job), as read at
    the last scrape: `stella_passes_total{tenant,outcome}` (ok, transient, failed),
    `stella_decisions_total{tenant,result}` and the histogram `stella_pass_duration_seconds{tenant}`."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, float]] = []

    def collect(self) -> Iterator[Metric]:
        passes = CounterMetricFamily(
            "stella_passes", "Reconcile jobs run by the workers, by outcome", labels=["tenant", "outcome"]
        )
        decisions = CounterMetricFamily(
            "stella_decisions", "Decisions recorded by the workers' passes", labels=["tenant", "result"]
        )
        duration = HistogramMetricFamily(
            "stella_pass_duration_seconds",
            "Duration of a reconcile job (fetch, pass, push, index)",
            labels=["tenant"],
        )
        buckets: dict[str, dict[str, float]] = {}
        sums: dict[str, float] = {}
        for tenant, metric, label, value in sorted(self.rows):
            if metric == "passes":
                passes.add_metric([tenant, label], value)
            elif metric == "decisions":
                decisions.add_metric([tenant, label], value)
            elif metric == "pass_seconds_bucket":
                buckets.setdefault(tenant, {})[label] = value
            elif metric == "pass_seconds_sum":
                sums[tenant] = value
        for tenant, counts in sorted(buckets.items()):
            ordered = sorted(counts.items(), key=lambda item: float(item[0]))
            duration.add_metric([tenant], buckets=ordered, sum_value=sums.get(tenant, 0.0))
        yield from (passes, decisions, duration)


@dataclass(frozen=True)
class Metrics:
    """The server's metrics, in a registry of their own."""

    registry: CollectorRegistry
    accepted: Counter
    rejected: Counter
    enqueued: Counter
    collapsed: Counter
    queue_depth: Gauge
    workers: WorkerCounters

    @classmethod
    def make(cls) -> Metrics:
        registry = CollectorRegistry(auto_describe=True)
        workers = WorkerCounters()
        registry.register(workers)
        return cls(
            registry=registry,
            accepted=Counter(
                "stella_webhook_accepted", "Webhooks with a good signature", ["tenant"], registry=registry
            ),
            rejected=Counter(
                "stella_webhook_rejected",
                "Webhooks refused (reason: signature, too_large, unavailable)",
                ["tenant", "reason"],
                registry=registry,
            ),
            enqueued=Counter(
                "stella_triggers_enqueued", "Reconcile jobs queued", ["tenant", "trigger"], registry=registry
            ),
            collapsed=Counter(
                "stella_triggers_collapsed",
                "Triggers that collapsed into a reconcile job already queued",
                ["tenant", "trigger"],
                registry=registry,
            ),
            queue_depth=Gauge(
                "stella_queue_depth",
                "Reconcile jobs waiting to run (status todo), read at scrape",
                ["tenant"],
                registry=registry,
            ),
            workers=workers,
        )


class _TooLarge(Exception):
    pass


class _Unavailable(Exception):
    pass


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="stella"'}


def _signature_ok(secret: bytes, body: bytes, given: str | None) -> bool:
    expected = b"sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest().encode("ascii")
    # Starlette decodes headers as latin-1, so this gives back the bytes that were sent.
    return hmac.compare_digest(expected, (given or "").encode("latin-1"))


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _time(value: datetime | None) -> str | None:
    return evidence_time(value) if value is not None else None


def build_app(
    fleet: Fleet,
    database_url: str,
    enqueue: Enqueue,
    *,
    environ: Mapping[str, str] | None = None,
    opens: Sequence[Opener] = (),
    metrics: Metrics | None = None,
    max_body: int = MAX_BODY,
) -> Starlette:
    """The server's ASGI app. `opens` are opened at start-up (after the database pool) and closed at
    shut-down, in reverse order; `environ` resolves `env:` references (default: `os.environ`)."""
    from psycopg_pool import AsyncConnectionPool

    env = os.environ if environ is None else environ
    secrets = {
        t.name: resolve_ref(t.webhookSecret, env, what=f"webhook secret of tenant {t.name!r}").encode()
        for t in fleet.tenants
    }
    decoy = os.urandom(32)  # an unknown tenant costs the same HMAC as a known one
    stats = metrics or Metrics.make()
    role = sql.Identifier(fleet.serviceRole)

    async def check(conn: AsyncConnection[Any]) -> None:
        await AsyncConnectionPool.check_connection(conn)

    pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=8,
        open=False,
        timeout=DB_TIMEOUT,
        check=check,
        kwargs={"connect_timeout": int(DB_TIMEOUT)},
        name="stella-serve",
    )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await pool.open(wait=False)
            stack.push_async_callback(pool.close)
            for opener in opens:
                await stack.enter_async_context(opener())
            yield

    @asynccontextmanager
    async def as_tenant(tenant: str) -> AsyncIterator[AsyncConnection[Any]]:
        """A transaction as the service role with `stella.tenant` set; `_Unavailable` when the database
        cannot be had."""
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            async with pool.connection() as conn, conn.transaction():
                await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(role))
                await conn.execute("SELECT set_config('stella.tenant', %s, true)", (tenant,))
                yield conn
        except (PoolTimeout, psycopg.OperationalError) as exc:
            log.warning("the fleet database is unavailable: %s", type(exc).__name__)
            raise _Unavailable from exc

    async def hook(request: Request) -> Response:
        tenant = request.path_params["tenant"]
        known = tenant in secrets
        label = tenant if known else UNKNOWN
        try:
            body = await _read_body(request, max_body)
        except _TooLarge:
            stats.rejected.labels(label, "too_large").inc()
            return _error(413, f"the body is larger than {max_body} bytes")
        good = _signature_ok(secrets.get(tenant, decoy), body, request.headers.get(SIGNATURE_HEADER))
        if not (known and good):
            stats.rejected.labels(label, "signature").inc()
            log.info("webhook refused: bad or missing signature (tenant %s)", label)
            return _error(401, "bad or missing X-Hub-Signature-256")
        stats.accepted.labels(tenant).inc()
        try:
            queued = await enqueue(tenant, WEBHOOK)
        except Exception as exc:
            log.warning("could not enqueue a reconcile of %s: %s", tenant, type(exc).__name__)
            stats.rejected.labels(tenant, "unavailable").inc()
            return _error(503, "the queue is unavailable; deliver the webhook again later")
        (stats.enqueued if queued else stats.collapsed).labels(tenant, WEBHOOK).inc()
        return JSONResponse({"queued": queued}, status_code=202)

    def api(
        query: Callable[[AsyncConnection[Any], Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            tenant = request.path_params["tenant"]
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN:
                return _error(401, "a bearer token is required", _UNAUTHORIZED)
            try:
                async with as_tenant(tenant) as conn:
                    cur = await conn.execute(
                        "SELECT tenant FROM stella_tokens WHERE token_hash = %s", (token_hash(token),)
                    )
                    row = await cur.fetchone()
                    if row is None:
                        return _error(401, "unknown token", _UNAUTHORIZED)
                    if row[0] != tenant:
                        return _error(404, "no such tenant")
                    return await query(conn, request)
            except _Unavailable:
                return _error(503, "the database is unavailable")

        return endpoint

    async def promotions(conn: AsyncConnection[Any], _: Request) -> Response:
        cur = await conn.execute(
            "SELECT DISTINCT ON (promotion) promotion, environment, release_name, result, id"
            " FROM stella_evidence WHERE type = 'release_decision' AND promotion IS NOT NULL"
            " ORDER BY promotion, decided_at DESC NULLS LAST, id"
        )
        rows = list(await cur.fetchall())
        decided = {row[0] for row in rows}
        cur = await conn.execute("SELECT promotion, environment, release_name FROM stella_pending")
        rows += [
            (p, env, release, "pending", None) for p, env, release in await cur.fetchall() if p not in decided
        ]
        return JSONResponse(
            [
                {"id": p, "environment": env, "release": release, "state": result, "evidence": id_}
                for p, env, release, result, id_ in sorted(rows, key=lambda r: (r[1] or "", r[0]))
            ]
        )

    async def environments(conn: AsyncConnection[Any], _: Request) -> Response:
        cur = await conn.execute(
            "SELECT DISTINCT ON (environment) environment, release_name, release_id, promotion, id,"
            " decided_at FROM stella_evidence"
            " WHERE type = 'release_decision' AND result = 'allow' AND environment IS NOT NULL"
            " ORDER BY environment, decided_at DESC NULLS LAST, id"
        )
        return JSONResponse(
            [
                {
                    "environment": env,
                    "release": release,
                    "releaseId": release_id,
                    "promotion": promotion,
                    "evidence": id_,
                    "decidedAt": _time(at),
                }
                for env, release, release_id, promotion, id_, at in await cur.fetchall()
            ]
        )

    async def targets(conn: AsyncConnection[Any], _: Request) -> Response:
        cur = await conn.execute(
            "SELECT DISTINCT ON (environment, target) environment, target, type, result, release_name,"
            " release_id, id, decided_at FROM ("
            "  SELECT *, statement -> 'predicate' -> 'target' ->> 'name' AS target FROM stella_evidence"
            "  WHERE type IN ('deployment', 'rollback', 'drift')) AS records"
            " WHERE target IS NOT NULL"
            " ORDER BY environment, target, decided_at DESC NULLS LAST, id"
        )
        return JSONResponse(
            [
                {
                    "environment": env,
                    "target": target,
                    "record": kind,
                    "result": result,
                    "release": release,
                    "releaseId": release_id,
                    "evidence": id_,
                    "at": _time(at),
                }
                for env, target, kind, result, release, release_id, id_, at in await cur.fetchall()
            ]
        )

    async def evidence(conn: AsyncConnection[Any], request: Request) -> Response:
        id_ = request.path_params["id"]
        if len(id_) > MAX_ID:
            return _error(404, "no such evidence")
        cur = await conn.execute("SELECT statement FROM stella_evidence WHERE id = %s", (id_,))
        row = await cur.fetchone()
        if row is None:
            return _error(404, "no such evidence")
        return JSONResponse(row[0])

    async def healthz(_: Request) -> Response:
        try:
            async with pool.connection(timeout=DB_TIMEOUT) as conn:
                await conn.execute("SELECT 1")
        except Exception as exc:
            log.warning("health check: the fleet database does not answer: %s", type(exc).__name__)
            return JSONResponse({"ok": False}, status_code=503)
        return JSONResponse({"ok": True})

    async def metrics_endpoint(_: Request) -> Response:
        stats.queue_depth.clear()
        try:
            async with pool.connection(timeout=DB_TIMEOUT) as conn:
                cur = await conn.execute(
                    "SELECT args ->> 'tenant', count(*) FROM procrastinate_jobs"
                    " WHERE status = 'todo' AND task_name = %s GROUP BY 1",
                    (TASK,),
                )
                depth = {name: count for name, count in await cur.fetchall() if name is not None}
                cur = await conn.execute("SELECT tenant, metric, label, value FROM stella_counters")
                stats.workers.rows = [row for row in await cur.fetchall() if row[0] in secrets]
        except Exception as exc:
            log.warning("metrics: cannot read the queue and the counters: %s", type(exc).__name__)
        else:
            for name in sorted({*secrets, *depth}):
                stats.queue_depth.labels(name).set(depth.get(name, 0))
        return Response(generate_latest(stats.registry), media_type=CONTENT_TYPE_LATEST)

    prefix = "/api/v1/tenants/{tenant}"
    routes = [
        Route("/hooks/{tenant}", hook, methods=["POST"]),
        Route(f"{prefix}/promotions", api(promotions), methods=["GET"]),
        Route(f"{prefix}/environments", api(environments), methods=["GET"]),
        Route(f"{prefix}/targets", api(targets), methods=["GET"]),
        Route(f"{prefix}/evidence/{{id}}", api(evidence), methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:8080` for IPv6) -> (host, port); ValueError when it is not one."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host, int(port)


def bind(host: str, port: int) -> Any:
    """A listening socket on `host:port` (port 0: any free one; `getsockname()` says which)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def serve(fleet: Fleet, database_url: str, sock: Any, ready: Callable[[], None] = lambda: None) -> None:
    """Serve the fleet's app on the listening `sock` until SIGTERM or SIGINT, then return (uvicorn stops
    gracefully: it answers the requests under way). `ready()` is called once the app is built (its
    secrets resolved) and before it runs. `Transient` when it could not start (the database did not
    answer procrastinate's pool)."""
    import signal

    import uvicorn

    from ..errors import Transient

    queue = procrastinate_app(database_url, fleet.serviceRole)
    app = build_app(fleet, database_url, procrastinate_enqueue(queue), opens=[queue.open_async])
    ready()
    config = uvicorn.Config(app, lifespan="on", log_config=None, access_log=False, server_header=False)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it to the handlers it found: make those a no-op, so
    # that a stop by SIGTERM or SIGINT is a normal return (exit 0), not a KeyboardInterrupt or a kill.
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda _sig, _frame: None) for sig in handled}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise Transient("the server did not start (is the fleet database reachable? see the log above)")
