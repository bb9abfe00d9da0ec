"""Benchmark the deployment agent: applying a lock against bare Compose, and a poll with nothing to do.

Everything runs on this machine: a private Docker Engine (`tests/support/dockerd.py`: dockerd 20.10 on
its own socket), the real registry (`docker-registry`) and three busybox images pushed to it (one per
service, different digests), Compose v2 as the docker plugin finds it (`stella_docker.find_compose`).

1. Apply against bare Compose. A lock of three services (`network_mode: none`, `busybox sleep`, a
   healthcheck every 250 ms: the shortest `up --wait`, so the agent's own work weighs the most) whose
   images are already on the engine. Each run starts from a clean state (`down -t 0`, not timed); the
   two alternate, in turn first; one untimed warm-up each; medians of `--runs` (5):
   - apply: what the agent's deploy step does: open the docker plugin's engine for the target, call
     `reconciler.agent.apply.apply(...)` (pull every image by digest through the Engine API and check
     its RepoDigests, store the lock, find Compose, ping, Compose `up -d --wait`, list the project's
     containers and check their digests), close it;
   - bare (the baseline): the same Compose binary on the same stored lock, `docker-compose -p P -f LOCK
     up -d --wait --wait-timeout 60 --remove-orphans --pull never` (`DOCKER_HOST` set).
   Reports the ratio apply/bare (target: at most 1.3) and how apply's time splits, from its steps.
2. A no-op poll. Evidence branches of 1,000 and 5,000 release decisions in the target's environment,
   built straight into Git by `agent_branch.py` (seconds, where real reconcile passes would take about
   20 s for 5,000). The agent's first run on an empty state directory clones the branch, indexes it,
   deploys the newest allowed decision on the engine (the same three services, with a healthcheck
   every second, the bench's own load kept low) and pushes its signed deployment record (timed once,
   for reference); then `reconciler.audit.verify --root` must find nothing wrong with the branch.
   Then, with the services of every size up, `reconciler.agent.run_once(...)` is timed with nothing to
   do (fetch from a local path, verify, compare with the sticker), the sizes in turn in each round,
   medians of `--polls` (10) per size; inside those very polls, the time of the mirror's fetch, of
   `read_desired`, and of the processes started. Baseline in the same run: the same poll with the
   agent's index cache deleted first (every record read and verified again), 3 runs per size.
   Targets: at most 100 ms per poll, and flat: the ratio 5,000/1,000 at most 1.5.

Exits 1 when a target is missed. Sources under /dev/shm when writable; the agent's state directory
and the engine on disk. Run: `.venv/bin/python bench/bench_agent.py` (`-o json` for the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_branch import ENVIRONMENT, TARGET, build, compose_lock
from audit_branch import IDENTITIES, REF, SshKey
from stella_docker import Compose, find_compose

import reconciler.agent as agent_module
from reconciler import audit
from reconciler.agent import AgentOptions, run_once
from reconciler.agent.apply import apply, lock_path
from reconciler.agent.mirror import Mirror
from reconciler.discover import discover
from reconciler.history import cache_path
from reconciler.models import Environment
from reconciler.protocols import AgentTarget, DeployStep
from reconciler.repo import Repo
from reconciler.sign import KeySigner, generate_key, key_hint, load_private_key
from tests.support.busybox_image import push_busybox
from tests.support.dockerd import DockerDaemon, start_dockerd
from tests.support.registry import ToolMissing, start_registry

APPLY_TARGET = 1.3
"""apply/bare at most this."""
POLL_TARGET_MS = 100.0
"""A no-op poll at most this, at every size."""
GROWTH_TARGET = 1.5
"""The no-op poll at the largest size over the smallest, at most this."""
SERVICES = ("a", "b", "c")
PROJECT = "benchapply"
STAGES = ("pull", "up", "inspect")
UP_TO_DATE = "Image is up to date"
"""What the engine says of a pull by digest that found the image present."""
WAIT = 60


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _median_ms(values: list[float]) -> float:
    return _ms(statistics.median(values))


def _span(step: DeployStep) -> float:
    return (step.completed_at - step.started_at).total_seconds()


# --- Compose by hand (the baseline, and cleaning up) -----------------------------------------------


def _compose_env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
    return {**env, "DOCKER_HOST": endpoint}


def _compose(compose: Compose, endpoint: str, project: str, lock: Path, *args: str) -> float:
    """Run `compose -p project -f lock args…` on the engine; its wall time. Raises if it fails."""
    argv = [*compose.argv, "-p", project, "-f", str(lock), *args]
    start = time.perf_counter()
    done = subprocess.run(argv, env=_compose_env(endpoint), capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return elapsed


def _down(compose: Compose, endpoint: str, project: str, lock: Path) -> None:
    _compose(compose, endpoint, project, lock, "down", "-t", "0", "--remove-orphans")


# --- 1. apply against bare Compose ------------------------------------------------------------------


def measure_apply(
    daemon: DockerDaemon, images: dict[str, str], workdir: Path, runs: int, interval: str
) -> dict[str, Any]:
    environ = dict(os.environ)
    compose = find_compose(environ)
    lock = compose_lock(images, interval, "bench_agent.py: the agent's apply against bare Compose")
    state = workdir / "apply-state"
    state.mkdir()
    stored = lock_path(state, lock)  # where apply keeps it; bare Compose reads the same file
    target = AgentTarget(ENVIRONMENT, TARGET, daemon.endpoint, PROJECT)
    environment = Environment.model_validate(
        {"apiVersion": "stella/v1", "kind": "Environment", "name": ENVIRONMENT}
    )
    plugin = discover(kinds=("agents",)).agent("docker")
    bare_up = ["up", "-d", "--wait", "--wait-timeout", str(WAIT), "--remove-orphans", "--pull", "never"]
    parts: dict[str, list[float]] = {"pull": [], "up": [], "inspect": [], "rest": []}
    """apply's time by the stage of its steps (its pulls added up); `rest`: what no step covers."""

    def one_apply(record: bool) -> float:
        _down(compose, daemon.endpoint, PROJECT, stored)
        start = time.perf_counter()
        engine = plugin.open(target, environ)
        try:
            applied = apply(
                engine,
                project=PROJECT,
                lock=lock,
                state_dir=state,
                environment=environment,
                environ=environ,
                timeout=WAIT,
            )
        finally:
            engine.close()
        elapsed = time.perf_counter() - start
        if not applied.ok or len(applied.containers) != len(SERVICES):
            raise SystemExit(f"apply failed: {applied.reason}\n{applied.steps}")
        if record:
            pulls = [s for s in applied.steps if s.stage == "pull"]
            if len(pulls) != len(SERVICES) or not all(UP_TO_DATE in s.output for s in pulls):
                raise SystemExit(f"apply downloaded an image it should have found present: {pulls}")
            spans = {stage: sum(_span(s) for s in applied.steps if s.stage == stage) for stage in STAGES}
            spans["rest"] = elapsed - sum(spans.values())
            for stage, seconds in spans.items():
                parts[stage].append(seconds)
        return elapsed

    def one_bare() -> float:
        _down(compose, daemon.endpoint, PROJECT, stored)
        return _compose(compose, daemon.endpoint, PROJECT, stored, *bare_up)

    one_apply(False)  # warm-up: pulls the images onto the fresh engine; every timed run finds them there
    one_bare()
    times: dict[str, list[float]] = {"apply": [], "bare": []}
    for n in range(runs):
        order = ("apply", "bare") if n % 2 == 0 else ("bare", "apply")
        for what in order:
            times[what].append(one_apply(True) if what == "apply" else one_bare())
    _down(compose, daemon.endpoint, PROJECT, stored)
    finding = []
    for _ in range(5):
        start = time.perf_counter()
        find_compose(environ)
        finding.append(time.perf_counter() - start)
    apply_s, bare_s = statistics.median(times["apply"]), statistics.median(times["bare"])
    return {
        "services": len(SERVICES),
        "healthcheck_interval": interval,
        "runs": runs,
        "compose": f"{compose.version} ({' '.join(compose.argv)})",
        "apply_ms": _ms(apply_s),
        "bare_ms": _ms(bare_s),
        "ratio": round(apply_s / bare_s, 2),
        "target": APPLY_TARGET,
        "apply_runs_ms": [_ms(t) for t in times["apply"]],
        "bare_runs_ms": [_ms(t) for t in times["bare"]],
        "apply_parts_ms": {stage: _median_ms(values) for stage, values in parts.items()},
        "find_compose_ms": _median_ms(finding),
    }


