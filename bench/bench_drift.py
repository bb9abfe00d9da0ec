"""Benchmark `stella drift`'s check of one target: 50 containers, one Engine call, at most 200 ms.

Everything runs on this machine: a private Docker Engine (`tests/support/dockerd.py`: dockerd 20.10 on
its own socket), the real registry (`docker-registry`), five busybox images pushed to it (different
markers, so different digests), and Compose v2 as the docker plugin finds it (`stella_docker.find_compose`).

Set-up (not timed): a lock of `--services` (50) services `s00`…, each `network_mode: none`, `busybox
sleep`, its image pinned by digest (the five images in turn) and one small file bind-mounted from the
agent's state directory (`${STELLA_STATE_DIR}/config/<service>.conf`, so that every container's config
label lists a file to hash again). The agent's own apply (`reconciler.agent.apply.apply`, the docker
plugin's engine, an `Environment`, a state directory) brings it up, so the containers carry the labels
`reconciler.drift.config_labels` computes.

Measured, medians of `--runs` (20) after two warm-up rounds, the kinds in turn in each round:
- the check as `stella drift` makes it per target (`reconciler/cli/drift.py`): what runs,
  `Engine.running(project)` (one `GET /containers/json?all=1` filtered on the project label), then
  `reconciler.drift.compare(target, lock, containers)`; its total and both parts;
  - with a fresh engine (what the CLI does: `discover(kinds=("agents",)).agent("docker").open(...)`,
    `running`, `close`, then `compare`), the figure held to the target;
  - with one engine (and its SDK client) reused across checks;
- the baselines, listing the same project: `docker-compose -p P -f LOCK ps -a --format json` with the
  same Compose binary, and `docker ps -a --filter label=com.docker.compose.project=P --format json`
  when a Docker CLI is on PATH; the ratio fresh check / baseline for each.
The Engine API requests of one check of each kind are counted (the docker SDK client's
`requests` session is wrapped for that one untimed check): the container list, and whatever else
(API version negotiation of a new client, image inspects) is listed by path. Then, as a sanity check,
one container is stopped and one mounted file changed: the check must report exactly those two.

Target: the check with a fresh engine at most 200 ms (exit 1 when missed). Skips (exit 0, a message on
stderr) when dockerd, the registry, skopeo, busybox or Compose v2 is missing. Run:
`.venv/bin/python bench/bench_drift.py` (`-o json` for the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker.api.client
from stella_docker import Compose, find_compose

from reconciler.agent.apply import apply, lock_path
from reconciler.discover import discover
from reconciler.drift import DriftItem, compare
from reconciler.errors import PluginError
from reconciler.models import Environment
from reconciler.protocols import AgentPlugin, AgentTarget, Engine, RunningContainer
from tests.support.busybox_image import push_busybox
from tests.support.dockerd import DockerDaemon, start_dockerd
from tests.support.registry import ToolMissing, start_registry

TARGET_MS = 200.0
"""The check with a fresh engine at most this."""
ENVIRONMENT, TARGET, PROJECT = "dev", "web-1", "benchdrift"
IMAGES = 5
PROJECT_LABEL = "com.docker.compose.project"
WAIT = 300


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _median_ms(values: list[float]) -> float:
    return _ms(statistics.median(values))


# --- the project under check -------------------------------------------------------------------------


def drift_lock(images: list[str], services: int) -> bytes:
    """`services` busybox services, the images in turn, each mounting its own config file from the state
    directory."""
    lines = ["# bench_drift.py: a target of many containers", "services:"]
    for n in range(services):
        name = f"s{n:02d}"
        lines += [
            f"  {name}:",
            f"    image: {images[n % len(images)]}",
            "    network_mode: none",
            '    command: ["/bin/busybox", "sleep", "3600"]',
            "    stop_grace_period: 1s",
            f'    volumes: ["${{STELLA_STATE_DIR}}/config/{name}.conf:/etc/app.conf:ro"]',
        ]
    return ("\n".join(lines) + "\n").encode()


def _bring_up(
    plugin: AgentPlugin, target: AgentTarget, lock: bytes, state: Path, services: int
) -> dict[str, Any]:
    """The agent's apply of `lock` on the engine (pulls, `up --wait`, the check of what runs)."""
    config = state / "config"
    config.mkdir(parents=True)
    for n in range(services):
        (config / f"s{n:02d}.conf").write_text(f"name = s{n:02d}\nworkers = {n % 4 + 1}\n")
    environment = Environment.model_validate(
        {"apiVersion": "stella/v1", "kind": "Environment", "name": ENVIRONMENT}
    )
    start = time.perf_counter()
    engine = plugin.open(target, os.environ)
    try:
        applied = apply(
            engine,
            project=PROJECT,
            lock=lock,
            state_dir=state,
            environment=environment,
            environ=os.environ,
            timeout=WAIT,
        )
    finally:
        engine.close()
    elapsed = time.perf_counter() - start
    if not applied.ok or len(applied.containers) != services:
        raise SystemExit(f"bench_drift: apply failed: {applied.reason}\n{applied.steps}")
    return {"apply_s": round(elapsed, 1), "pulls": sum(1 for s in applied.steps if s.stage == "pull")}


