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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pygit2
import rfc8785
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from reconciler import __version__
from reconciler.evidence import release_id, sha256_hex
from reconciler.governance import POINTER, Policy, pointer_json, ratification_statement
from reconciler.models import DecisionInputs, Environment, RatificationInputs, Settings
from reconciler.sign import KeySigner, generate_key, load_private_key, load_public_key, pae

ENVIRONMENTS = ("dev", "test", "staging", "uat", "prod")
REF = "refs/heads/stella/evidence"
KEY_FILE = "trust/evidence-keys/bench.pub"
SIGNERS_FILE = "trust/allowed_signers"
SETTINGS = (
    b"apiVersion: stella/v1\nkind: Settings\ntenant: bench\noffline: true\n"
    b"governance: {required: 1, groups: [policy-admins]}\n"
)
IDENTITIES = (
    "requester@example.com",
    "release-manager@example.com",
    "platform-lead@example.com",
    "qa-lead@example.com",
)
AUTHOR = pygit2.Signature("Stella reconciler", "reconciler@stella.invalid", 1_790_000_000, 0)
START = 1_780_000_000
"""When the first decision is made (seconds since the epoch); one decision a minute after it."""
TEMPLATE = "templates/shop.compose.yml.j2"
TARGET = 1.5


# --- SSH signatures (PROTOCOL.sshsig), made natively ------------------------------------------------


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _sshsig_signed_data(message: bytes, namespace: bytes) -> bytes:
    """What an SSHSIG signature signs: magic, namespace, reserved, hash algorithm, H(message)."""
    digest = hashlib.sha512(message).digest()
    return (
        b"SSHSIG" + _ssh_string(namespace) + _ssh_string(b"") + _ssh_string(b"sha512") + _ssh_string(digest)
    )


@dataclass(frozen=True)
class SshKey:
    """An ed25519 identity: signs as `ssh-keygen -Y sign -n git` does."""

    identity: str
    private: ed25519.Ed25519PrivateKey
    blob: bytes
    """The public key's SSH wire encoding (string "ssh-ed25519", string key)."""

    @classmethod
    def generate(cls, identity: str) -> SshKey:
        private = ed25519.Ed25519PrivateKey.generate()
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(identity, private, _ssh_string(b"ssh-ed25519") + _ssh_string(raw))

    @property
    def fingerprint(self) -> str:
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")

    def allowed_signers_line(self) -> str:
        return f'{self.identity} namespaces="git" ssh-ed25519 {base64.b64encode(self.blob).decode()}\n'

    def sign(self, message: bytes, namespace: bytes = b"git") -> str:
        """The armored signature, as ssh-keygen writes it (base64 in 70-character lines)."""
        signature = self.private.sign(_sshsig_signed_data(message, namespace))
        blob = (
            b"SSHSIG"
            + struct.pack(">I", 1)
            + _ssh_string(self.blob)
            + _ssh_string(namespace)
            + _ssh_string(b"")
            + _ssh_string(b"sha512")
            + _ssh_string(_ssh_string(b"ssh-ed25519") + _ssh_string(signature))
        )
        text = base64.b64encode(blob).decode()
        lines = [text[at : at + 70] for at in range(0, len(text), 70)]
        return "-----BEGIN SSH SIGNATURE-----\n" + "\n".join(lines) + "\n-----END SSH SIGNATURE-----\n"


def commit_object(payload: bytes, armored: bytes) -> bytes:
    """The Git commit made of `payload` signed with `armored`: a `gpgsig` header after the others, its
    continuation lines indented by one space."""
    header, sep, message = payload.partition(b"\n\n")
    return header + b"\ngpgsig " + b"\n ".join(armored.rstrip(b"\n").split(b"\n")) + sep + message


def commit_id(payload: bytes, armored: bytes) -> str:
    body = commit_object(payload, armored)
    return hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()


# --- building the branch ---------------------------------------------------------------------------