# --- 2. the no-op poll ------------------------------------------------------------------------------


class _Parts:
    """Times the parts of every poll made inside `watching()`, in those very polls: the mirror's fetch
    (`Mirror.fetch`), `read_desired` (as `reconciler.agent` calls it), and every process started with
    `subprocess.run` (the git commands), by name. `take()` returns one poll's figures and starts the next."""

    def __init__(self) -> None:
        self.poll: dict[str, float] = {}
        self.processes: list[str] = []

    def _wrap(self, owner: Any, name: str, part: str) -> Callable[[], None]:
        original = getattr(owner, name)
        parts = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                parts.poll[part] = parts.poll.get(part, 0.0) + time.perf_counter() - start
                if part == "processes":
                    argv = [str(a) for a in (args[0] if args else kwargs.get("args", []))]
                    command = [a for a in argv[1:] if not a.startswith("-") and "/" not in a][:1]
                    parts.processes.append(" ".join([Path(argv[0]).name, *command]))

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, original)

    @contextmanager
    def watching(self) -> Iterator[_Parts]:
        undo = [
            self._wrap(Mirror, "fetch", "fetch"),
            self._wrap(agent_module, "read_desired", "read_desired"),
            self._wrap(subprocess, "run", "processes"),
        ]
        try:
            yield self
        finally:
            for restore in undo:
                restore()

    def take(self) -> tuple[dict[str, float], list[str]]:
        taken = (self.poll, self.processes)
        self.poll, self.processes = {}, []
        return taken


