"""Benchmark tag -> digest resolution against the real registry: ours, skopeo, and a bare HTTP loop.

Starts `docker-registry` on loopback (with `tests/support`), pushes one small image with skopeo and
tags it t0..t<N-1> by PUTting its manifest under each tag. Then, in the same run, each repeat times:

  ours      `stella_oci.distribution.plugin.open(...)`, resolving all N tags one after the other
            (opening and closing the registry included). The main figure.
  ours x4   the same N tags through a thread pool of 4 sharing that one registry.
  stella    the core's `Resolver.resolve_all` over the N references: what `stella release create` and
            `stella reconcile` run (the `oci` plugin found through its entry point, a bounded pool of 8).
  bare      a keep-alive `httpx.Client` HEAD loop over the N tags with the same Accept header
            (client creation included): the floor for one connection in Python.
  skopeo    `skopeo inspect --format '{{.Digest}}'` once per tag, over the first K tags only (a
            process per tag is slow); its per-tag time is what is compared.

Every answer is checked against the pushed digest. Prints the median time per tag of each method over
the repeats, and the ratios skopeo/ours (target >= 10) and ours/bare (target <= 1.5).

    .venv/bin/python bench/bench_resolve.py [--tags 200] [--repeats 5] [--skopeo-tags 50] [-o json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.support

import httpx  # noqa: E402
from stella_oci.distribution import MANIFEST_MEDIA_TYPES, plugin  # noqa: E402

from reconciler.discover import discover  # noqa: E402
from reconciler.models import Settings  # noqa: E402
from reconciler.protocols import RegistryOptions  # noqa: E402
from reconciler.reference import parse  # noqa: E402
from reconciler.resolve import Resolver  # noqa: E402
from tests.support.oci import DirFiles, LayoutBuilder  # noqa: E402
from tests.support.registry import (  # noqa: E402
    RegistryServer,
    ToolMissing,
    require_tools,
    skopeo_digest,
    skopeo_push,
    start_registry,
)

REPOSITORY = "bench/app"
ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)
TARGET_SKOPEO_OVER_OURS = 10.0
TARGET_OURS_OVER_BARE = 1.5


def prepare(server: RegistryServer, workdir: Path, tags: int) -> str:
    """Push one image as `t0`, then tag it t1..t<tags-1> with manifest PUTs; its digest."""
    layout = LayoutBuilder(workdir / "layout")
    digest = layout.image("t0", content=b"stella bench\n").digest
    skopeo_push(layout.root, "t0", f"{server.host}/{REPOSITORY}:t0")
    with httpx.Client(base_url=server.url, trust_env=False) as client:
        got = client.get(f"/v2/{REPOSITORY}/manifests/t0", headers={"Accept": ACCEPT})
        got.raise_for_status()
        content_type = got.headers["content-type"]
        for n in range(1, tags):
            put = client.put(
                f"/v2/{REPOSITORY}/manifests/t{n}",
                content=got.content,
                headers={"Content-Type": content_type},
            )
            if put.status_code != 201 or put.headers.get("docker-content-digest") != digest:
                raise RuntimeError(f"retag t{n} failed: HTTP {put.status_code} {put.text}")
    return digest


def run_ours(server: RegistryServer, refs: list[str], digest: str, workers: int = 1) -> float:
    parsed = [parse(ref) for ref in refs]
    started = time.perf_counter()
    with plugin.open(RegistryOptions(host=server.host), DirFiles(ROOT)) as registry:
        if workers == 1:
            got = [registry.resolve(ref) for ref in parsed]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                got = list(pool.map(registry.resolve, parsed))
    elapsed = time.perf_counter() - started
    if set(got) != {digest}:
        raise RuntimeError(f"ours resolved {sorted(set(got))}, expected {digest}")
    return elapsed


def run_stella(refs: list[str], digest: str) -> float:
    settings = Settings.model_validate({"apiVersion": "stella/v1", "kind": "Settings", "tenant": "bench"})
    plugins = discover(kinds=("registries",))
    parsed = [parse(ref) for ref in refs]
    started = time.perf_counter()
    with Resolver(settings, plugins, DirFiles(ROOT)) as resolver:
        got = resolver.resolve_all(parsed)
    elapsed = time.perf_counter() - started
    if set(got.values()) != {digest}:
        raise RuntimeError(f"stella resolved {sorted(map(str, set(got.values())))}, expected {digest}")
    return elapsed


def run_bare(server: RegistryServer, tags: list[str], digest: str) -> float:
    started = time.perf_counter()
    with httpx.Client(base_url=server.url, trust_env=False) as client:
        got = [
            client.head(f"/v2/{REPOSITORY}/manifests/{tag}", headers={"Accept": ACCEPT}).headers.get(
                "docker-content-digest"
            )
            for tag in tags
        ]
    elapsed = time.perf_counter() - started
    if set(got) != {digest}:
        raise RuntimeError(f"bare HEAD loop got {sorted(map(str, set(got)))}, expected {digest}")
    return elapsed


def run_skopeo(refs: list[str], digest: str) -> float:
    started = time.perf_counter()
    got = [skopeo_digest(ref) for ref in refs]
    elapsed = time.perf_counter() - started
    if set(got) != {digest}:
        raise RuntimeError(f"skopeo reported {sorted(set(got))}, expected {digest}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tags", type=int, default=200, help="tags resolved per pass (default 200)")
    parser.add_argument("--repeats", type=int, default=5, help="passes per method (default 5)")
    parser.add_argument("--skopeo-tags", type=int, default=50, help="tags per skopeo pass (default 50)")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.tags < 1 or args.repeats < 1 or not 1 <= args.skopeo_tags <= args.tags:
        parser.error("need tags >= 1, repeats >= 1 and 1 <= skopeo-tags <= tags")
    try:
        require_tools()
    except ToolMissing as exc:
        print(f"bench_resolve: {exc}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="stella-bench-") as scratch:
        server = start_registry(Path(scratch) / "registry")
        try:
            digest = prepare(server, Path(scratch), args.tags)
            tags = [f"t{n}" for n in range(args.tags)]
            refs = [f"{server.host}/{REPOSITORY}:{tag}" for tag in tags]
            methods: dict[str, tuple[Callable[[], float], int]] = {
                "ours": (lambda: run_ours(server, refs, digest), args.tags),
                "ours x4": (lambda: run_ours(server, refs, digest, workers=4), args.tags),
                "stella": (lambda: run_stella(refs, digest), args.tags),
                "bare": (lambda: run_bare(server, tags, digest), args.tags),
                "skopeo": (lambda: run_skopeo(refs[: args.skopeo_tags], digest), args.skopeo_tags),
            }
            for run, _ in methods.values():  # warm-up, not counted
                if run is not methods["skopeo"][0]:
                    run()
            per_tag: dict[str, list[float]] = {name: [] for name in methods}
            for repeat in range(args.repeats):
                order = list(methods) if repeat % 2 == 0 else list(reversed(methods))
                for name in order:
                    run, count = methods[name]
                    per_tag[name].append(run() / count)
        finally:
            server.stop()

    medians = {name: statistics.median(values) * 1000 for name, values in per_tag.items()}
    ratios = {
        "skopeo/ours": medians["skopeo"] / medians["ours"],
        "ours/bare": medians["ours"] / medians["bare"],
        "skopeo/stella": medians["skopeo"] / medians["stella"],
        "stella/bare": medians["stella"] / medians["bare"],
    }
    met = {
        "skopeo/ours": ratios["skopeo/ours"] >= TARGET_SKOPEO_OVER_OURS,
        "ours/bare": ratios["ours/bare"] <= TARGET_OURS_OVER_BARE,
    }
    result = {
        "tags": args.tags,
        "repeats": args.repeats,
        "skopeo_tags": args.skopeo_tags,
        "median_ms_per_tag": {k: round(v, 3) for k, v in medians.items()},
        "ratios": {k: round(v, 2) for k, v in ratios.items()},
        "targets_met": met,
    }
    if args.output == "json":
        print(json.dumps(result, sort_keys=True))
    else:
        print(
            f"tag -> digest, docker-registry on loopback: {args.tags} tags x {args.repeats} repeats "
            f"(skopeo: first {args.skopeo_tags} tags per repeat)"
        )
        print(f"{'method':<10} {'median ms/tag':>13} {'min':>8} {'max':>8}")
        for name, values in per_tag.items():
            low, high = min(values) * 1000, max(values) * 1000
            print(f"{name:<10} {medians[name]:>13.3f} {low:>8.3f} {high:>8.3f}")
        print(
            f"skopeo/ours = {ratios['skopeo/ours']:.1f}x (target >= {TARGET_SKOPEO_OVER_OURS:g}: "
            f"{'met' if met['skopeo/ours'] else 'MISSED'}); "
            f"ours/bare = {ratios['ours/bare']:.2f}x (target <= {TARGET_OURS_OVER_BARE:g}: "
            f"{'met' if met['ours/bare'] else 'MISSED'})"
        )
        print(
            f"with the core's pool: skopeo/stella = {ratios['skopeo/stella']:.1f}x, "
            f"stella/bare = {ratios['stella/bare']:.2f}x"
        )
    return 1 if args.check and not all(met.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