# --- counting Engine API requests ----------------------------------------------------------------------


@contextmanager
def _requests() -> Iterator[list[str]]:
    """Every HTTP request a docker SDK client sends inside the block, as `METHOD /path` (no query, the
    API version prefix kept). The class attribute shadows `requests.Session.send` and is removed after."""
    seen: list[str] = []
    original = docker.api.client.APIClient.send

    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        seen.append(f"{request.method} {urlsplit(request.path_url).path}")
        return original(self, request, **kwargs)

    docker.api.client.APIClient.send = send  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del docker.api.client.APIClient.send


# --- the check ------------------------------------------------------------------------------------------


class Check:
    """The drift check of the one target, as `stella drift` makes it: `fresh()` opens and closes an engine
    each time (the CLI's way), `reused()` keeps one. Each returns (seconds listing, seconds comparing,
    the items); `figures` gathers the times."""

    def __init__(self, plugin: AgentPlugin, target: AgentTarget, lock: bytes) -> None:
        self.plugin, self.target, self.lock = plugin, target, lock
        self.engine: Engine = plugin.open(target, os.environ)
        self.times: dict[str, dict[str, list[float]]] = {
            kind: {"total": [], "running": [], "compare": []} for kind in ("fresh", "reused")
        }

    def _compare(self, containers: list[RunningContainer]) -> tuple[float, list[DriftItem]]:
        start = time.perf_counter()
        items = compare(self.target.name, self.lock, containers)
        return time.perf_counter() - start, items

    def fresh(self) -> tuple[float, float, list[DriftItem]]:
        start = time.perf_counter()
        engine = self.plugin.open(self.target, os.environ)
        try:
            containers = engine.running(self.target.project)
        finally:
            engine.close()
        listed = time.perf_counter() - start
        compared, items = self._compare(containers)
        return listed, compared, items

    def reused(self) -> tuple[float, float, list[DriftItem]]:
        start = time.perf_counter()
        containers = self.engine.running(self.target.project)
        listed = time.perf_counter() - start
        compared, items = self._compare(containers)
        return listed, compared, items

    def timed(self, kind: str) -> None:
        listed, compared, items = self.fresh() if kind == "fresh" else self.reused()
        if items:
            raise SystemExit(f"bench_drift: the {kind} check found drift: {[i.as_json() for i in items[:5]]}")
        times = self.times[kind]
        times["running"].append(listed)
        times["compare"].append(compared)
        times["total"].append(listed + compared)

    def close(self) -> None:
        self.engine.close()


# --- the baselines --------------------------------------------------------------------------------------