def canonical(value: Any) -> bytes:
    """RFC 8785 bytes of the values built here (ASCII keys and strings, integers, no floats), for which
    sorted compact `json.dumps` is the same and many times faster than the general `rfc8785.dumps`
    (`main` checks that on a sample before building)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def _sha1(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()


def _lock(n: int) -> dict[str, Any]:
    name = f"app-{n}"
    components = {
        c: {"digest": _digest(f"{c}-{n}"), "image": f"registry.example.com/shop/{c}", "tag": f"1.{n}.0"}
        for c in ("web", "worker")
    }
    pinned = {c: f"{v['image']}@{v['digest']}" for c, v in components.items()}
    return {"components": components, "id": release_id(name, pinned), "name": name}


def _stamp(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _time(i: int) -> str:
    return _stamp(START + 60 * i)


def _environments() -> dict[str, dict[str, Any]]:
    """Each environment as the inputs record it (the model's serialisation, defaults included)."""
    out = {}
    for name in ENVIRONMENTS:
        environment = Environment.model_validate(
            {
                "apiVersion": "stella/v1",
                "kind": "Environment",
                "name": name,
                "template": TEMPLATE,
                "approvals": {"required": 1, "groups": ["release-managers"]},
            }
        )
        out[name] = environment.model_dump(mode="json")
    return out


def _signed_commit(who: SshKey, when: int, parent: str, tree_seed: str, message: str) -> dict[str, Any]:
    """A verified actor as `InputActor` serialises it: a Git commit payload unique to `tree_seed`, its
    SSH signature, and the commit id they make."""
    name = who.identity.split("@")[0]
    payload = (
        f"tree {_sha1(tree_seed)}\nparent {parent}\n"
        f"author {name} <{who.identity}> {when} +0000\ncommitter {name} <{who.identity}> {when} +0000\n\n"
        f"{message}"
    ).encode()
    armored = who.sign(payload)
    return {
        "code": "",
        "commit": commit_id(payload, armored.encode()),
        "identity": who.identity,
        "key": who.fingerprint,
        "payload": base64.b64encode(payload).decode(),
        "reason": "",
        "signature": armored.rstrip("\n"),  # as Git stores it in the commit (and the reconciler records it)
        "time": _stamp(when),
        "verified": True,
    }


Actor = dict[str, Any]
"""A verified signed commit, as `InputActor` serialises it."""


def _actors(i: int, lock: dict[str, Any], env: str, people: tuple[SshKey, ...]) -> tuple[Actor, Actor]:
    """The requester's and one approver's signed commits for decision `i` (two different people)."""
    requester, approver = people[i % len(people)], people[(i + 1) % len(people)]
    decided = START + 60 * i
    asked = _signed_commit(
        requester,
        decided - 50,
        _sha1(f"main-{i}"),
        f"promote-{i}",
        f"stella: promote {lock['name']} to {env}\n\nbench promotion {i}\n",
    )
    approved = _signed_commit(
        approver,
        decided - 20,
        asked["commit"],
        f"approve-{i}",
        f"stella: approve {lock['name']}--{env}\n\nRelease {lock['name']} ({lock['id']}).\n",
    )
    return asked, approved


def _inputs(
    i: int,
    lock: dict[str, Any],
    env: str,
    environment: dict[str, Any],
    requester: dict[str, Any],
    approver: dict[str, Any],
    policy: str,
) -> bytes:
    """As `DecisionInputs` serialises them (`main` checks that on a sample): about 4 KB, as a real one
    with one approval."""
    return canonical(
        {
            "approvals": [
                {
                    "comment": "",
                    "decision": "approve",
                    "earlierSigners": [],
                    "environment": env,
                    "identity": approver["identity"],
                    "release": lock["id"],
                    "signer": approver,
                    "stale": False,
                }
            ],
            "decidedAt": _time(i),
            "environment": environment,
            "gates": [
                {"name": g, "options": {}, "version": "0.1.0"}
                for g in ("environment-order", "freeze-window", "approvals", "quota")
            ],
            "groups": {"release-managers": list(IDENTITIES)},
            "history": [],
            "kind": "DecisionInputs",
            "policy": policy,
            "promotion": {
                "apiVersion": "stella/v1",
                "environment": env,
                "kind": "Promotion",
                "reason": "bench",
                "release": lock["name"],
            },
            "promotionId": f"{lock['name']}--{env}",
            "release": lock,
            "requestedAt": requester["time"],
            "requester": requester,
            "sourceCommit": _sha1(f"source-{i}"),
            "template": {"path": TEMPLATE, "sha256": _digest("template")[7:]},
            "tenant": "bench",
            "version": 1,
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
    actors: tuple[Actor, Actor] | None = None,
    policy: dict[str, str] | None = None,
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
    requester = {"identity": None, "verified": False, "reason": "unsigned"}
    approvers: list[dict[str, Any]] = []
    if actors:
        asked, approved = actors
        requester = {k: asked[k] for k in ("commit", "identity", "key", "reason", "time", "verified")}
        approvers = [
            {
                "comment": "",
                "commit": approved["commit"],
                "counted": True,
                "decision": "approve",
                "identity": approved["identity"],
                "key": approved["key"],
                "reason": "counted",
                "release": lock["id"],
                "signer": approved["identity"],
                "time": approved["time"],
                "verified": True,
            }
        ]
    predicate: dict[str, Any] = {
        "type": "release_decision",
        "tenant": "bench",
        "generator": {"name": "stella", "version": "0.1.0"},
        "release": lock,
        "environment": env,
        "promotion": {"id": f"{lock['name']}--{env}", "reason": "bench", "commit": requester.get("commit")},
        "actors": {"requester": requester, "approvers": approvers},
        "decision": {
            "result": result,
            "gates": gates,
            "reasons": sorted(f"{g['gate']}/{g['reason']}" for g in gates),
        },
        "artifacts": [{"name": n, "sha256": h} for n, h in sorted(artifacts.items())],
        "inputs": {"sha256": inputs_hex},
        "requestedAt": requester.get("time", _time(i)),
        "decidedAt": _time(i),
        "previous": previous,
    }
    if policy is not None:
        predicate["policy"] = policy
    return canonical(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [
                {"digest": {"sha256": c["digest"][7:]}, "name": c["image"]}
                for c in lock["components"].values()
            ],
            "predicateType": "https://stella.dev/attestations/evidence/v1",
            "predicate": predicate,
        }
    )


def policy_of(public_pem: bytes, signers: bytes) -> Policy:
    """The policy `main` holds and the genesis ratifies: settings, the evidence key, the signers."""
    return Policy.of({"stella.yaml": SETTINGS, KEY_FILE: public_pem, SIGNERS_FILE: signers})


def genesis(policy: Policy, source_commit: str, signer: KeySigner) -> tuple[str, dict[str, bytes]]:
    """The genesis ratification of `policy` (as the first reconcile pass writes it): its id and files."""
    settings = Settings.model_validate(yaml.safe_load(SETTINGS))
    when = datetime.fromtimestamp(START - 3600, UTC)
    inputs = RatificationInputs(
        tenant=settings.tenant,
        sourceCommit=source_commit,
        policy=policy.id,
        previous=None,
        changed=policy.changed_from(None),
        governance=settings.governance,
        decidedAt=when,
    )
    inputs_bytes: bytes = rfc8785.dumps(inputs.model_dump(mode="json"))
    statement = ratification_statement(
        tenant=settings.tenant,
        version=__version__,
        policy=policy,
        previous_policy=None,
        changed=inputs.changed,
        approvers=[],
        reason="genesis",
        source_commit=source_commit,
        inputs_hex=sha256_hex(inputs_bytes),
        decided_at=when,
        previous=None,
    )
    raw: bytes = rfc8785.dumps(statement)
    hex_id = sha256_hex(raw)
    record = f"sha256:{hex_id}"
    files = {
        **policy.stored_files(),
        f"inputs/{sha256_hex(inputs_bytes)}.json": inputs_bytes,
        f"evidence/{hex_id}.json": raw,
        f"evidence/{hex_id}.sigstore.json": signer.sign(raw),
        POINTER: rfc8785.dumps(pointer_json(policy.id, record)),
    }
    return record, files


def _tree(repo: pygit2.Repository, entries: dict[str, pygit2.Oid], mode: int) -> pygit2.Oid:
    builder = repo.TreeBuilder()
    for name, oid in entries.items():
        builder.insert(name, oid, mode)
    return builder.write()


@dataclass(frozen=True)
class Built:
    """The evidence head, and the genesis record id (what `--root` pins)."""

    head: str
    genesis: str


def build(
    root: Path, records: int, commits: int, signer: KeySigner, public_pem: bytes, people: tuple[SshKey, ...]
) -> Built:
    """A repository with `main` (settings, the evidence key, the allowed signers) and an evidence branch:
    the genesis ratification of that policy, then `records` decisions under it, in `commits` commits."""
    repo = pygit2.init_repository(str(root), bare=False, initial_head="main")
    repo.config["user.name"], repo.config["user.email"] = AUTHOR.name, AUTHOR.email  # for the reflog
    blob, tree_mode = pygit2.enums.FileMode.BLOB, pygit2.enums.FileMode.TREE
    signers = "".join(p.allowed_signers_line() for p in people).encode()
    key_tree = _tree(repo, {"bench.pub": repo.create_blob(public_pem)}, blob)
    trust = repo.TreeBuilder()
    trust.insert("evidence-keys", key_tree, tree_mode)
    trust.insert("allowed_signers", repo.create_blob(signers), blob)
    main_tree = repo.TreeBuilder()
    main_tree.insert("stella.yaml", repo.create_blob(SETTINGS), blob)
    main_tree.insert("trust", trust.write(), tree_mode)
    main = repo.create_commit("refs/heads/main", AUTHOR, AUTHOR, "bench settings", main_tree.write(), [])
    policy = policy_of(public_pem, signers)
    genesis_id, genesis_files = genesis(policy, str(main), signer)
    named = {"id": policy.id, "record": genesis_id}
    environments = _environments()

    # one builder per directory, kept across commits: each commit writes them as they are by then
    dirs = {
        name: repo.TreeBuilder()
        for name in ("artifacts", "environments", "evidence", "inputs", "policies", "policy", "policy-files")
    }
    dirs["releases"] = repo.TreeBuilder()
    for path, data in genesis_files.items():
        directory, name = path.split("/")
        dirs[directory].insert(name, repo.create_blob(data), blob)
    heads: dict[str, str | None] = dict.fromkeys(ENVIRONMENTS)
    current: dict[str, dict[str, Any] | None] = dict.fromkeys(ENVIRONMENTS)
    parents: list[pygit2.Oid] = []
    per_commit = -(-records // commits)
    for i in range(records):
        env = ENVIRONMENTS[i % len(ENVIRONMENTS)]
        lock = _lock(i // len(ENVIRONMENTS))
        if env == ENVIRONMENTS[0]:
            dirs["releases"].insert(f"{lock['name']}.json", repo.create_blob(canonical(lock)), blob)
        result = "deny" if i % 10 == 9 else "allow"
        actors = _actors(i, lock, env, people)
        raw_inputs = _inputs(i, lock, env, environments[env], *actors, policy.id)
        inputs_hex = sha256_hex(raw_inputs)
        dirs["inputs"].insert(f"{inputs_hex}.json", repo.create_blob(raw_inputs), blob)
        made: dict[str, str] = {}
        if result == "allow":
            art = _artifact(i, lock, env)
            made["compose.stella.lock.yml"] = sha256_hex(art)
            rendered = _tree(repo, {"compose.stella.lock.yml": repo.create_blob(art)}, blob)
            dirs["artifacts"].insert(made["compose.stella.lock.yml"], rendered, tree_mode)
        statement = _statement(i, lock, env, result, inputs_hex, made, heads[env], actors, named)
        hex_id = sha256_hex(statement)
        dirs["evidence"].insert(f"{hex_id}.json", repo.create_blob(statement), blob)
        dirs["evidence"].insert(f"{hex_id}.sigstore.json", repo.create_blob(signer.sign(statement)), blob)
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
                dirs["environments"].insert(name, pointed, tree_mode)
            top = repo.TreeBuilder()
            for name, builder in sorted(dirs.items()):
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
    return Built(str(parents[0]), genesis_id)


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
