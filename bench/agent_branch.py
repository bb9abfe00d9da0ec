"""The evidence branch `bench_agent.py` polls: N release decisions in the target's environment, under a
ratified policy that lists the target and holds its agent key, built fast, straight into Git with pygit2.

It reuses the pieces of `audit_branch.py` (statements, DSSE bundles with a real P-256 key, inputs whose
requester and approval are SSH-signed commits, the genesis ratification) with a policy of its own:
`stella.yaml`, the evidence key, the allowed signers, `environments/<env>.yaml` naming the target
(`agent: docker`, the bench's engine and project), its template, and `trust/agent-keys/<target>.pub`.
Every decision is in that one environment; one in ten is a deny (so the newest allowed decision can
sit behind a deny, and the agent walks back to it). Each allowed decision's lock is a Compose file of
the bench's services, pinned to the images the bench pushed, with a comment unique to the decision.
`bench_agent.py` checks the result with `reconciler.audit.verify --root`. Never run on its own.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audit_branch import (  # the audit benchmark's record builders
    AUTHOR,
    IDENTITIES,
    KEY_FILE,
    REF,
    SETTINGS,
    SIGNERS_FILE,
    SshKey,
    _actors,
    _inputs,
    _statement,
    _time,
    _tree,
    canonical,
    genesis,
)

from reconciler.evidence import release_id, sha256_hex
from reconciler.governance import GROUPS_FILE, Policy, agent_key_path
from reconciler.models import Environment
from reconciler.sign import KeySigner

ENVIRONMENT = "prod"
TARGET = "web-1"
TEMPLATE = "templates/shop.compose.yml.j2"


def compose_lock(images: dict[str, str], interval: str, note: str) -> bytes:
    """A rendered lock: one busybox service per `images` entry (service -> `repo@sha256:…`), no network,
    a healthcheck every `interval`; `note` is a comment line (what makes two locks differ)."""
    lines = [f"# {note}", "services:"]
    for service, image in sorted(images.items()):
        lines += [
            f"  {service}:",
            f"    image: {image}",
            "    network_mode: none",
            '    command: ["/bin/busybox", "sleep", "3600"]',
            "    stop_grace_period: 1s",
            f'    healthcheck: {{test: ["CMD", "/bin/busybox", "true"], interval: {interval}}}',
        ]
    return ("\n".join(lines) + "\n").encode()


def environment_yaml(endpoint: str, project: str) -> bytes:
    return (
        f"apiVersion: stella/v1\nkind: Environment\nname: {ENVIRONMENT}\ntemplate: {TEMPLATE}\n"
        "approvals: {required: 1, groups: [release-managers]}\n"
        f"targets:\n  - {{name: {TARGET}, agent: docker, endpoint: '{endpoint}', project: {project}}}\n"
    ).encode()


def groups_yaml() -> bytes:
    """The groups the environment's approvals and the settings' governance name."""
    members = ", ".join(IDENTITIES)
    return (
        "apiVersion: stella/v1\nkind: Groups\ngroups:\n"
        f"  release-managers: [{members}]\n  policy-admins: [{IDENTITIES[2]}]\n"
    ).encode()


def _release(n: int, images: dict[str, str]) -> dict[str, Any]:
    """The release lock of `app-<n>` (`releases/app-<n>.json`): the bench's images, tag `1.<n>.0`."""
    name = f"app-{n}"
    components = {}
    for service, image in images.items():
        repo, _, digest = image.partition("@")
        components[service] = {"digest": digest, "image": repo, "tag": f"1.{n}.0"}
    pinned = {c: f"{v['image']}@{v['digest']}" for c, v in components.items()}
    return {"components": components, "id": release_id(name, pinned), "name": name}


@dataclass(frozen=True)
class Built:
    """The evidence head, the genesis record id (what `--root` pins) and the newest allowed decision."""

    head: str
    genesis: str
    current: str


