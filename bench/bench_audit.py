"""Benchmark `stella audit verify` against the floor of what any verifier must do, in the same run.

It builds an evidence branch of 10,000 records quickly (statements, bundles signed with a real P-256
key, inputs, artifacts, release locks and environment pointers, written straight into Git with pygit2
in a few commits, then packed as any clone is; under /dev/shm when it can) that verifies clean, then
times, alternating, in fresh child processes:
  - verify: `reconciler.audit.verify()`, the library call behind `stella audit verify` (every check:
    hashes, signatures, chains, inputs, artifacts, locks, pointers, history, reflog);
  - floor: in one process, the sha256 of every file of the branch plus one ECDSA P-256 verification
    per bundle with `cryptography` (blobs read with pygit2, each bundle's JSON and base64 decoded);
and once, the whole `stella audit verify` command (interpreter start-up included), for reference.
Medians of `--repeats` runs; the ratio verify/floor (target: at most 1.5); peak memory (ru_maxrss) of
the verify process and of the largest of its children (a worker, or the `git log` of the history
check). `--commits 500` shows what a long history adds. Exits 1 when the ratio is over the target.
Run: `.venv/bin/python bench/bench_audit.py` (`-o json` for the figures as JSON).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import multiprocessing.forkserver
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pygit2
import rfc8785

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from reconciler.evidence import release_id, sha256_hex
from reconciler.sign import KeySigner, generate_key, load_private_key, load_public_key, pae

ENVIRONMENTS = ("dev", "test", "staging", "uat", "prod")
REF = "refs/heads/stella/evidence"
KEY_FILE = "trust/evidence-keys/bench.pub"
SETTINGS = b"apiVersion: stella/v1\nkind: Settings\ntenant: bench\noffline: true\n"
AUTHOR = pygit2.Signature("Stella reconciler", "reconciler@stella.invalid", 1_790_000_000, 0)
TARGET = 1.5


# --- building the branch ---------------------------------------------------------------------------


def canonical(value: Any) -> bytes:
    """RFC 8785 bytes of the values built here (ASCII keys and strings, integers, no floats), for which
    sorted compact `json.dumps` is the same and many times faster than the general `rfc8785.dumps`
    (`main` checks that on a sample before building)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def _lock(n: int) -> dict[str, Any]:
    name = f"app-{n}"
    components = {
        c: {"digest": _digest(f"{c}-{n}"), "image": f"registry.example.com/shop/{c}", "tag": f"1.{n}.0"}
        for c in ("web", "worker")
    }
    pinned = {c: f"{v['image']}@{v['digest']}" for c, v in components.items()}
    return {"components": components, "id": release_id(name, pinned), "name": name}


def _time(i: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_780_000_000 + 60 * i))


def _inputs(i: int, lock: dict[str, Any], env: str) -> bytes:
    """About the size of a real inputs file (1.8 KB)."""
    return canonical(
        {
            "kind": "DecisionInputs",
            "version": 1,
            "tenant": "bench",
            "promotionId": f"{lock['name']}--{env}",
            "release": lock,
            "environment": {"apiVersion": "stella/v1", "kind": "Environment", "name": env, "gates": []},
            "gates": [
                {"name": g, "options": {}, "version": "0.1.0"} for g in ("order", "freeze", "approvals")
            ],
            "groups": {"release-managers": ["release-manager@example.com", "platform-lead@example.com"]},
            "requester": {"commit": hashlib.sha1(str(i).encode()).hexdigest(), "verified": False},
            "template": {"path": "templates/shop.compose.yml.j2", "sha256": _digest("template")[7:]},
            "decidedAt": _time(i),
            "padding": "x" * 600,
        }
    )


def _artifact(i: int, lock: dict[str, Any], env: str) -> bytes:
    lines = [f"# rendered by stella for {env} (record {i})", "services:"]
    for name, component in sorted(lock["components"].items()):
        lines += [
            f"  {name}:",
            f"    image: {component['image']}@{component['digest']}",
            "    restart: always",
        ]
        lines += ["    environment:", "      LOG_LEVEL: info", f"      STELLA_ENV: {env}"]
    return ("\n".join(lines) + "\n" + "#" * 700 + "\n").encode()