class Site:
    """One size: its source repository (the evidence branch), and an agent whose target runs the
    newest allowed decision already (its first run deployed it); `figures` gathers what is measured."""

    def __init__(
        self,
        daemon: DockerDaemon,
        images: dict[str, str],
        size: int,
        sources: Path,
        workdir: Path,
        interval: str,
    ) -> None:
        evidence_key, agent_key = workdir / f"evidence-{size}.pem", workdir / f"agent-{size}.pem"
        generate_key(evidence_key)
        generate_key(agent_key)
        people = tuple(SshKey.generate(identity) for identity in IDENTITIES)
        self.size, self.root, self.project = size, sources / f"source-{size}", f"poll{size}"
        self.interval = interval
        start = time.perf_counter()
        self.built = build(
            self.root,
            size,
            10,
            KeySigner(load_private_key(evidence_key)),
            evidence_key.with_name(evidence_key.name + ".pub").read_bytes(),
            agent_key.with_name(agent_key.name + ".pub").read_bytes(),
            people,
            images,
            daemon.endpoint,
            self.project,
            interval,
        )
        self.figures: dict[str, Any] = {"decisions": size, "build_s": round(time.perf_counter() - start, 2)}
        private = load_private_key(agent_key)
        self.signer, self.hint = KeySigner(private), key_hint(private.public_key())
        self.state = workdir / f"agent-{size}"
        self.options = AgentOptions(
            target=TARGET, url=str(self.root), state_dir=self.state, root=self.built.genesis, timeout=WAIT
        )
        self.agents = discover(kinds=("agents",)).agent
        self.times: list[float] = []
        self.parts: dict[str, list[float]] = {"fetch": [], "read_desired": [], "processes": [], "rest": []}
        self.processes: list[str] = []

    def poll(self) -> tuple[float, Any]:
        start = time.perf_counter()
        run = run_once(self.options, self.agents, self.signer, self.hint, os.environ)
        return time.perf_counter() - start, run

    def deploy(self) -> None:
        """The agent's first run (clone, index every record, deploy, push the deployment record), then
        `audit verify --root` on the source: the branch, and the record the agent added, verify clean."""
        first_s, first = self.poll()
        if first.action != "deployed" or first.decision != self.built.current:
            raise SystemExit(f"the first run did not deploy {self.built.current}: {first}")
        start = time.perf_counter()
        source = Repo(self.root)
        report = audit.verify(source, REF, audit.load_keys(source, "main"), root=self.built.genesis)
        if report.findings:
            raise SystemExit(f"the bench branch does not verify: {[str(f) for f in report.findings[:5]]}")
        self.figures |= {
            "records": report.records,
            "first_run_s": round(first_s, 2),
            "audit_verify_s": round(time.perf_counter() - start, 2),
        }
        self.noop()  # the index takes in the deployment record the first run pushed

    def noop(self) -> float:
        elapsed, run = self.poll()
        if run.action != "none" or run.decision != self.built.current or run.pushed:
            raise SystemExit(f"a poll that should do nothing did: {run}")
        return elapsed

    def timed_noop(self, watch: _Parts) -> None:
        self.times.append(self.noop())
        spent, self.processes = watch.take()
        for part in ("fetch", "read_desired", "processes"):
            self.parts[part].append(spent.get(part, 0.0))
        self.parts["rest"].append(self.times[-1] - spent.get("fetch", 0.0) - spent.get("read_desired", 0.0))

    def without_cache(self, repeats: int = 3) -> None:
        """The baseline: the same poll with the agent's index cache deleted (every record verified)."""
        cache = cache_path(Mirror(self.state, str(self.root), REF).repo(), REF)
        cold = []
        for _ in range(repeats):
            for leftover in cache.parent.glob(cache.name + "*"):
                leftover.unlink()
            cold.append(self.noop())
        poll_s = statistics.median(self.times)
        self.figures |= {
            "polls": len(self.times),
            "poll_ms": _ms(poll_s),
            "poll_min_ms": _ms(min(self.times)),
            "poll_runs_ms": [_ms(t) for t in self.times],
            "fetch_ms": _median_ms(self.parts["fetch"]),
            "read_desired_ms": _median_ms(self.parts["read_desired"]),
            "rest_ms": _median_ms(self.parts["rest"]),
            "processes": self.processes,
            "processes_ms": _median_ms(self.parts["processes"]),
            "healthcheck_interval": self.interval,
            "cache_deleted_ms": _median_ms(cold),
            "cache_deleted_over_poll": round(statistics.median(cold) / poll_s, 1),
        }