def _environ(endpoint: str, state: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
    return {**environ, "DOCKER_HOST": endpoint, "STELLA_STATE_DIR": str(state)}


def _listing(argv: list[str], environ: Mapping[str, str], cwd: Path, services: int) -> Callable[[], float]:
    """A baseline: run `argv` (JSON lines, or one JSON array, of the project's containers); its wall time.
    The first run checks that it lists every container."""

    def run() -> float:
        start = time.perf_counter()
        done = subprocess.run(argv, env=dict(environ), cwd=cwd, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"bench_drift: {' '.join(argv)}: exit {done.returncode}\n{done.stderr[-500:]}")
        return elapsed

    done = subprocess.run(argv, env=dict(environ), cwd=cwd, capture_output=True, text=True, check=False)
    text = done.stdout.strip()
    listed = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines()]
    if done.returncode != 0 or len(listed) != services:
        raise SystemExit(
            f"bench_drift: {' '.join(argv)} listed {len(listed)} of {services} containers\n"
            + done.stderr[-500:]
        )
    return run


def _baselines(
    compose: Compose, endpoint: str, stored: Path, state: Path, services: int
) -> dict[str, tuple[str, Callable[[], float]]]:
    """name -> (command line, run)."""
    environ = _environ(endpoint, state)
    found: dict[str, tuple[str, Callable[[], float]]] = {}
    argv = [*compose.argv, "-p", PROJECT, "-f", str(stored), "ps", "-a", "--format", "json"]
    found["compose_ps"] = (" ".join(argv), _listing(argv, environ, state, services))
    cli = shutil.which("docker")
    if cli is not None:
        argv = [cli, "ps", "-a", "--filter", f"label={PROJECT_LABEL}={PROJECT}", "--format", "json"]
        found["docker_ps"] = (" ".join(argv), _listing(argv, environ, state, services))
    return found


# --- the run --------------------------------------------------------------------------------------------


def _drifted(daemon: DockerDaemon, check: Check, state: Path) -> list[dict[str, Any]]:
    """Stop one container and change another service's mounted file: the check must report just those."""
    containers = check.engine.running(PROJECT)
    stopped, edited = containers[7], containers[23]
    client = daemon.client()
    try:
        client.api.stop(stopped.container, timeout=0)
    finally:
        client.close()
    (state / "config" / f"{edited.service}.conf").write_text("changed on the host\n")
    _, _, items = check.fresh()
    found = [(i.service, i.kind, i.container) for i in items]
    wanted = [(stopped.service, "stopped", stopped.container), (edited.service, "config", edited.container)]
    if found != wanted:
        raise SystemExit(f"bench_drift: expected {wanted}, the check found {[i.as_json() for i in items]}")
    return [{"service": i.service, "kind": i.kind, "expected": i.expected, "actual": i.actual} for i in items]


