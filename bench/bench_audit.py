"""Benchmark `stella audit verify` against the floor of what any verifier must do, in the same run.

It builds an evidence branch of 10,000 decision records quickly, written straight into Git with pygit2
in a few commits, then packed as any clone is (under /dev/shm when it can), that verifies clean under a
ratified policy:
  - a genesis ratification (statement, bundle, `RatificationInputs`, `policies/`, `policy-files/`,
    `policy/stella.policy.json`) of a policy holding `stella.yaml`, the evidence key and a
    `trust/allowed_signers` of four ed25519 identities; every decision names that policy;
  - per decision: the statement, its bundle (DSSE, a real P-256 key), its inputs as `DecisionInputs`
    serialises them, whose requester and one approval are verified signed commits (a Git commit payload
    unique to the record, SSH-signed with SSHSIG, namespace `git`, ed25519, made natively here, and the
    commit id that gives), the rendered lock (allowed records), release locks and environment pointers.
At start-up it proves the signatures real: `ssh-keygen -Y check-novalidate -n git` accepts one, and `git
verify-commit` accepts the commit it makes (written to a scratch repository) under the allowed signers.
Then it times, alternating, in fresh child processes:
  - verify: `reconciler.audit.verify(..., root=<genesis>)`, the library call behind `stella audit verify
    --root` (every check: hashes, signatures under the policy chain, every identity re-verified, chains,
    inputs, artifacts, locks, pointers, history, reflog);
  - floor: in one process, the sha256 of every file of the branch, one ECDSA P-256 verification per
    bundle (its JSON and base64 decoded), and for each inputs file: JSON decoded, and per verified actor
    the payload and armor base64-decoded, the SSHSIG blob parsed, its key looked up in the allowed
    signers, one ed25519 verification and the sha1 of the rebuilt commit object (blobs read with pygit2,
    signatures checked with `cryptography`);
and once, the whole `stella audit verify --root` command (interpreter start-up included), for reference.
Medians of `--repeats` runs; the ratio verify/floor (target: at most 1.5); peak memory (ru_maxrss) of
the verify process and of the largest of its children (a worker, or the `git log` of the history
check). `--commits 500` shows what a long history adds; `--workers 0` runs verify in one process (what
one free CPU gives it; the floor always uses one). Exits 1 when the ratio is over the target.
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
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pygit2
import rfc8785

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audit_branch import (  # the branch under test, built by the sibling module
    IDENTITIES,
    REF,
    SIGNERS_FILE,
    TARGET,
    SshKey,
    _actors,
    _digest,
    _environments,
    _inputs,
    _lock,
    _sshsig_signed_data,
    _statement,
    build,
    canonical,
    commit_id,
    commit_object,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from reconciler.models import DecisionInputs
from reconciler.sign import KeySigner, generate_key, load_private_key, load_public_key, pae


def prove_signatures(workdir: Path, sample: bytes, signers: bytes) -> None:
    """Show that the signatures made here are real: `ssh-keygen -Y check-novalidate -n git` accepts the
    requester's of `sample` (an inputs file), and `git verify-commit` accepts the commit they make under
    the allowed signers, whose id is the one recorded. Raises SystemExit if not."""
    actor = json.loads(sample)["requester"]
    payload = base64.b64decode(actor["payload"])
    armored = actor["signature"].encode() + b"\n"
    proof = workdir / "proof"
    proof.mkdir()
    (proof / "payload.sig").write_bytes(armored)
    (proof / "allowed_signers").write_bytes(signers)
    done = subprocess.run(
        ["ssh-keygen", "-Y", "check-novalidate", "-n", "git", "-s", str(proof / "payload.sig")],
        input=payload,
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(
            f"ssh-keygen refuses a bench signature:\n{done.stdout.decode()}{done.stderr.decode()}"
        )
    scratch = pygit2.init_repository(str(proof / "scratch.git"), bare=True)
    oid = str(scratch.write(pygit2.enums.ObjectType.COMMIT, commit_object(payload, armored)))
    if oid != actor["commit"]:
        raise SystemExit(f"the commit is {oid}, not the {actor['commit']} recorded")
    config = f"gpg.ssh.allowedSignersFile={proof / 'allowed_signers'}"
    done = subprocess.run(
        ["git", "-C", str(proof / "scratch.git"), "-c", config, "verify-commit", oid],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"git verify-commit refuses a bench commit:\n{done.stderr.decode()}")


# --- the two measurements (each run in a fresh child process) -------------------------------------


def _allowed(signers: bytes) -> dict[bytes, tuple[str, ed25519.Ed25519PublicKey, str]]:
    """Key blob -> (identity, key, fingerprint) of an allowed-signers file of `principal
    namespaces="git" ssh-ed25519 <base64>` lines: all the floor needs to look a signing key up."""
    out = {}
    for line in signers.decode().splitlines():
        principal, _options, _key_type, encoded = line.split()[:4]
        blob = base64.b64decode(encoded)
        (size,) = struct.unpack_from(">I", blob, 0)
        raw = blob[4 + size + 4 :]
        fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        out[blob] = (principal, ed25519.Ed25519PublicKey.from_public_bytes(raw), fingerprint)
    return out


def _read_string(data: bytes, at: int) -> tuple[bytes, int]:
    (size,) = struct.unpack_from(">I", data, at)
    return data[at + 4 : at + 4 + size], at + 4 + size


def _check_actor(actor: dict[str, Any], allowed: dict[bytes, tuple[str, Any, str]]) -> None:
    """One recorded signed commit, the cheapest way: decode, parse SSHSIG, look the key up, one ed25519
    verification, one sha1 of the rebuilt commit. Raises on any mismatch."""
    payload = base64.b64decode(actor["payload"])
    armored = actor["signature"].encode()
    blob = base64.b64decode(b"".join(armored.split(b"\n")[1:-1]))
    if blob[:6] != b"SSHSIG" or blob[6:10] != b"\0\0\0\1":
        raise ValueError("not an SSHSIG blob")
    public, at = _read_string(blob, 10)
    namespace, at = _read_string(blob, at)
    _reserved, at = _read_string(blob, at)
    algorithm, at = _read_string(blob, at)
    wrapped, _ = _read_string(blob, at)
    _sig_type, at = _read_string(wrapped, 0)
    signature, _ = _read_string(wrapped, at)
    principal, key, fingerprint = allowed[public]
    if namespace != b"git" or algorithm != b"sha512" or principal != actor["identity"]:
        raise ValueError("wrong namespace, hash or principal")
    key.verify(signature, _sshsig_signed_data(payload, namespace))
    if fingerprint != actor["key"] or commit_id(payload, armored) != actor["commit"]:
        raise ValueError("wrong key or commit")


def floor(root: Path, public_pem: bytes) -> tuple[int, int]:
    """sha256 of every file on the branch, one ECDSA verification per bundle, every verified actor of
    every inputs file checked; returns the file count and the actors checked."""
    repo = pygit2.Repository(str(root))
    key = load_public_key(public_pem, "bench.pub")
    main = repo.revparse_single("refs/heads/main").peel(pygit2.Commit).tree
    allowed = _allowed(main[SIGNERS_FILE].read_raw())
    tree = repo.revparse_single(REF).peel(pygit2.Commit).tree
    files = identities = 0
    stack: list[tuple[pygit2.Tree, str]] = [(tree, "")]
    while stack:
        directory, top = stack.pop()
        for entry in directory:
            obj = repo[entry.id]
            if isinstance(obj, pygit2.Tree):
                stack.append((obj, top or entry.name or ""))
                continue
            assert isinstance(obj, pygit2.Blob)
            data = obj.data
            hashlib.sha256(data).hexdigest()
            files += 1
            if (entry.name or "").endswith(".sigstore.json"):
                envelope = json.loads(data)["dsseEnvelope"]
                payload = base64.b64decode(envelope["payload"])
                signature = base64.b64decode(envelope["signatures"][0]["sig"])
                key.verify(signature, pae(envelope["payloadType"], payload), ec.ECDSA(hashes.SHA256()))
            elif top == "inputs":
                doc = json.loads(data)
                for actor in [doc.get("requester"), *(a["signer"] for a in doc.get("approvals", []))]:
                    if isinstance(actor, dict) and actor.get("verified") is True:
                        _check_actor(actor, allowed)
                        identities += 1
    return files, identities


def verify(root: Path, genesis_id: str, workers: int | None) -> tuple[int, int]:
    from reconciler import audit
    from reconciler.repo import Repo

    repo = Repo(root)
    report = audit.verify(repo, REF, audit.load_keys(repo, "main"), root=genesis_id, workers=workers)
    if report.findings:
        raise SystemExit(f"the bench branch does not verify: {[str(f) for f in report.findings[:5]]}")
    if report.genesis != genesis_id or not report.identities:
        raise SystemExit(f"verified from {report.genesis}, {report.identities} identities re-verified")
    return report.records, report.identities


def _child(what: str, root: Path, public_key: Path, genesis_id: str, workers: int | None) -> None:
    start = time.perf_counter()
    if what == "floor":
        count, identities = floor(root, public_key.read_bytes())
    else:
        count, identities = verify(root, genesis_id, workers)
    elapsed = time.perf_counter() - start
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    if server is not None and getattr(server, "_forkserver_pid", None) is not None:
        server._stop()  # reap the fork server, and with it its workers: their peak memory counts too
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "count": count,
                "identities": identities,
                "maxrss_kb": own,
                "children_maxrss_kb": children,
            }
        )
    )


def _run_child(
    what: str, root: Path, public_key: Path, genesis_id: str, workers: int | None
) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", what, str(root), str(public_key), genesis_id]
    done = subprocess.run(
        [*argv, *(["--workers", str(workers)] if workers is not None else [])],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr}{done.stdout}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _cli(root: Path, genesis_id: str) -> tuple[float, dict[str, Any]]:
    stella = Path(sys.executable).with_name("stella")
    start = time.perf_counter()
    done = subprocess.run(
        [str(stella), "audit", "verify", "--repo", str(root), "--root", genesis_id, "-o", "json"],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(
            f"stella audit verify failed ({done.returncode}):\n{done.stdout[:2000]}{done.stderr}"
        )
    report: dict[str, Any] = json.loads(done.stdout)
    return elapsed, report


def _sample(people: tuple[SshKey, ...]) -> bytes:
    """One decision's inputs, built as `build` builds them; checked that the bench's canonical JSON is
    RFC 8785's and that the inputs are exactly what `DecisionInputs` serialises (so `verify` reads what
    a real pass writes)."""
    lock = _lock(7)
    actors = _actors(7, lock, "dev", people)
    sample = _inputs(7, lock, "dev", _environments()["dev"], *actors, _digest("policy"))
    named = {"id": _digest("policy"), "record": _digest("genesis")}
    statement = json.loads(
        _statement(7, lock, "dev", "allow", "0" * 64, {"a": "1" * 64}, None, actors, named)
    )
    for value in (statement, lock, json.loads(sample)):
        assert canonical(value) == rfc8785.dumps(value), "canonical() differs from RFC 8785"
    model = DecisionInputs.model_validate_json(sample)
    assert rfc8785.dumps(model.model_dump(mode="json")) == sample, "the inputs differ from DecisionInputs'"
    return sample


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--commits", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    parser.add_argument("--workdir", help="where to build the branch (default: /dev/shm when writable)")
    parser.add_argument(
        "--workers",
        type=int,
        help="processes `verify` may use (default: its own choice; 0: this process alone, one CPU)",
    )
    parser.add_argument(
        "--child", nargs=4, metavar=("WHAT", "ROOT", "KEY", "GENESIS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], Path(args.child[1]), Path(args.child[2]), args.child[3], args.workers)
        return 0
    shm = Path("/dev/shm")
    workdir = args.workdir or (str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None)
    with tempfile.TemporaryDirectory(prefix="stella-bench-audit-", dir=workdir) as tmp:
        key = Path(tmp) / "key.pem"
        generate_key(key)
        public = key.with_name("key.pem.pub")
        people = tuple(SshKey.generate(identity) for identity in IDENTITIES)
        signers = "".join(p.allowed_signers_line() for p in people).encode()
        prove_signatures(Path(tmp), _sample(people), signers)
        root = Path(tmp) / "repo"
        start = time.perf_counter()
        built = build(
            root, args.records, args.commits, KeySigner(load_private_key(key)), public.read_bytes(), people
        )
        elapsed_build = time.perf_counter() - start
        runs: dict[str, list[dict[str, Any]]] = {"verify": [], "floor": []}
        _run_child("floor", root, public, built.genesis, None)  # warm the page cache
        for _ in range(args.repeats):
            for what in ("verify", "floor"):
                runs[what].append(_run_child(what, root, public, built.genesis, args.workers))
        cli, cli_report = _cli(root, built.genesis)
    verify_s = statistics.median(r["seconds"] for r in runs["verify"])
    floor_s = statistics.median(r["seconds"] for r in runs["floor"])
    identities = runs["verify"][0]["identities"]
    if identities != runs["floor"][0]["identities"] or cli_report["identities"] != identities:
        raise SystemExit(
            f"identities: verify {identities}, floor {runs['floor'][0]['identities']}, "
            f"CLI {cli_report['identities']}"
        )
    row = {
        "records": runs["verify"][0]["count"],
        "decisions": args.records,
        "identities": identities,
        "genesis": built.genesis,
        "commits": args.commits,
        "files": runs["floor"][0]["count"],
        "cpus": os.cpu_count(),
        "workers": args.workers,
        "build_s": round(elapsed_build, 2),
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
            f"audit verify on {row['records']} records (genesis + {row['decisions']} decisions, "
            f"{row['files']} files, {row['commits']} commits), {row['identities']} signed commits "
            "re-verified, ",
            end="",
        )
        workers = "" if args.workers is None else f" (verify with --workers {args.workers})"
        print(f"{row['cpus']} CPUs{workers}; ", end="")
        print(f"branch built in {row['build_s']} s; medians of {row['repeats']} runs")
        print(f"{'':34}{'median s':>10}{'peak MB':>10}")
        print(f"{'verify (library call, --root)':34}{row['verify_s']:>10}{row['verify_peak_mb']:>10}")
        print(f"{'  its largest child':34}{'':>10}{row['verify_child_peak_mb']:>10}")
        print(f"{'floor (sha256 + ECDSA + ed25519)':34}{row['floor_s']:>10}{row['floor_peak_mb']:>10}")
        print(f"{'stella audit verify --root (CLI)':34}{row['cli_s']:>10}{'':>10}")
        verdict = "within" if row["ratio"] <= TARGET else "OVER"
        print(f"ratio verify/floor: {row['ratio']} ({verdict} the target of {TARGET})")
    return 0 if row["ratio"] <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