def measure_polls(
    daemon: DockerDaemon,
    images: dict[str, str],
    sizes: list[int],
    polls: int,
    sources: Path,
    workdir: Path,
    interval: str,
) -> list[dict[str, Any]]:
    """Every size set up and deployed, then their no-op polls in rounds (each size once per round, in
    turn first), so that all sizes see the same machine; then each one's baseline; then `down`."""
    sites = [Site(daemon, images, size, sources, workdir, interval) for size in sizes]
    for site in sites:
        site.deploy()
    with _Parts().watching() as watch:
        for n in range(polls):
            for site in sites[n % len(sites) :] + sites[: n % len(sites)]:
                site.timed_noop(watch)
    compose = find_compose(dict(os.environ))
    for site in sites:
        site.without_cache()
        _down(compose, daemon.endpoint, site.project, next(site.state.glob("artifacts/*/*.yml")))
    return [site.figures for site in sites]


# --- the run ----------------------------------------------------------------------------------------


def _push_images(registry_host: str, workdir: Path) -> dict[str, str]:
    """One busybox image per service (a different marker each, so different digests): service -> ref."""
    return {s: push_busybox(registry_host, workdir, f"bench/{s}", "1.0", marker=s) for s in SERVICES}


def _print(result: dict[str, Any]) -> None:
    a = result["apply"]
    print(
        f"apply vs bare Compose {a['compose']}: {a['services']} services (busybox, network_mode none, "
        f"healthcheck every {a['healthcheck_interval']}), images present, medians of {a['runs']} runs"
    )
    print(f"{'':44}{'median ms':>10}")
    print(f"{'agent apply (docker plugin engine)':44}{a['apply_ms']:>10}")
    labels = {
        "pull": f"  pull by digest + RepoDigests check, x{a['services']}",
        "up": "  compose up --wait (its step)",
        "inspect": "  containers listed and checked",
        "rest": "  open, store lock, find Compose, ping, close",
    }
    for stage, label in labels.items():
        print(f"{label:44}{a['apply_parts_ms'][stage]:>10}")
    print(f"{'bare docker-compose up --wait (baseline)':44}{a['bare_ms']:>10}")
    print(f"{'(find_compose alone)':44}{a['find_compose_ms']:>10}")
    verdict = "within" if a["ratio"] <= APPLY_TARGET else "OVER"
    print(f"ratio apply/bare: {a['ratio']} ({verdict} the target of {APPLY_TARGET})")
    print()
    rows = result["poll"]
    print(
        f"no-op agent poll (run_once: fetch from a local path, verify, compare with the sticker; services "
        f"up, healthcheck every {rows[0]['healthcheck_interval']}), medians of {rows[0]['polls']} polls"
    )
    columns = [
        ("decisions", "decisions"),
        ("build_s", "build s"),
        ("first_run_s", "first run s"),
        ("poll_ms", "poll ms"),
        ("poll_min_ms", "min ms"),
        ("fetch_ms", "fetch ms"),
        ("read_desired_ms", "desired ms"),
        ("rest_ms", "rest ms"),
        ("cache_deleted_ms", "no cache ms"),
        ("cache_deleted_over_poll", "x poll"),
    ]
    print("".join(f"{label:>13}" for _, label in columns))
    for row in rows:
        print("".join(f"{row[key]:>13}" for key, _ in columns))
    for row in rows:
        print(
            f"processes per poll at {row['decisions']}: {', '.join(row['processes'])} "
            f"(median {row['processes_ms']} ms of the fetch's {row['fetch_ms']} ms)"
        )
    verdict = "within" if result["poll_ok"] else "OVER"
    print(
        f"poll growth {rows[0]['decisions']} -> {rows[-1]['decisions']} decisions: {result['poll_growth']} "
        f"(target {GROWTH_TARGET}); slowest median {result['poll_worst_ms']} ms (target {POLL_TARGET_MS:g}): "
        f"{verdict}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="apply/bare runs (medians)")
    parser.add_argument("--polls", type=int, default=10, help="no-op polls per size (medians)")
    parser.add_argument("--sizes", default="1000,5000", help="decisions on the polled branches")
    parser.add_argument("--interval", default="250ms", help="the healthcheck interval of part 1's services")
    parser.add_argument(
        "--poll-interval", default="1s", help="the healthcheck interval of the services up during the polls"
    )
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    args = parser.parse_args()
    shm = Path("/dev/shm")
    sources_dir = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    try:
        with (
            tempfile.TemporaryDirectory(prefix="stella-bench-agent-") as tmp,
            tempfile.TemporaryDirectory(prefix="stella-bench-agent-", dir=sources_dir) as sources,
        ):
            workdir = Path(tmp)
            registry = start_registry(workdir / "registry")
            try:
                images = _push_images(registry.host, workdir / "images")
                with start_dockerd() as daemon:
                    result = _measure(daemon, images, workdir, Path(sources), args)
            finally:
                registry.stop()
    except ToolMissing as exc:
        raise SystemExit(str(exc)) from exc
    if args.output == "json":
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0 if result["ok"] else 1


def _measure(
    daemon: DockerDaemon, images: dict[str, str], workdir: Path, sources: Path, args: argparse.Namespace
) -> dict[str, Any]:
    applied = measure_apply(daemon, images, workdir, args.runs, args.interval)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = measure_polls(daemon, images, sizes, args.polls, sources, workdir, args.poll_interval)
    growth = round(rows[-1]["poll_ms"] / rows[0]["poll_ms"], 2)
    worst = max(row["poll_ms"] for row in rows)
    poll_ok = worst <= POLL_TARGET_MS and growth <= GROWTH_TARGET
    return {
        "apply": applied,
        "poll": rows,
        "poll_growth": growth,
        "poll_worst_ms": worst,
        "poll_ok": poll_ok,
        "targets": {"apply_over_bare": APPLY_TARGET, "poll_ms": POLL_TARGET_MS, "poll_growth": GROWTH_TARGET},
        "ok": applied["ratio"] <= APPLY_TARGET and poll_ok,
    }


if __name__ == "__main__":
    sys.exit(main())
