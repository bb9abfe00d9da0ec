"""Benchmark the reconcile pass: a no-op pass on a long history, and a pass deciding 100 promotions.

For each size (releases: 500, 1000, 2000; evidence records: 2.5 per release, so 5,000 at 2,000) it
builds a real Git repository (its policy: `stella.yaml`, the environments and the signing key's public
half in `trust/evidence-keys/`), decides every promotion once (that first pass, which also ratifies the
genesis policy, is timed too), then times:
  - a no-op pass with the index cache warm (the normal case: nothing new since the last pass),
  - the same pass with the cache deleted first (a full pass over all of history: the baseline,
    measured in the same process),
  - a pass deciding 100 newly merged promotions.
Medians of several runs; the ratio full/no-op shows what the incremental path saves, and the no-op
figures across sizes show whether it grows with history. Run: `.venv/bin/python bench/bench_reconcile.py`.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.discover import discover
from reconciler.history import cache_path
from reconciler.loop import reconcile
from reconciler.repo import Repo
from reconciler.results import PassResult
from reconciler.sign import KeySigner, generate_key, load_private_key

ENVIRONMENTS = ("dev", "test", "perf", "uat", "edge")
NEW = "canary"  # defined from the start, so that the 100 new promotions take the incremental path
NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def _git(root: Path, *args: str) -> None:
    env = {
        "GIT_AUTHOR_NAME": "Requester",
        "GIT_AUTHOR_EMAIL": "requester@example.com",
        "GIT_COMMITTER_NAME": "Requester",
        "GIT_COMMITTER_EMAIL": "requester@example.com",
        "PATH": "/usr/bin:/bin",
        "HOME": str(root),
    }
    subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True)


def _digest(i: int, component: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(f"{component}-{i}".encode()).hexdigest()


def _release(i: int) -> str:
    return (
        f"apiVersion: stella/v1\nkind: Release\nname: app-{i}\ncomponents:\n"
        f"  web: {{image: registry.example.com/shop/web:{i}, digest: {_digest(i, 'web')}}}\n"
        f"  worker: {{image: registry.example.com/shop/worker:{i}, digest: {_digest(i, 'worker')}}}\n"
    )


def _promotion(release: int, env: str) -> str:
    return f"apiVersion: stella/v1\nkind: Promotion\nrelease: app-{release}\nenvironment: {env}\n"


def build(root: Path, releases: int, records: int, public_pem: bytes) -> None:
    """The repository: settings, environments and the evidence key (the policy the first pass ratifies
    as its genesis), releases and promotions, in one commit."""
    root.mkdir(parents=True)
    _git(root, "init", "-q", "-b", "main")
    (root / "stella.yaml").write_text("apiVersion: stella/v1\nkind: Settings\ntenant: bench\noffline: true\n")
    (root / "trust" / "evidence-keys").mkdir(parents=True)
    (root / "trust" / "evidence-keys" / "bench.pub").write_bytes(public_pem)
    (root / "environments").mkdir()
    for env in (*ENVIRONMENTS, NEW):
        (root / "environments" / f"{env}.yaml").write_text(
            f"apiVersion: stella/v1\nkind: Environment\nname: {env}\n"
        )
    (root / "releases").mkdir()
    for i in range(releases):
        (root / "releases" / f"app-{i}.yaml").write_text(_release(i))
    (root / "promotions").mkdir()
    for n in range(records):
        release, env = n % releases, ENVIRONMENTS[n // releases]
        (root / "promotions" / f"app-{release}--{env}.yaml").write_text(_promotion(release, env))
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "history")


def one_pass(root: Path, signer: KeySigner) -> tuple[float, PassResult]:
    start = time.perf_counter()
    result = reconcile(
        Repo(root), discover(offline=True), now=lambda: NOW, signer=lambda: signer, offline=True
    )
    elapsed = time.perf_counter() - start
    assert not result.problems and not result.transient, (result.problems, result.transient)
    assert not result.ignored, result.ignored  # every record on the branch verifies under its policy
    return elapsed, result


def measure(
    size: int, repeats: int, workdir: Path, signer: KeySigner, public_pem: bytes
) -> dict[str, float | int]:
    records = size * 5 // 2
    root = workdir / f"repo-{size}"
    build(root, size, records, public_pem)
    first, result = one_pass(root, signer)  # ratifies the genesis, then decides every promotion
    assert result.ratification is not None and len(result.recorded) == records, len(result.recorded)
    noop = [one_pass(root, signer)[0] for _ in range(repeats)]
    profiler = cProfile.Profile()  # Python calls made by one no-op pass: the work, free of machine noise
    profiler.runcall(one_pass, root, signer)
    noop_calls = sum(stat[1] for stat in pstats.Stats(profiler).stats.values())  # type: ignore[attr-defined]
    cache = cache_path(Repo(root), "refs/heads/stella/evidence")
    full = []
    for _ in range(max(3, repeats // 2)):
        for leftover in cache.parent.iterdir():
            leftover.unlink()
        full.append(one_pass(root, signer)[0])
    for n in range(100):  # 100 new promotions, merged in one commit
        (root / "promotions" / f"app-{n}--{NEW}.yaml").write_text(_promotion(n, NEW))
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "100 promotions")
    hundred, result = one_pass(root, signer)
    assert len(result.recorded) == 100 and result.ratification is None, len(result.recorded)
    return {
        "releases": size,
        "records": records,
        "first_pass_s": round(first, 3),
        "first_pass_ms_per_decision": round(first * 1000 / records, 3),
        "noop_ms": round(statistics.median(noop) * 1000, 2),
        "noop_calls": noop_calls,
        "full_ms": round(statistics.median(full) * 1000, 2),
        "full_over_noop": round(statistics.median(full) / statistics.median(noop), 1),
        "hundred_s": round(hundred, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,1000,2000")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stella-bench-") as tmp:
        key = Path(tmp) / "key.pem"
        generate_key(key)
        signer = KeySigner(load_private_key(key))
        public_pem = key.with_name("key.pem.pub").read_bytes()
        rows = [measure(int(s), args.repeats, Path(tmp), signer, public_pem) for s in args.sizes.split(",")]
    if args.output == "json":
        print(json.dumps(rows, indent=2))
        return 0
    columns = ["releases", "records", "first_pass_s", "first_pass_ms_per_decision", "noop_ms", "noop_calls"]
    columns += ["full_ms"]
    columns += ["full_over_noop", "hundred_s"]
    print(" ".join(f"{c:>14}" for c in columns))
    for row in rows:
        print(" ".join(f"{row[c]:>14}" for c in columns))
    first, last = rows[0], rows[-1]
    growth = float(last["noop_ms"]) / float(first["noop_ms"])
    calls = float(last["noop_calls"]) / float(first["noop_calls"])
    sizes = f"from {first['releases']} to {last['releases']} releases"
    print(f"no-op pass growth {sizes}: {growth:.2f}x in time, {calls:.2f}x in calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