def _measure(
    daemon: DockerDaemon, images: list[str], workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    compose = find_compose(dict(os.environ))
    plugin = discover(kinds=("agents",)).agent("docker")
    target = AgentTarget(ENVIRONMENT, TARGET, daemon.endpoint, PROJECT)
    lock = drift_lock(images, args.services)
    state = workdir / "state"
    setup = _bring_up(plugin, target, lock, state, args.services)
    stored = lock_path(state, lock)  # where apply stored it; the Compose baseline reads the same file
    baselines = _baselines(compose, daemon.endpoint, stored, state, args.services)
    check = Check(plugin, target, lock)
    try:
        check.reused()  # the reused engine makes its SDK client (and negotiates the API version) here
        calls = {}
        for kind in ("fresh", "reused"):
            with _requests() as seen:
                (check.fresh if kind == "fresh" else check.reused)()
            calls[kind] = seen
        kinds = ["fresh", "reused", *baselines]
        baseline_times: dict[str, list[float]] = {name: [] for name in baselines}
        for n in range(args.runs + 2):  # the first two rounds warm up
            for kind in kinds[n % len(kinds) :] + kinds[: n % len(kinds)]:
                if kind in baselines:
                    elapsed = baselines[kind][1]()
                    if n >= 2:
                        baseline_times[kind].append(elapsed)
                elif n >= 2:
                    check.timed(kind)
                else:
                    check.fresh() if kind == "fresh" else check.reused()
        drifted = _drifted(daemon, check, state)
    finally:
        check.close()
    figures: dict[str, Any] = {
        "services": args.services,
        "images": len(images),
        "runs": args.runs,
        "compose": f"{compose.version} ({' '.join(compose.argv)})",
        "setup": setup,
    }
    for kind, times in check.times.items():
        figures[kind] = {f"{part}_ms": _median_ms(values) for part, values in times.items()}
        figures[kind]["total_runs_ms"] = [_ms(t) for t in times["total"]]
        figures[kind]["requests"] = calls[kind]
        figures[kind]["container_lists"] = sum(c.endswith("/containers/json") for c in calls[kind])
        figures[kind]["image_inspects"] = sum("/images/" in c for c in calls[kind])
    fresh_s = statistics.median(check.times["fresh"]["total"])
    figures["baselines"] = {
        name: {
            "command": command,
            "median_ms": _median_ms(baseline_times[name]),
            "fresh_over_baseline": round(fresh_s / statistics.median(baseline_times[name]), 3),
        }
        for name, (command, _) in baselines.items()
    }
    figures["drift_found"] = drifted
    figures["target_ms"] = TARGET_MS
    figures["ok"] = figures["fresh"]["total_ms"] <= TARGET_MS
    return figures


def _print(f: dict[str, Any]) -> None:
    print(
        f"drift check of one target: {f['services']} containers ({f['images']} images, network_mode none, "
        f"a config file mounted each), brought up by the agent's apply in {f['setup']['apply_s']} s; "
        f"Compose {f['compose']}; medians of {f['runs']} runs"
    )
    print(f"{'':52}{'total ms':>10}{'running ms':>12}{'compare ms':>12}")
    for kind, label in (
        ("fresh", "check, fresh engine (open, running, close)"),
        ("reused", "check, engine reused"),
    ):
        row = f[kind]
        print(f"{label:52}{row['total_ms']:>10}{row['running_ms']:>12}{row['compare_ms']:>12}")
    labels = {
        "compose_ps": "baseline: compose -p P -f LOCK ps -a",
        "docker_ps": "baseline: docker ps -a --filter label",
    }
    for name, row in f["baselines"].items():
        print(f"{labels[name]:52}{row['median_ms']:>10}")
    for kind in ("fresh", "reused"):
        requests = f[kind]["requests"]
        print(
            f"Engine API requests of one {kind} check: {len(requests)} ({', '.join(requests)}); "
            f"image inspects: {f[kind]['image_inspects']}"
        )
    for name, row in f["baselines"].items():
        print(f"fresh check / {name}: {row['fresh_over_baseline']}")
    found = ", ".join(f"{i['service']} {i['kind']}" for i in f["drift_found"])
    print(f"after stopping one container and editing one mounted file, the check found: {found}")
    verdict = "within" if f["ok"] else "OVER"
    print(f"fresh check {f['fresh']['total_ms']} ms: {verdict} the target of {TARGET_MS:g} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed checks of each kind (medians)")
    parser.add_argument("--services", type=int, default=50, help="services (containers) of the target")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    args = parser.parse_args()
    try:
        find_compose(dict(os.environ))
    except PluginError as exc:
        print(f"bench_drift: skipped: {exc}", file=sys.stderr)
        return 0
    try:
        with tempfile.TemporaryDirectory(prefix="stella-bench-drift-") as tmp:
            workdir = Path(tmp)
            registry = start_registry(workdir / "registry")
            try:
                images = [
                    push_busybox(registry.host, workdir / "images", f"bench/drift-{n}", "1.0", marker=f"d{n}")
                    for n in range(IMAGES)
                ]
                with start_dockerd() as daemon:
                    figures = _measure(daemon, images, workdir, args)
            finally:
                registry.stop()
    except ToolMissing as exc:
        print(f"bench_drift: skipped: {exc}", file=sys.stderr)
        return 0
    if args.output == "json":
        print(json.dumps(figures, indent=2))
    else:
        _print(figures)
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