def _statement(
    i: int,
    lock: dict[str, Any],
    env: str,
    result: str,
    inputs_hex: str,
    artifacts: dict[str, str],
    previous: str | None,
) -> bytes:
    gates = [
        {
            "gate": g,
            "message": f"{g} says {result}",
            "reason": "ok" if result == "allow" else "blocked",
            "status": s,
        }
        for g, s in (("environment-order", "pass"), ("freeze-window", "pass"))
    ] + [
        {
            "gate": "approvals",
            "message": "m",
            "reason": "r",
            "status": "pass" if result == "allow" else "fail",
        }
    ]
    return canonical(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [
                {"digest": {"sha256": c["digest"][7:]}, "name": c["image"]}
                for c in lock["components"].values()
            ],
            "predicateType": "https://stella.dev/attestations/evidence/v1",
            "predicate": {
                "type": "release_decision",
                "tenant": "bench",
                "generator": {"name": "stella", "version": "0.1.0"},
                "release": lock,
                "environment": env,
                "promotion": {"id": f"{lock['name']}--{env}", "reason": "bench", "commit": "0" * 40},
                "actors": {
                    "requester": {"identity": None, "verified": False, "reason": "unsigned"},
                    "approvers": [],
                },
                "decision": {
                    "result": result,
                    "gates": gates,
                    "reasons": sorted(f"{g['gate']}/{g['reason']}" for g in gates),
                },
                "artifacts": [{"name": n, "sha256": h} for n, h in sorted(artifacts.items())],
                "inputs": {"sha256": inputs_hex},
                "requestedAt": _time(i),
                "decidedAt": _time(i),
                "previous": previous,
            },
        }
    )


def _tree(repo: pygit2.Repository, entries: dict[str, pygit2.Oid], mode: int) -> pygit2.Oid:
    builder = repo.TreeBuilder()
    for name, oid in entries.items():
        builder.insert(name, oid, mode)
    return builder.write()


