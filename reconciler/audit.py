"""`stella audit verify`: check the evidence branch the way an auditor would, offline.

Checks, each failure a `Finding` naming the file (and commit, for history):
- every file under `evidence/`, `inputs/`, `artifacts/` hashes to the name it is stored under, and every
  release lock's id is the hash of its components;
- every statement has a bundle whose DSSE payload is exactly the statement's bytes, signed by a key in
  `trust/evidence-keys/` (read from the source branch, or a directory given by the caller);
- every statement's inputs and artifacts exist; every chain link points to a record of the same
  environment; no environment's chain forks; each environment pointer names its chain's head;
- history: no file under `releases/`, `evidence/`, `inputs/`, `artifacts/` was ever changed or deleted
  in any commit of the branch, and the ref's reflog shows only fast-forward moves.
Read-only; never writes to the repository.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pygit2

from .errors import InvalidInput, StellaError
from .evidence import release_id, sha256_hex
from .repo import GitTree, Repo
from .sign import TrustedKeys, verify_bundle

log = logging.getLogger(__name__)

IMMUTABLE = ("releases/", "evidence/", "inputs/", "artifacts/")
KEYS_DIR = "trust/evidence-keys"


@dataclass(frozen=True, order=True)
class Finding:
    file: str
    message: str
    commit: str | None = None

    def __str__(self) -> str:
        where = f"{self.file} (commit {self.commit[:12]})" if self.commit else self.file
        return f"{where}: {self.message}"

    def as_dict(self) -> dict[str, str | None]:
        return {"file": self.file, "message": self.message, "commit": self.commit}


@dataclass
class Report:
    head: str | None
    records: int = 0
    bundles: int = 0
    commits: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def trusted_keys(tree: GitTree) -> TrustedKeys:
    items = [
        (f"{KEYS_DIR}/{name}", tree.read(f"{KEYS_DIR}/{name}") or b"")
        for name in tree.listdir(KEYS_DIR)
        if name.endswith(".pub")
    ]
    return TrustedKeys.from_files(items)


def verify(
    repo: Repo,
    ref: str,
    keys: TrustedKeys,
    progress: Callable[[str], None] | None = None,
) -> Report:
    head = repo.resolve_ref(ref)
    report = Report(head=head)
    if head is None:
        report.findings.append(Finding(ref, "the evidence ref does not exist"))
        return report
    tree = repo.tree(head)
    _check_history(repo, ref, head, report)
    statements = _check_files(tree, keys, report, progress)
    _check_chains(tree, statements, report)
    report.findings.sort()
    return report


def _check_history(repo: Repo, ref: str, head: str, report: Report) -> None:
    walker = repo.git.walk(head, pygit2.enums.SortMode.TOPOLOGICAL)
    for commit in walker:
        report.commits += 1
        for parent in commit.parents:
            diff = parent.tree.diff_to_tree(commit.tree)
            for delta in diff.deltas:
                path = delta.old_file.path
                if not path.startswith(IMMUTABLE):
                    continue
                status = delta.status
                if status == pygit2.enums.DeltaStatus.DELETED:
                    report.findings.append(Finding(path, "deleted from the evidence branch", str(commit.id)))
                elif status == pygit2.enums.DeltaStatus.MODIFIED:
                    report.findings.append(Finding(path, "changed after it was written", str(commit.id)))
                elif status not in (pygit2.enums.DeltaStatus.ADDED,):
                    report.findings.append(
                        Finding(path, f"unexpected change ({status.name})", str(commit.id))
                    )
    try:
        entries = list(repo.git.lookup_reference(ref).log())
    except (KeyError, pygit2.GitError):
        entries = []
    zero = "0" * 40
    for entry in entries:
        old, new = str(entry.oid_old), str(entry.oid_new)
        if old in (zero, new):
            continue
        if not repo.git.descendant_of(entry.oid_new, entry.oid_old):
            report.findings.append(
                Finding(
                    ref,
                    f"moved from {old[:12]} to {new[:12]}, which is not a fast-forward (history rewritten)",
                )
            )


def _check_files(
    tree: GitTree,
    keys: TrustedKeys,
    report: Report,
    progress: Callable[[str], None] | None,
) -> dict[str, dict[str, object]]:
    """Hashes and signatures of every stored file; returns statement hex -> parsed statement."""
    add = report.findings.append
    statements: dict[str, dict[str, object]] = {}
    names = tree.listdir("evidence")
    name_set = set(names)
    for name in names:
        path = f"evidence/{name}"
        if name.endswith(".sigstore.json"):
            if name.removesuffix(".sigstore.json") + ".json" not in name_set:
                add(Finding(path, "bundle without its statement"))
            continue
        if not name.endswith(".json"):
            add(Finding(path, "unexpected file in evidence/"))
            continue
        hex_id = name.removesuffix(".json")
        raw = tree.read(path) or b""
        report.records += 1
        if progress and report.records % 200 == 0:
            progress(f"{report.records} records")
        if sha256_hex(raw) != hex_id:
            add(Finding(path, f"content hash sha256:{sha256_hex(raw)} does not match its name"))
        bundle = tree.read(f"evidence/{hex_id}.sigstore.json")
        if bundle is None:
            add(Finding(path, "no signature bundle (evidence/<hex>.sigstore.json)"))
        else:
            report.bundles += 1
            try:
                verified = verify_bundle(bundle, keys, source=f"evidence/{hex_id}.sigstore.json")
                if verified.payload != raw:
                    add(Finding(f"evidence/{hex_id}.sigstore.json", "signs other bytes than the statement"))
            except StellaError as exc:
                add(Finding(f"evidence/{hex_id}.sigstore.json", str(exc)))
        try:
            statement = json.loads(raw)
            if not isinstance(statement, dict):
                raise ValueError("not an object")
            statements[hex_id] = statement
        except ValueError as exc:
            add(Finding(path, f"not a JSON statement: {exc}"))
    for directory in ("inputs", "artifacts", "releases"):
        for name in tree.listdir(directory):
            _check_stored(tree, directory, name, add)
    return statements


def _check_stored(tree: GitTree, directory: str, name: str, add: Callable[[Finding], None]) -> None:
    path = f"{directory}/{name}"
    if directory == "inputs":
        raw = tree.read(path) or b""
        if sha256_hex(raw) != name.removesuffix(".json"):
            add(Finding(path, "content hash does not match its name"))
    elif directory == "artifacts":
        for artifact in tree.listdir(path):
            raw = tree.read(f"{path}/{artifact}") or b""
            if sha256_hex(raw) != name:
                add(Finding(f"{path}/{artifact}", "content hash does not match its directory name"))
    else:
        raw = tree.read(path) or b""
        try:
            lock = json.loads(raw)
            pinned = {c: f"{v['image']}@{v['digest']}" for c, v in lock["components"].items()}
            if release_id(lock["name"], pinned) != lock["id"] or f"{lock['name']}.json" != name:
                add(Finding(path, "release id does not match the release's name and digests"))
        except (ValueError, KeyError, TypeError) as exc:
            add(Finding(path, f"not a release lock: {exc}"))


def _check_chains(tree: GitTree, statements: dict[str, dict[str, object]], report: Report) -> None:
    add = report.findings.append
    env_of: dict[str, str] = {}
    previous_of: dict[str, str | None] = {}
    for hex_id, statement in statements.items():
        path = f"evidence/{hex_id}.json"
        predicate = statement.get("predicate")
        if not isinstance(predicate, dict):
            add(Finding(path, "statement has no predicate"))
            continue
        evidence_id = f"sha256:{hex_id}"
        env_of[evidence_id] = str(predicate.get("environment"))
        previous = predicate.get("previous")
        previous_of[evidence_id] = previous if isinstance(previous, str) else None
        inputs = predicate.get("inputs")
        if isinstance(inputs, dict) and tree.read(f"inputs/{inputs.get('sha256')}.json") is None:
            add(Finding(path, f"its inputs file inputs/{inputs.get('sha256')}.json is missing"))
        for artifact in _list(predicate.get("artifacts")):
            if tree.read(f"artifacts/{artifact.get('sha256')}/{artifact.get('name')}") is None:
                add(Finding(path, f"artifact {artifact.get('name')} ({artifact.get('sha256')}) is missing"))
        release = predicate.get("release")
        if isinstance(release, dict):
            lock = tree.read(f"releases/{release.get('name')}.json")
            if lock is not None and json.loads(lock).get("id") != release.get("id"):
                add(Finding(path, f"release id differs from releases/{release.get('name')}.json"))
    children: dict[str, list[str]] = {}
    for evidence_id, previous in sorted(previous_of.items()):
        if previous is None:
            continue
        if previous not in env_of:
            add(Finding(_path(evidence_id), f"chain link points to {previous}, which is not a record here"))
        elif env_of[previous] != env_of[evidence_id]:
            add(Finding(_path(evidence_id), f"chain link points to {previous} of another environment"))
        children.setdefault(previous, []).append(evidence_id)
    for previous, kids in children.items():
        if len(kids) > 1:
            add(Finding(_path(previous), f"chain forks: {len(kids)} records name it as previous"))
    heads: dict[str, list[str]] = {}
    for evidence_id, env in env_of.items():
        if evidence_id not in children:
            heads.setdefault(env, []).append(evidence_id)
    environments = set(env_of.values()) | set(tree.listdir("environments"))
    for env in sorted(environments):
        path = f"environments/{env}/stella.version.json"
        raw = tree.read(path)
        env_heads = heads.get(env, [])
        if raw is None:
            if env_heads:
                add(Finding(path, "missing: the environment has records but no pointer"))
            continue
        try:
            head = json.loads(raw).get("head")
        except ValueError as exc:
            add(Finding(path, f"not JSON: {exc}"))
            continue
        if env_heads and head not in env_heads:
            add(
                Finding(path, f"points to {head}, not the head of the chain ({', '.join(sorted(env_heads))})")
            )


def _path(evidence_id: str) -> str:
    return f"evidence/{evidence_id.removeprefix('sha256:')}.json"


def _list(value: object) -> Iterable[dict[str, object]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def load_keys(repo: Repo, branch: str) -> TrustedKeys:
    commit = repo.resolve_ref(f"refs/heads/{branch}")
    if commit is None:
        raise InvalidInput(f"branch {branch!r} not found: cannot read {KEYS_DIR}/")
    return trusted_keys(repo.tree(commit))
