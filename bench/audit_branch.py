"""The evidence branch `bench_audit.py` verifies: 10,000 decision records under a ratified policy, built
fast, straight into Git with pygit2.

What each record holds (statement, DSSE bundle with a real P-256 key, `DecisionInputs` whose requester
and approval are SSH-signed commits made natively here, the rendered lock, release locks and pointers)
is described in `bench_audit.py`'s docstring; this module only builds it. Imported by the benchmark and
its worker processes; never run on its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pygit2
import rfc8785
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from reconciler import __version__
from reconciler.evidence import release_id, sha256_hex
from reconciler.governance import POINTER, Policy, pointer_json, ratification_statement
from reconciler.models import Environment, RatificationInputs, Settings
from reconciler.sign import KeySigner

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