def build(root: Path, records: int, commits: int, signer: KeySigner, public_pem: bytes) -> str:
    """A repository with `main` (settings, the evidence key) and an evidence branch of `records`
    records in `commits` commits; returns the evidence head."""
    repo = pygit2.init_repository(str(root), bare=False, initial_head="main")
    repo.config["user.name"], repo.config["user.email"] = AUTHOR.name, AUTHOR.email  # for the reflog
    blob, tree_mode = pygit2.enums.FileMode.BLOB, pygit2.enums.FileMode.TREE
    key_tree = _tree(repo, {"bench.pub": repo.create_blob(public_pem)}, blob)
    trust = _tree(repo, {"evidence-keys": key_tree}, tree_mode)
    main_tree = repo.TreeBuilder()
    main_tree.insert("stella.yaml", repo.create_blob(SETTINGS), blob)
    main_tree.insert("trust", trust, tree_mode)
    repo.create_commit("refs/heads/main", AUTHOR, AUTHOR, "bench settings", main_tree.write(), [])

    # one builder per directory, kept across commits: each commit writes them as they are by then
    evidence, inputs, artifacts, releases, pointers = (repo.TreeBuilder() for _ in range(5))
    heads: dict[str, str | None] = dict.fromkeys(ENVIRONMENTS)
    current: dict[str, dict[str, Any] | None] = dict.fromkeys(ENVIRONMENTS)
    parents: list[pygit2.Oid] = []
    per_commit = -(-records // commits)
    for i in range(records):
        env = ENVIRONMENTS[i % len(ENVIRONMENTS)]
        lock = _lock(i // len(ENVIRONMENTS))
        if env == ENVIRONMENTS[0]:
            releases.insert(f"{lock['name']}.json", repo.create_blob(canonical(lock)), blob)
        result = "deny" if i % 10 == 9 else "allow"
        raw_inputs = _inputs(i, lock, env)
        inputs_hex = sha256_hex(raw_inputs)
        inputs.insert(f"{inputs_hex}.json", repo.create_blob(raw_inputs), blob)
        made: dict[str, str] = {}
        if result == "allow":
            art = _artifact(i, lock, env)
            made["compose.stella.lock.yml"] = sha256_hex(art)
            rendered = _tree(repo, {"compose.stella.lock.yml": repo.create_blob(art)}, blob)
            artifacts.insert(made["compose.stella.lock.yml"], rendered, tree_mode)
        statement = _statement(i, lock, env, result, inputs_hex, made, heads[env])
        hex_id = sha256_hex(statement)
        evidence.insert(f"{hex_id}.json", repo.create_blob(statement), blob)
        evidence.insert(f"{hex_id}.sigstore.json", repo.create_blob(signer.sign(statement)), blob)
        heads[env] = f"sha256:{hex_id}"
        if result == "allow":
            current[env] = {
                "artifacts": made,
                "decidedAt": _time(i),
                "evidence": heads[env],
                "release": lock["name"],
                "releaseId": lock["id"],
            }
        if (i + 1) % per_commit == 0 or i + 1 == records:
            for name in ENVIRONMENTS:
                pointer = canonical({"current": current[name], "environment": name, "head": heads[name]})
                pointed = _tree(repo, {"stella.version.json": repo.create_blob(pointer)}, blob)
                pointers.insert(name, pointed, tree_mode)
            top = repo.TreeBuilder()
            for name, builder in (
                ("artifacts", artifacts),
                ("environments", pointers),
                ("evidence", evidence),
                ("inputs", inputs),
                ("releases", releases),
            ):
                top.insert(name, builder.write(), tree_mode)
            message = f"evidence: records up to {i + 1}"
            commit = repo.create_commit(None, AUTHOR, AUTHOR, message, top.write(), parents)
            if parents:
                repo.lookup_reference(REF).set_target(commit, message)
            else:
                repo.create_reference_direct(REF, commit, False, message=message)
            parents = [commit]
    # packed, as any clone of the branch is (an auditor's, a packet's)
    subprocess.run(["git", "-C", str(root), "repack", "-a", "-d", "-q"], check=True)
    return str(parents[0])


# --- the two measurements (each run in a fresh child process) -------------------------------------


def floor(root: Path, public_pem: bytes) -> int:
    """sha256 of every file on the branch, one ECDSA verification per bundle; returns the file count."""
    repo = pygit2.Repository(str(root))
    key = load_public_key(public_pem, "bench.pub")
    tree = repo.revparse_single(REF).peel(pygit2.Commit).tree
    files = 0
    stack = [tree]
    while stack:
        for entry in stack.pop():
            obj = repo[entry.id]
            if isinstance(obj, pygit2.Tree):
                stack.append(obj)
                continue
            data = obj.data
            hashlib.sha256(data).hexdigest()
            files += 1
            if entry.name.endswith(".sigstore.json"):
                envelope = json.loads(data)["dsseEnvelope"]
                payload = base64.b64decode(envelope["payload"])
                signature = base64.b64decode(envelope["signatures"][0]["sig"])
                key.verify(signature, pae(envelope["payloadType"], payload), ec.ECDSA(hashes.SHA256()))
    return files


def verify(root: Path) -> int:
    from reconciler import audit
    from reconciler.repo import Repo

    repo = Repo(root)
    report = audit.verify(repo, REF, audit.load_keys(repo, "main"))
    if report.findings:
        raise SystemExit(f"the bench branch does not verify: {[str(f) for f in report.findings[:5]]}")
    return report.records


def _child(what: str, root: Path, public_key: Path) -> None:
    start = time.perf_counter()
    count = floor(root, public_key.read_bytes()) if what == "floor" else verify(root)
    elapsed = time.perf_counter() - start
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    if server is not None and getattr(server, "_forkserver_pid", None) is not None:
        server._stop()  # reap the fork server, and with it its workers: their peak memory counts too
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"seconds": elapsed, "count": count, "maxrss_kb": own, "children_maxrss_kb": children}))


