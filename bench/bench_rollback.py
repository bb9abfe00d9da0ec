"""Benchmark automatic rollback: the time from a failed health check to the release before running again.

Everything is real and on this machine: a private Docker Engine (`tests/support/dockerd.py`), the
registry (`docker-registry`), busybox images pushed to it, Compose v2 as the docker plugin finds it, and
a repository (`tests/support/rollout_site.py`) whose target web-1 runs release shop-1.0. Each run
releases a new `shop-2.N` whose image fails its Compose health check (healthcheck every 250 ms, 2
retries), decides it with `stella reconcile --once`, and runs the agent once in this process
(`reconciler.agent.run_once`): it pulls, `up --wait` fails, it records the failure, re-applies
shop-1.0's lock and records the rollback. Through a thin wrapper around the docker plugin's engine the
bench notes when the failing `up` returned (the failed health check is known) and when the rollback's
`up` returned with every service healthy: the time between is the figure.

Baseline, in the same run: from the same state (the broken release's containers up, unhealthy), the
same Compose binary bringing shop-1.0's stored lock back, `up -d --wait --remove-orphans --pull never`:
the least any rollback must take. Medians of `--runs` (5); the ratio rollback/bare is reported (the
agent's own part: recording the failure, pulls by digest, the container check). Run:
`.venv/bin/python bench/bench_rollback.py` (`-o json` for the figures).
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stella_docker import find_compose

from reconciler.agent import AgentOptions, run_once
from reconciler.agent.apply import lock_path
from reconciler.discover import discover
from reconciler.protocols import AgentPlugin, AgentTarget, DeployStep, Engine
from reconciler.sign import KeySigner, load_private_key
from tests.support.dockerd import start_dockerd
from tests.support.registry import ToolMissing, start_registry
from tests.support.rollout_site import SECRET, Shop

TARGET = "web-1"


class _Timed:
    """An engine that notes when each `up` returned, and how."""

    def __init__(self, engine: Engine, ups: list[tuple[float, bool]]) -> None:
        self._engine, self._ups = engine, ups

    def pull(self, image: str) -> DeployStep:
        return self._engine.pull(image)

    def up(
        self, project: str, lock: Path, environ: Mapping[str, str], timeout: float, **more: Any
    ) -> DeployStep:
        step = self._engine.up(project, lock, environ, timeout, **more)
        self._ups.append((time.perf_counter(), step.ok))
        return step

    def running(self, project: str) -> Any:
        return self._engine.running(project)

    def close(self) -> None:
        self._engine.close()


class _TimedPlugin:
    def __init__(self, plugin: AgentPlugin, ups: list[tuple[float, bool]]) -> None:
        self.manifest, self._plugin, self._ups = plugin.manifest, plugin, ups

    def open(self, target: AgentTarget, environ: Mapping[str, str]) -> Engine:
        return _Timed(self._plugin.open(target, environ), self._ups)  # type: ignore[return-value]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    args = parser.parse_args()
    try:
        figures = _bench(args.runs)
    except ToolMissing as exc:
        print(f"bench_rollback: skipped: {exc}", file=sys.stderr)
        return 0
    if args.output == "json":
        print(json.dumps(figures, indent=2))
    else:
        print(
            f"automatic rollback, failed health check -> shop-1.0 healthy again: median "
            f"{figures['rollback_s'] * 1000:.0f} ms; bare `up -d --wait` of the same lock from the same "
            f"state {figures['bare_s'] * 1000:.0f} ms; ratio {figures['ratio']:.2f} (runs {figures['runs']})"
        )
    return 0


def _bench(runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-rollback-") as tmp:
        work = Path(tmp)
        registry = start_registry(work / "registry")
        daemon = start_dockerd()
        try:
            return _measure(work, registry, daemon, runs)
        finally:
            daemon.close()
            registry.stop()


def _measure(work: Path, registry: Any, daemon: Any, runs: int) -> dict[str, Any]:
    shop = Shop(work, registry, daemon, "{strategy: all-at-once, healthTimeout: 30s}")
    shop.release("shop-1.0", "good")
    code, done = shop.agent(TARGET)
    if code != 0:
        raise SystemExit(f"bench_rollback: the first deployment failed: {done}")
    environ = {**os.environ, "DB_PASSWORD": SECRET}
    docker = discover(kinds=("agents",)).agent("docker")
    signer = KeySigner(load_private_key(shop.keys / f"{TARGET}.pem"))
    compose = find_compose(environ)
    good_lock = lock_path(shop.state(TARGET), _lock_of(shop, str(done["decision"])))
    back, bare = [], []
    for run in range(runs):
        shop.release(f"shop-2.{run}", f"broken-{run}")
        ups: list[tuple[float, bool]] = []
        options = AgentOptions(TARGET, str(shop.root), shop.state(TARGET), shop.genesis, timeout=30)
        timed = _TimedPlugin(docker, ups)
        outcome = run_once(options, lambda _, plugin=timed: plugin, signer, signer.hint, environ)
        if outcome.action != "rolled-back" or len(ups) != 2 or ups[0][1] or not ups[1][1]:
            raise SystemExit(f"bench_rollback: run {run} did not fail and roll back: {outcome}")
        back.append(ups[1][0] - ups[0][0])
        broken_lock = sorted(
            (shop.state(TARGET) / "artifacts").glob("*/compose.stella.lock.yml"), key=os.path.getmtime
        )[-1]
        _compose(compose.up_command(daemon.endpoint, f"shop{TARGET}", broken_lock, 30), environ, check=False)
        start = time.perf_counter()
        _compose(compose.up_command(daemon.endpoint, f"shop{TARGET}", good_lock, 30), environ, check=True)
        bare.append(time.perf_counter() - start)
    rollback_s, bare_s = statistics.median(back), statistics.median(bare)
    return {
        "runs": runs,
        "rollback_s": rollback_s,
        "bare_s": bare_s,
        "ratio": rollback_s / bare_s,
        "rollback_runs_s": back,
        "bare_runs_s": bare,
        "compose": compose.version,
    }


def _lock_of(shop: Shop, decision: str) -> bytes:
    record = shop.record(decision)
    [artifact] = record["artifacts"]  # type: ignore[misc]
    shown = subprocess.run(
        ["git", "cat-file", "blob", f"stella/evidence:artifacts/{artifact['sha256']}/{artifact['name']}"],
        cwd=shop.root,
        check=True,
        capture_output=True,
    )
    return shown.stdout


def _compose(argv: list[str], environ: Mapping[str, str], *, check: bool) -> None:
    done = subprocess.run(argv, env=dict(environ), capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"bench_rollback: {' '.join(argv)} failed: {done.stderr[-500:]}")


if __name__ == "__main__":
    raise SystemExit(main())