def build(
    root: Path,
    decisions: int,
    commits: int,
    signer: KeySigner,
    public_pem: bytes,
    agent_pem: bytes,
    people: tuple[SshKey, ...],
    images: dict[str, str],
    endpoint: str,
    project: str,
    interval: str,
) -> Built:
    """A repository with `main` (the policy) and an evidence branch: the genesis ratification of that
    policy, then `decisions` decisions in `ENVIRONMENT` under it, in `commits` commits."""
    repo = pygit2.init_repository(str(root), bare=False, initial_head="main")
    repo.config["user.name"], repo.config["user.email"] = AUTHOR.name, AUTHOR.email  # for the reflog
    blob, tree_mode = pygit2.enums.FileMode.BLOB, pygit2.enums.FileMode.TREE
    signers = "".join(p.allowed_signers_line() for p in people).encode()
    env_file = environment_yaml(endpoint, project)
    policy_files = {
        "stella.yaml": SETTINGS,
        f"environments/{ENVIRONMENT}.yaml": env_file,
        TEMPLATE: b"# the bench renders nothing: its locks are written directly\n",
        KEY_FILE: public_pem,
        SIGNERS_FILE: signers,
        GROUPS_FILE: groups_yaml(),
        agent_key_path(TARGET): agent_pem,
    }
    main = repo.create_commit(
        "refs/heads/main", AUTHOR, AUTHOR, "bench policy", _policy_tree(repo, policy_files), []
    )
    policy = Policy.of(policy_files)
    genesis_id, genesis_files = genesis(policy, str(main), signer)
    named = {"id": policy.id, "record": genesis_id}
    environment = Environment.model_validate(yaml.safe_load(env_file)).model_dump(mode="json")

    dirs = {
        name: repo.TreeBuilder()
        for name in (
            "artifacts",
            "environments",
            "evidence",
            "inputs",
            "policies",
            "policy",
            "policy-files",
            "releases",
        )
    }
    for path, data in genesis_files.items():
        directory, name = path.split("/")
        dirs[directory].insert(name, repo.create_blob(data), blob)
    head: str | None = None
    current: dict[str, Any] | None = None
    parents: list[pygit2.Oid] = []
    per_commit = -(-decisions // commits)
    for i in range(decisions):
        lock = _release(i, images)
        dirs["releases"].insert(f"{lock['name']}.json", repo.create_blob(canonical(lock)), blob)
        result = "deny" if i % 10 == 9 else "allow"
        actors = _actors(i, lock, ENVIRONMENT, people)
        raw_inputs = _inputs(i, lock, ENVIRONMENT, environment, *actors, policy.id)
        inputs_hex = sha256_hex(raw_inputs)
        dirs["inputs"].insert(f"{inputs_hex}.json", repo.create_blob(raw_inputs), blob)
        made: dict[str, str] = {}
        if result == "allow":
            art = compose_lock(images, interval, f"rendered by stella for {ENVIRONMENT} (record {i})")
            made["compose.stella.lock.yml"] = sha256_hex(art)
            rendered = _tree(repo, {"compose.stella.lock.yml": repo.create_blob(art)}, blob)
            dirs["artifacts"].insert(made["compose.stella.lock.yml"], rendered, tree_mode)
        statement = _statement(i, lock, ENVIRONMENT, result, inputs_hex, made, head, actors, named)
        hex_id = sha256_hex(statement)
        dirs["evidence"].insert(f"{hex_id}.json", repo.create_blob(statement), blob)
        dirs["evidence"].insert(f"{hex_id}.sigstore.json", repo.create_blob(signer.sign(statement)), blob)
        head = f"sha256:{hex_id}"
        if result == "allow":
            current = {
                "artifacts": made,
                "decidedAt": _time(i),
                "evidence": head,
                "release": lock["name"],
                "releaseId": lock["id"],
            }
        if (i + 1) % per_commit == 0 or i + 1 == decisions:
            pointer = canonical({"current": current, "environment": ENVIRONMENT, "head": head})
            pointed = _tree(repo, {"stella.version.json": repo.create_blob(pointer)}, blob)
            dirs["environments"].insert(ENVIRONMENT, pointed, tree_mode)
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
    assert current is not None
    subprocess.run(["git", "-C", str(root), "repack", "-a", "-d", "-q"], check=True)
    return Built(str(parents[0]), genesis_id, str(current["evidence"]))


def _policy_tree(repo: pygit2.Repository, files: dict[str, bytes]) -> pygit2.Oid:
    """The tree of `files` (nested paths), as `main` holds them."""
    nested: dict[str, Any] = {}
    for path, data in files.items():
        *dirs, name = path.split("/")
        node = nested
        for part in dirs:
            node = node.setdefault(part, {})
        node[name] = data

    def write(node: dict[str, Any]) -> pygit2.Oid:
        builder = repo.TreeBuilder()
        for name, value in sorted(node.items()):
            if isinstance(value, dict):
                builder.insert(name, write(value), pygit2.enums.FileMode.TREE)
            else:
                builder.insert(name, repo.create_blob(value), pygit2.enums.FileMode.BLOB)
        return builder.write()

    return write(nested)