def _run_child(what: str, root: Path, public_key: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", what, str(root), str(public_key)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr}{done.stdout}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _cli(root: Path) -> float:
    stella = Path(sys.executable).with_name("stella")
    start = time.perf_counter()
    done = subprocess.run(
        [str(stella), "audit", "verify", "--repo", str(root), "-o", "json"], capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(
            f"stella audit verify failed ({done.returncode}):\n{done.stdout[:2000]}{done.stderr}"
        )
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--commits", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    parser.add_argument("--workdir", help="where to build the branch (default: /dev/shm when writable)")
    parser.add_argument("--child", nargs=3, metavar=("WHAT", "ROOT", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return 0
    shm = Path("/dev/shm")
    workdir = args.workdir or (str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None)
    with tempfile.TemporaryDirectory(prefix="stella-bench-audit-", dir=workdir) as tmp:
        sample = _lock(7)
        statement = json.loads(_statement(7, sample, "dev", "allow", "0" * 64, {"a": "1" * 64}, None))
        assert canonical(statement) == rfc8785.dumps(statement) and canonical(sample) == rfc8785.dumps(sample)
        key = Path(tmp) / "key.pem"
        generate_key(key)
        public = key.with_name("key.pem.pub")
        root = Path(tmp) / "repo"
        start = time.perf_counter()
        build(root, args.records, args.commits, KeySigner(load_private_key(key)), public.read_bytes())
        built = time.perf_counter() - start
        runs: dict[str, list[dict[str, Any]]] = {"verify": [], "floor": []}
        _run_child("floor", root, public)  # warm the page cache
        for _ in range(args.repeats):
            for what in ("verify", "floor"):
                runs[what].append(_run_child(what, root, public))
        cli = _cli(root)
    verify_s = statistics.median(r["seconds"] for r in runs["verify"])
    floor_s = statistics.median(r["seconds"] for r in runs["floor"])
    row = {
        "records": args.records,
        "commits": args.commits,
        "files": runs["floor"][0]["count"],
        "cpus": os.cpu_count(),
        "build_s": round(built, 2),
        "repeats": args.repeats,
        "verify_s": round(verify_s, 3),
        "floor_s": round(floor_s, 3),
        "ratio": round(verify_s / floor_s, 2),
        "target": TARGET,
        "verify_runs_s": [round(r["seconds"], 3) for r in runs["verify"]],
        "floor_runs_s": [round(r["seconds"], 3) for r in runs["floor"]],
        "verify_peak_mb": round(max(r["maxrss_kb"] for r in runs["verify"]) / 1024, 1),
        "verify_child_peak_mb": round(max(r["children_maxrss_kb"] for r in runs["verify"]) / 1024, 1),
        "floor_peak_mb": round(max(r["maxrss_kb"] for r in runs["floor"]) / 1024, 1),
        "cli_s": round(cli, 3),
    }
    if args.output == "json":
        print(json.dumps(row, indent=2))
    else:
        print(
            f"audit verify on {row['records']} records ({row['files']} files, {row['commits']} commits), ",
            end="",
        )
        print(f"{row['cpus']} CPUs; branch built in {row['build_s']} s; medians of {row['repeats']} runs")
        print(f"{'':26}{'median s':>10}{'peak MB':>10}")
        print(f"{'verify (library call)':26}{row['verify_s']:>10}{row['verify_peak_mb']:>10}")
        print(f"{'  its largest child':26}{'':>10}{row['verify_child_peak_mb']:>10}")
        print(f"{'floor (sha256 + ECDSA)':26}{row['floor_s']:>10}{row['floor_peak_mb']:>10}")
        print(f"{'stella audit verify (CLI)':26}{row['cli_s']:>10}{'':>10}")
        verdict = "within" if row["ratio"] <= TARGET else "OVER"
        print(f"ratio verify/floor: {row['ratio']} ({verdict} the target of {TARGET})")
    return 0 if row["ratio"] <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
