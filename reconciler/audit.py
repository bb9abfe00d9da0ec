"""`stella audit`: verify the evidence branch the way an auditor would, offline; export and checkpoint it.

`verify` checks, each failure a `Finding` with a stable `check` code and naming the file (and commit,
for history):
- `hash`: every file under `evidence/`, `inputs/`, `artifacts/` hashes to the name it is stored under;
- `signature`: every statement has a bundle whose DSSE payload is exactly the statement's bytes, signed
  by a trusted key (`trust/evidence-keys/` of the source branch, or a packet's);
- `key`: every key file of the source branch (or packet) under `trust/evidence-keys/` reads (a bad one
  is a finding; the others still verify);
- `statement`: every statement is a JSON object with a predicate naming its environment;
- `inputs`, `artifact`: every statement's inputs file and artifacts exist;
- `lock`: every release lock's id is the hash of its name and digests, and every record's release id is
  its lock's (a lock changed after it was written is also a `history` finding);
- `chain`: every chain link points to a record of the same environment, no chain forks, and each
  environment's chain has one head (a record nothing names as previous);
- `pointer`: each environment's pointer names its chain's head, and its `current` is exactly its newest
  allowed record (release, id, evidence, decidedAt, artifacts); no pointer for an environment without
  records;
- `duplicate`: one decision per promotion id (among records that verify);
- `history`: no file under `releases/`, `evidence/`, `inputs/`, `artifacts/` was changed or deleted in
  any commit of the branch; `reflog`: the ref only ever moved by fast-forward (where a reflog exists);
- `layout`: no file outside the branch's layout (DESIGN §4, §8, §9), anywhere on it;
- `unreferenced`: every inputs file and artifact is one a record names, every stored policy was ratified
  on the chain, and every policy file is one a stored policy lists (release locks are written before
  their decisions: a lock no record names is fine);
- `checkpoint`: given a signed checkpoint, everything it covered is still there, as a prefix;
- `packet`: (verifying a packet) every member is the one its manifest lists.

It streams: the work is cut into chunks (records, inputs, artifacts, locks), run by this process and
worker processes that each open the repository themselves and return findings plus a few small facts
per record (environment, previous, result, release, promotion, artifacts, decidedAt), plus the names of
the inputs and artifact files they checked; file bytes and statements are never all held at once.
Meanwhile `git log` diffs every commit in a process of its own. Results are merged and sorted, so the
report does not depend on scheduling.

`export_packet` writes an offline packet (the branch as a Git bundle, the trust material, a manifest
and a README); `verify_packet` verifies one in a temporary directory: it reads the tar as a stream,
refusing path tricks, too many members and members over their size caps before anything is written,
reads the manifest first and extracts only the members it lists.
`Checkpoint` is the signed statement of what the branch held at one time.

Read-only: never writes to the repository it verifies. Never prints; errors are `StellaError`s.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import re
import subprocess
import tarfile
import tempfile
import threading
import zlib
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, NamedTuple, cast

import pygit2
import rfc8785

from .discover import discover
from .errors import InvalidInput, StellaError, Transient
from .governance import (
    POINTER,
    POLICY_CHAIN,
    RATIFICATION,
    Policy,
    PolicyError,
    policies_path,
    read_pointer,
    stored_policy,
)
from .protocols import IN_TOTO_PAYLOAD_TYPE, WITNESS_SUFFIX, BundleVerifier, Signer
from .repo import GitTree, Repo
from .sign import BundleError, TrustedKey, TrustedKeys, public_pem, verify_bundle
from .sshsig import AllowedSigners

log = logging.getLogger(__name__)

IMMUTABLE = ("releases/", "evidence/", "inputs/", "artifacts/", "policies/", "policy-files/")
KEYS_DIR = "trust/evidence-keys"
CHECKS = (
    "hash",
    "signature",
    "statement",
    "inputs",
    "artifact",
    "lock",
    "chain",
    "pointer",
    "history",
    "reflog",
    "layout",
    "checkpoint",
    "packet",
    "policy",
    "identity",
    "key",
    "duplicate",
    "unreferenced",
)
"""Every `Finding.check` code, stable across versions (documented in docs/audit.md)."""

Progress = Callable[[int, int], None]
"""`progress(done, total)`: units of work (records, inputs, artifacts, locks) done so far, of the total."""

PARALLEL_MIN = 2000
"""Below this many units of work, `verify` runs in this process: starting workers would cost more."""

_CHUNK = {"records": 250, "inputs": 1000, "artifacts": 1000, "releases": 500}
_HEX = re.compile(r"[0-9a-f]{64}")
_ZERO = "0" * 40


@dataclass(frozen=True)
class Finding:
    file: str
    message: str
    commit: str | None = None
    check: str = "layout"

    def __str__(self) -> str:
        where = f"{self.file} (commit {self.commit[:12]})" if self.commit else self.file
        return f"{where}: {self.message}"

    def sort_key(self) -> tuple[str, str, str, str]:
        return (self.file, self.message, self.commit or "", self.check)

    def as_dict(self) -> dict[str, str | None]:
        return {"file": self.file, "message": self.message, "commit": self.commit, "check": self.check}


@dataclass
class Report:
    head: str | None
    ref: str = ""
    records: int = 0
    bundles: int = 0
    commits: int = 0
    files: int = 0
    witnesses: int = 0
    """Keyless witnesses seen (`evidence/<hex>.keyless.sigstore.json`); the sigstore plugin checks them."""
    chains: dict[str, str] = field(default_factory=dict)
    """Environment -> the evidence id at the head of its chain (only for chains that do not fork)."""
    keys: dict[str, str] = field(default_factory=dict)
    """Trusted key source -> key hint: what the signatures were checked against."""
    genesis: str | None = None
    """The genesis ratification the policy chain starts from (pinned with `--root`, else trusted on
    first use)."""
    root_pinned: bool = False
    policy: str | None = None
    """The policy ratified at the head of the chain."""
    policies: list[str] = field(default_factory=list)
    """Every ratified policy, oldest first."""
    verified_by: dict[str, str] = field(default_factory=dict)
    """Evidence id -> `<policy id>: <key source>` (or `legacy: <key source>`): which key verified it."""
    identities: int = 0
    """Signed commits (requesters, approvers) re-verified from the recorded inputs."""
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def _key_files(tree: Any) -> list[tuple[str, bytes]]:
    return [
        (f"{KEYS_DIR}/{name}", tree.read(f"{KEYS_DIR}/{name}") or b"")
        for name in tree.listdir(KEYS_DIR)
        if name.endswith(".pub")
    ]


def trusted_keys(tree: GitTree) -> TrustedKeys:
    """The evidence keys under `trust/evidence-keys/` of `tree`; an unreadable one is `InvalidInput`."""
    return TrustedKeys.from_files(_key_files(tree))


class LoadedKeys(TrustedKeys):
    """Evidence keys read leniently: the ones that read, and a `key` finding for each file that did not
    (`verify` reports them with its own)."""

    def __init__(self, keys: Iterable[TrustedKey] = (), unreadable: Iterable[Finding] = ()) -> None:
        super().__init__(keys)
        self.unreadable: tuple[Finding, ...] = tuple(unreadable)


def read_keys(files: Iterable[tuple[str, bytes]], where: str = "") -> LoadedKeys:
    """The keys of (source, PEM bytes) pairs that read; each one that does not is a `key` finding
    (`where`: the branch it comes from, for the message)."""
    good: list[TrustedKey] = []
    bad: list[Finding] = []
    for source, data in files:
        try:
            good.extend(TrustedKeys.from_files([(source, data)]).values())
        except InvalidInput as exc:
            reason = str(exc).removeprefix(f"{source}: ")
            on = f" on {where}" if where else ""
            bad.append(
                Finding(source, f"unreadable evidence key{on}: {reason}; it verifies nothing", None, "key")
            )
    return LoadedKeys(good, bad)


def load_keys(repo: Repo, branch: str, *, missing_ok: bool = False) -> TrustedKeys:
    """The evidence keys of `branch` (what records written before policies existed verify with).

    `missing_ok`: an unreadable key file is left out instead of failing; the keys returned (a
    `LoadedKeys`) carry a `key` finding for it, which `verify` reports, and the other keys still count."""
    commit = repo.resolve_ref(f"refs/heads/{branch}")
    if commit is None:
        raise InvalidInput(f"branch {branch!r} not found: cannot read {KEYS_DIR}/")
    files = _key_files(repo.tree(commit))
    if not missing_ok:
        return TrustedKeys.from_files(files)
    return read_keys(files, branch)


def branch_keys(repo: Repo, ref: str, legacy: TrustedKeys) -> TrustedKeys:
    """Every evidence key of every policy stored on `ref` (and `legacy`): what a checkpoint of that
    branch may be signed with."""
    head = repo.resolve_ref(ref)
    if head is None:
        return legacy
    tree = repo.tree(head)
    book = _PolicyBook.read(tree, legacy, (), [])
    return TrustedKeys(
        key for source, pem in book.key_pems() for key in TrustedKeys.from_files([(source, pem)]).values()
    )


# --- verify: the orchestration ---------------------------------------------------------------------


def verify(
    repo: Repo,
    ref: str,
    keys: TrustedKeys,
    progress: Progress | None = None,
    *,
    workers: int | None = None,
    checkpoint: Checkpoint | None = None,
    keyless: Sequence[tuple[str, bytes]] = (),
    root: str | None = None,
    findings: Sequence[Finding] = (),
) -> Report:
    """Verify the evidence branch `ref` of `repo` (see the module docstring).

    `findings`: found before (e.g. the `key` findings of unreadable key files), reported with the rest;
    when `keys` is a `LoadedKeys`, its unreadable files are reported too.

    Every record verifies with the evidence keys of the ratified policy it names, every ratification
    with those of the policy before it, from the genesis (`root`: the genesis record id it must be;
    None: the one found, trusted on first use). `keys` (and `keyless`) verify what was written before
    the branch had a policy chain: records naming no policy when there is no genesis.

    `keyless`: `trust/keyless.yaml` and its trusted root (`load_keyless`), to verify keyless bundles and
    witnesses with a signer plugin that can (the sigstore plugin's `keyless`).

    `workers`: how many processes share the work, this one included (default: one per available CPU
    when the branch is large enough to gain from it, else this process alone). Worker processes start
    from the main module, which must import without side effects (the `if __name__ == "__main__":`
    idiom). `checkpoint`: also check that the branch still holds everything that checkpoint covered.
    `progress(done, total)` is called in this process as the work advances.
    """
    head = repo.resolve_ref(ref)
    report = Report(head=head, ref=ref, keys={k.source: k.hint for k in keys.values()})
    report.root_pinned = root is not None
    given = [*findings, *(keys.unreadable if isinstance(keys, LoadedKeys) else ())]
    if head is None:
        report.findings = sorted(set(given), key=Finding.sort_key)
        report.findings.append(Finding(ref, "the evidence ref does not exist", check="layout"))
        if checkpoint is not None:
            report.findings.append(
                Finding(
                    ref,
                    f"the checkpoint covered {checkpoint.records} records at {checkpoint.head}",
                    None,
                    "checkpoint",
                )
            )
        return report
    git = repo.git
    commit = git[head].peel(pygit2.Commit)
    tree = commit.tree
    history = _History(repo, head)  # runs beside the rest, in a process of its own
    try:
        report.commits = sum(1 for _ in git.walk(commit.id, pygit2.enums.SortMode.NONE))
        _keyless_verifier(tuple(keyless))  # an unusable keyless policy is invalid input, before any work
        found = _checked(
            repo, ref, head, tree, keys, progress, workers, report, checkpoint, tuple(keyless), root
        )
        found += history.findings()
    finally:
        history.close()
    report.findings = sorted({*given, *found}, key=Finding.sort_key)
    return report


def _checked(
    repo: Repo,
    ref: str,
    head: str,
    tree: Any,
    keys: TrustedKeys,
    progress: Progress | None,
    workers: int | None,
    report: Report,
    checkpoint: Checkpoint | None,
    keyless: tuple[tuple[str, bytes], ...] = (),
    root: str | None = None,
) -> list[Finding]:
    """Every check but history: the chunks of work, then the whole-branch checks over their facts."""
    findings: list[Finding] = []
    plan = _plan(tree, findings, report)
    total = sum(len(t.names) for t in plan)
    gtree = GitTree(repo.git, tree, head)
    book = _PolicyBook.read(gtree, keys, keyless, findings)
    job = _Job(
        str(repo.path),
        head,
        book.key_pems(),
        keyless,
        signers=tuple(sorted(book.allowed_signers.items())),
        keyless_groups=book.keyless_groups(),
    )
    merged = _Merged()
    done = 0

    def collect(task: _Task, result: _Result) -> None:
        nonlocal done
        merged.add(result)
        done += len(task.names)
        if progress is not None:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    count = _workers(workers, total)
    try:
        if count <= 1:
            for task in plan:
                collect(task, _run(job, task))
        else:
            _run_parallel(job, plan, count, collect)
    finally:
        _local.state = None  # let go of the repository (a packet's is deleted next)
    findings += merged.findings
    report.records, report.bundles, report.files = merged.records, merged.bundles, merged.files
    report.identities = merged.identities
    findings += _check_locks(merged)
    findings += book.check(repo, head, merged, report, root)
    findings += _check_chains(gtree, merged, report)
    findings += _check_duplicates(merged, report)
    findings += _check_layout(tree)
    findings += _check_unreferenced(merged)
    findings += _check_reflog(repo, ref)
    if checkpoint is not None:
        findings += _check_checkpoint(repo, ref, report, merged, checkpoint)
    return findings


def _workers(requested: int | None, total: int) -> int:
    if requested is not None:
        return max(requested, 0)
    if total < PARALLEL_MIN:
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(cpus, 8)


def _run_parallel(
    job: _Job, plan: Sequence[_Task], count: int, collect: Callable[[_Task, _Result], None]
) -> None:
    """Run the tasks on `count` CPUs: in this process and `count - 1` worker processes.

    The workers take tasks from the front of the plan, a few in flight each (memory stays bounded);
    this process takes them from the back whenever the workers are fed, so it works from the start,
    while they are still starting. Workers come from a fork server where there is one ("spawn"
    elsewhere): this process, which may hold threads (a progress bar's), is never forked itself; the
    server imports the main module and this one once, so each worker starts without importing.
    """
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if isinstance(context, multiprocessing.context.ForkServerContext):
        context.set_forkserver_preload(["__main__", __name__])
    helpers = count - 1
    tasks = deque(plan)
    pending: dict[Future[_Result], _Task] = {}
    try:
        with ProcessPoolExecutor(max_workers=helpers, mp_context=context) as pool:
            while tasks or pending:
                while tasks and len(pending) < 2 * helpers:
                    task = tasks.popleft()
                    pending[pool.submit(_run, job, task)] = task
                _drain(pending, collect, block=not tasks)
                if tasks:
                    task = tasks.pop()
                    collect(task, _run(job, task))
    except BrokenProcessPool as exc:
        raise Transient(f"audit verify: a worker process died ({exc}); try again") from exc


def _drain(
    pending: dict[Future[_Result], _Task], collect: Callable[[_Task, _Result], None], block: bool
) -> None:
    """Collect the finished tasks (when `block`, wait for at least one)."""
    if not pending:
        return
    finished, _ = wait(list(pending), timeout=None if block else 0, return_when=FIRST_COMPLETED)
    for future in finished:
        collect(pending.pop(future), future.result())


def _plan(tree: Any, findings: list[Finding], report: Report) -> list[_Task]:
    """The chunks of work, from the names under each directory (never their contents)."""
    plan: list[_Task] = []
    hexes: list[str] = []
    groups: dict[str, set[str]] = {}
    for name in _names(tree, "evidence"):
        hex_id, _, suffix = name.partition(".")
        if not _HEX.fullmatch(hex_id) or suffix not in ("json", "sigstore.json", "keyless.sigstore.json"):
            findings.append(Finding(f"evidence/{name}", "unexpected file in evidence/", check="layout"))
            continue
        groups.setdefault(hex_id, set()).add(suffix)
    for hex_id, suffixes in sorted(groups.items()):
        if "json" in suffixes:
            hexes.append(hex_id)
        else:
            for suffix in sorted(suffixes):
                findings.append(
                    Finding(f"evidence/{hex_id}.{suffix}", "bundle without its statement", check="signature")
                )
        if "keyless.sigstore.json" in suffixes:
            report.witnesses += 1
    del groups
    plan += [_Task("records", tuple(c)) for c in _chunks(hexes, _CHUNK["records"])]
    for kind in ("inputs", "artifacts", "releases"):
        plan += [_Task(kind, tuple(c)) for c in _chunks(_names(tree, kind), _CHUNK[kind])]
    return plan


def _names(tree: Any, directory: str) -> list[str]:
    try:
        sub = tree[directory]
    except KeyError:
        return []
    return sorted(e.name or "" for e in sub) if isinstance(sub, pygit2.Tree) else []


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- verify: the work a worker does ----------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """What every worker needs, picklable: where the repository is, which commit, which keys."""

    git_dir: str
    head: str
    keys: tuple[tuple[str, bytes], ...]
    keyless: tuple[tuple[str, bytes], ...] = ()
    """trust/keyless.yaml and the trusted root it pins (from the source branch), when present."""
    signers: tuple[tuple[str, bytes], ...] = ()
    """Policy id -> its trust/allowed_signers: identities in inputs are re-verified against them."""
    keyless_groups: tuple[tuple[tuple[str, ...], tuple[tuple[str, bytes], ...]], ...] = ()
    """(policy ids, keyless trust files) for each distinct keyless policy among the stored policies."""


@dataclass(frozen=True)
class _Task:
    kind: str
    names: tuple[str, ...]


class _Fact(NamedTuple):
    """The little a record leaves for the whole-branch checks."""

    hex: str
    environment: str | None
    previous: str | None
    result: str | None
    release_name: str | None
    release_id: str | None
    kind: str | None = None
    """The predicate type (`release_decision`, `policy_ratification`, ...)."""
    policy: str | None = None
    """The policy named (for a ratification: the one it ratifies)."""
    signing: str | None = None
    """The policy whose keys must sign it (a ratification: the previous one; the genesis: its own)."""
    key: str | None = None
    """The hint of the key that verified its bundle (`keyless:<i>` for keyless group i), if one did."""
    previous_policy: str | None = None
    inputs: str | None = None
    """The sha256 of its inputs file."""
    decided: str | None = None
    """Its `decidedAt` (RFC 3339, UTC, `Z`: ordered as text)."""
    promotion: str | None = None
    """The promotion id a decision decides."""
    artifacts: tuple[tuple[str, str], ...] = ()
    """(name, sha256) of each artifact the predicate lists, in its order."""


@dataclass
class _Result:
    findings: list[Finding] = field(default_factory=list)
    facts: list[_Fact] = field(default_factory=list)
    locks: dict[str, str] = field(default_factory=dict)
    """Release name -> the id its lock file holds."""
    stored: list[str] = field(default_factory=list)
    """Every inputs file and artifact checked (`inputs/<hex>.json`, `artifacts/<hex>/<name>`): each must
    be one a record names."""
    records: int = 0
    bundles: int = 0
    files: int = 0
    identities: int = 0


@dataclass
class _Merged(_Result):
    def add(self, result: _Result) -> None:
        self.findings += result.findings
        self.facts += result.facts
        self.locks.update(result.locks)
        self.stored += result.stored
        self.records += result.records
        self.bundles += result.bundles
        self.files += result.files
        self.identities += result.identities


class _State:
    """One worker's view of the repository at the head commit (opened once, reused for its tasks)."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.git = pygit2.Repository(job.git_dir)
        self.tree = self.git[job.head].peel(pygit2.Commit).tree
        self.keys = TrustedKeys.from_files(job.keys)
        self.keyless = _keyless_verifier(job.keyless)
        self.keyless_groups = [(ids, _keyless_verifier(files)) for ids, files in job.keyless_groups]
        self.signers = dict(job.signers)
        self._allowed: dict[str, AllowedSigners] = {}
        self._dirs: dict[str, Any] = {}

    def allowed_signers(self, policy: str) -> AllowedSigners:
        if policy not in self._allowed:
            self._allowed[policy] = AllowedSigners.parse(
                self.signers.get(policy, b""), "trust/allowed_signers"
            )
        return self._allowed[policy]

    def dir(self, name: str) -> Any:
        """The tree of a top-level directory, or None."""
        if name not in self._dirs:
            try:
                obj = self.tree[name]
            except KeyError:
                obj = None
            self._dirs[name] = obj if isinstance(obj, pygit2.Tree) else None
        return self._dirs[name]

    @staticmethod
    def read(directory: Any, name: str) -> bytes | None:
        if directory is None:
            return None
        try:
            obj = directory[name]
        except KeyError:
            return None
        return obj.data if isinstance(obj, pygit2.Blob) else None


_local = threading.local()


def _state(job: _Job) -> _State:
    state: _State | None = getattr(_local, "state", None)
    if state is None or state.job != job:
        state = _State(job)
        _local.state = state
    return state


def _run(job: _Job, task: _Task) -> _Result:
    """Do one chunk of work (in a worker process, or in this one)."""
    state = _state(job)
    result = _Result()
    {
        "records": _check_records,
        "inputs": _check_inputs,
        "artifacts": _check_artifacts,
        "releases": _check_releases,
    }[task.kind](state, task.names, result)
    return result


def _check_records(state: _State, names: Sequence[str], out: _Result) -> None:
    add = out.findings.append
    evidence = state.dir("evidence")
    for hex_id in names:
        path = f"evidence/{hex_id}.json"
        raw = state.read(evidence, f"{hex_id}.json") or b""
        key: str | None = None
        out.records += 1
        out.files += 1
        actual = hashlib.sha256(raw).hexdigest()
        if actual != hex_id:
            add(Finding(path, f"content hash sha256:{actual} does not match its name", check="hash"))
        bundle_path = f"evidence/{hex_id}.sigstore.json"
        bundle = state.read(evidence, f"{hex_id}.sigstore.json")
        if bundle is None:
            add(Finding(path, "no signature bundle (evidence/<hex>.sigstore.json)", check="signature"))
        else:
            out.bundles += 1
            out.files += 1
            try:
                verified = verify_bundle(bundle, state.keys, source=bundle_path)
            except BundleError as exc:
                if exc.reason == "unsupported" and (state.keyless is not None or state.keyless_groups):
                    key = _check_keyless(state, bundle, raw, bundle_path, add)  # a keyless record
                else:
                    add(Finding(bundle_path, str(exc).removeprefix(f"{bundle_path}: "), check="signature"))
            except StellaError as exc:
                add(Finding(bundle_path, str(exc).removeprefix(f"{bundle_path}: "), check="signature"))
            else:
                if verified.payload != raw:
                    add(Finding(bundle_path, "signs other bytes than the statement", check="signature"))
                elif verified.payload_type != IN_TOTO_PAYLOAD_TYPE:
                    add(
                        Finding(
                            bundle_path,
                            f"payload type {verified.payload_type!r} is not {IN_TOTO_PAYLOAD_TYPE!r}",
                            check="signature",
                        )
                    )
                else:
                    key = verified.hint
        witness_path = f"evidence/{hex_id}{WITNESS_SUFFIX}"
        witness = state.read(evidence, f"{hex_id}{WITNESS_SUFFIX}")
        if witness is not None:
            out.files += 1
            if state.keyless is None and not any(v for _, v in state.keyless_groups):
                add(
                    Finding(
                        witness_path,
                        "a keyless witness, but no trust/keyless.yaml "
                        "(or no keyless signer plugin) to verify it",
                        check="signature",
                    )
                )
            else:
                _check_keyless(state, witness, raw, witness_path, add)
        fact = _record_facts(state, hex_id, raw, add)
        out.facts.append(fact._replace(key=key))
        out.identities += _check_identities(state, fact, raw, add)


def _check_keyless(
    state: _State, bundle: bytes, raw: bytes, path: str, add: Callable[[Finding], None]
) -> str | None:
    """Verify a keyless bundle with the keyless policies stored on the branch (then the legacy one);
    the label of the one that verified (`keyless:<i>`), or None with a finding."""
    candidates = [(f"keyless:{i}", v) for i, (_, v) in enumerate(state.keyless_groups) if v is not None]
    if state.keyless is not None:
        candidates.append(("keyless:legacy", state.keyless))
    first: StellaError | None = None
    for label, verifier in candidates:
        try:
            verifier.verify(bundle, raw, source=path)
        except StellaError as exc:
            first = first or exc
            continue
        return label
    message = str(first) if first else "no keyless policy to verify it with"
    add(Finding(path, message.removeprefix(f"{path}: "), check="signature"))
    return None


class _MemoryFiles:
    """A `FileSource` over a few files held in memory (the keyless trust material)."""

    def __init__(self, files: Sequence[tuple[str, bytes]]) -> None:
        self._files = dict(files)

    def read(self, path: str) -> bytes | None:
        return self._files.get(path)

    def listdir(self, path: str) -> list[str]:
        prefix = f"{path}/" if path else ""
        return sorted({p[len(prefix) :].split("/")[0] for p in self._files if p.startswith(prefix)})


def _keyless_verifier(files: tuple[tuple[str, bytes], ...]) -> BundleVerifier | None:
    """A verifier of keyless bundles from a signer plugin that offers one, or None (no policy/plugin)."""
    if not files:
        return None
    plugins = discover(kinds=("signers",))
    for name in sorted(plugins.signers):
        opener = getattr(plugins.signers[name], "open_verifier", None)
        if callable(opener):
            verifier = opener(_MemoryFiles(files))
            if verifier is not None:
                return cast(BundleVerifier, verifier)
    return None


def load_keyless(repo: Repo, branch: str) -> tuple[tuple[str, bytes], ...]:
    """`trust/keyless.yaml` and the trusted root it pins, from the branch head (empty when absent)."""
    commit = repo.resolve_ref(f"refs/heads/{branch}")
    if commit is None:
        return ()
    return keyless_files(repo.tree(commit))


def keyless_files(files: Any) -> tuple[tuple[str, bytes], ...]:
    policy = files.read("trust/keyless.yaml")
    if policy is None:
        return ()
    out = [("trust/keyless.yaml", policy)]
    root = _trusted_root_path(policy)
    data = files.read(root) if root else None
    if root and data is not None:
        out.append((root, data))
    return tuple(out)


def _record_facts(state: _State, hex_id: str, raw: bytes, add: Callable[[Finding], None]) -> _Fact:
    path = f"evidence/{hex_id}.json"
    try:
        statement = json.loads(raw)
    except ValueError as exc:
        add(Finding(path, f"not a JSON statement: {exc}", check="statement"))
        return _Fact(hex_id, None, None, None, None, None)
    predicate = statement.get("predicate") if isinstance(statement, dict) else None
    if not isinstance(predicate, dict):
        add(Finding(path, "statement has no predicate", check="statement"))
        return _Fact(hex_id, None, None, None, None, None)
    kind = predicate.get("type")
    policy = _dict_of(predicate.get("policy"))
    named = policy.get("id") if isinstance(policy.get("id"), str) else None
    previous_policy = policy.get("previous") if isinstance(policy.get("previous"), str) else None
    if kind == RATIFICATION:
        environment: str | None = POLICY_CHAIN
        signing = previous_policy or named
        if named is None:
            add(Finding(path, "a ratification that names no policy", check="policy"))
    else:
        environment = predicate.get("environment")
        signing = named
        if not isinstance(environment, str) or not environment or environment.startswith("@"):
            add(Finding(path, "the predicate names no environment", check="statement"))
            environment = None
    previous = predicate.get("previous")
    if previous is not None and not (isinstance(previous, str) and previous.startswith("sha256:")):
        add(Finding(path, f"chain link {previous!r} is not an evidence id", check="chain"))
        previous = None
    inputs = predicate.get("inputs")
    digest = inputs.get("sha256") if isinstance(inputs, dict) else None
    if not isinstance(digest, str):
        add(Finding(path, "the predicate records no inputs digest", check="inputs"))
    elif not _has(state.dir("inputs"), f"{digest}.json"):
        add(Finding(path, f"its inputs file inputs/{digest}.json is missing", check="inputs"))
    artifacts = state.dir("artifacts")
    listed: list[tuple[str, str]] = []
    for artifact in _list(predicate.get("artifacts")):
        name, sha = artifact.get("name"), artifact.get("sha256")
        if isinstance(name, str) and isinstance(sha, str):
            listed.append((name, sha))
        if not (isinstance(name, str) and isinstance(sha, str) and _has(artifacts, f"{sha}/{name}")):
            add(Finding(path, f"artifact {name} ({sha}) is missing", check="artifact"))
    promotion = _dict_of(predicate.get("promotion")).get("id")
    release = predicate.get("release")
    release_name = release.get("name") if isinstance(release, dict) else None
    release_id = release.get("id") if isinstance(release, dict) else None
    decision = predicate.get("decision")
    result = decision.get("result") if isinstance(decision, dict) else None
    if kind == RATIFICATION:
        result, release_name, release_id = "ratified", None, None
    return _Fact(
        hex_id,
        environment,
        previous,
        result if isinstance(result, str) else None,
        release_name if isinstance(release_name, str) else None,
        release_id if isinstance(release_id, str) else None,
        kind if isinstance(kind, str) else None,
        named,
        signing,
        None,
        previous_policy,
        digest if isinstance(digest, str) else None,
        predicate.get("decidedAt") if isinstance(predicate.get("decidedAt"), str) else None,
        promotion if isinstance(promotion, str) and kind != RATIFICATION else None,
        tuple(listed),
    )


def _check_identities(state: _State, fact: _Fact, raw: bytes, add: Callable[[Finding], None]) -> int:
    """Re-verify, offline, every signed commit a record's inputs count as verified (requester and
    approvals; a ratification's votes) against `trust/allowed_signers` of the policy in force: the one
    a decision names, the one before a ratification. Returns how many were checked."""
    policy = fact.previous_policy if fact.kind == RATIFICATION else fact.policy
    if policy is None or fact.inputs is None or fact.kind not in ("release_decision", RATIFICATION):
        return 0  # written before policies existed, or a genesis (no votes)
    path = f"inputs/{fact.inputs}.json"
    data = state.read(state.dir("inputs"), f"{fact.inputs}.json")
    if data is None:
        return 0  # already an `inputs` finding
    try:
        doc = json.loads(data)
        if fact.kind == RATIFICATION:
            actors = [(f"policy approval of {v['identity']}", v["signer"]) for v in doc.get("approvals", [])]
        else:
            actors = [("requester", doc["requester"])]
            actors += [(f"approval of {a['identity']}", a["signer"]) for a in doc.get("approvals", [])]
    except (ValueError, KeyError, TypeError) as exc:
        add(Finding(path, f"not decision inputs: {exc}", check="identity"))
        return 0
    allowed = state.allowed_signers(policy)
    checked = 0
    for role, actor in actors:
        if not isinstance(actor, dict) or actor.get("verified") is not True:
            continue
        who = actor.get("identity")
        payload, signature = actor.get("payload"), actor.get("signature")
        if not isinstance(payload, str) or not isinstance(signature, str) or not isinstance(who, str):
            add(
                Finding(
                    path,
                    f"{role}: counted as verified but its signed commit is not recorded",
                    check="identity",
                )
            )
            continue
        checked += 1
        try:
            body = base64.b64decode(payload, validate=True)
            verified = allowed.verify(body, signature.encode("utf-8"), principal=who, at=_committed(body))
        except (ValueError, StellaError) as exc:
            add(
                Finding(
                    path,
                    f"{role}: the recorded signature does not verify for {who} against "
                    f"trust/allowed_signers of policy {policy}: {exc}",
                    check="identity",
                )
            )
            continue
        if actor.get("key") not in (None, verified.fingerprint):
            add(
                Finding(
                    path,
                    f"{role}: recorded key {actor.get('key')} is not {verified.fingerprint}",
                    check="identity",
                )
            )
        if actor.get("commit") not in (None, signed_commit_id(body, signature.encode("utf-8"))):
            add(
                Finding(
                    path, f"{role}: the signed payload is not commit {actor.get('commit')}", check="identity"
                )
            )
    return checked


def _committed(payload: bytes) -> datetime | None:
    """The committer time of a commit's signed payload (when keys must have been valid), if it has one."""
    header = payload.partition(b"\n\n")[0]
    for line in header.split(b"\n"):
        if line.startswith(b"committer "):
            try:
                return datetime.fromtimestamp(int(line.rsplit(b" ", 2)[1]), UTC)
            except (ValueError, IndexError, OverflowError):
                return None
    return None


def signed_commit_id(payload: bytes, signature: bytes) -> str:
    """The id of the commit whose signed payload and signature these are (Git puts the signature in a
    `gpgsig` header after the others, each continuation line indented by one space)."""
    header, sep, message = payload.partition(b"\n\n")
    lines = signature.rstrip(b"\n").split(b"\n")
    body = header + b"\ngpgsig " + b"\n ".join(lines) + sep + message if sep else payload
    return hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()


def _dict_of(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _has(directory: Any, path: str) -> bool:
    """Whether the tree holds a file at `path`, without reading it."""
    if directory is None or not path or ".." in path.split("/"):
        return False
    try:
        return isinstance(directory[path], pygit2.Blob)
    except (KeyError, ValueError):
        return False


def _check_inputs(state: _State, names: Sequence[str], out: _Result) -> None:
    inputs = state.dir("inputs")
    for name in names:
        path = f"inputs/{name}"
        raw = state.read(inputs, name)
        if raw is None or not name.endswith(".json") or not _HEX.fullmatch(name.removesuffix(".json")):
            out.findings.append(Finding(path, "unexpected file in inputs/", check="layout"))
            continue
        out.files += 1
        out.stored.append(path)
        if hashlib.sha256(raw).hexdigest() != name.removesuffix(".json"):
            out.findings.append(Finding(path, "content hash does not match its name", check="hash"))


def _check_artifacts(state: _State, names: Sequence[str], out: _Result) -> None:
    artifacts = state.dir("artifacts")
    for name in names:
        path = f"artifacts/{name}"
        sub = artifacts[name]
        if not isinstance(sub, pygit2.Tree) or not _HEX.fullmatch(name):
            out.findings.append(Finding(path, "unexpected file in artifacts/", check="layout"))
            continue
        for blob in sub:
            if not isinstance(blob, pygit2.Blob):
                out.findings.append(Finding(f"{path}/{blob.name}", "unexpected directory", check="layout"))
                continue
            out.files += 1
            out.stored.append(f"{path}/{blob.name}")
            if hashlib.sha256(blob.data).hexdigest() != name:
                out.findings.append(
                    Finding(
                        f"{path}/{blob.name}", "content hash does not match its directory name", check="hash"
                    )
                )


def _check_releases(state: _State, names: Sequence[str], out: _Result) -> None:
    from .evidence import release_id  # only here: it brings the models, which workers need nowhere else

    releases = state.dir("releases")
    for name in names:
        path = f"releases/{name}"
        raw = state.read(releases, name)
        if raw is None or not name.endswith(".json"):
            out.findings.append(Finding(path, "unexpected file in releases/", check="layout"))
            continue
        out.files += 1
        try:
            lock = json.loads(raw)
            pinned = {c: f"{v['image']}@{v['digest']}" for c, v in lock["components"].items()}
            if not isinstance(lock["id"], str) or not isinstance(lock["name"], str):
                raise TypeError("name and id must be strings")
            out.locks[name.removesuffix(".json")] = lock["id"]
            if release_id(lock["name"], pinned) != lock["id"] or f"{lock['name']}.json" != name:
                out.findings.append(
                    Finding(path, "release id does not match the release's name and digests", check="lock")
                )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            out.findings.append(Finding(path, f"not a release lock: {exc}", check="lock"))


class _History:
    """No file under IMMUTABLE changed or deleted by any commit of the branch (against each parent).

    `git log` does the diffs, listing only deletions, modifications and type changes under those
    directories: libgit2 re-reads each commit's large directory trees from their delta chains and is
    many times slower at this. It runs in its own process while the records are checked.
    """

    _MESSAGES: ClassVar[dict[bytes, str]] = {
        b"D": "deleted from the evidence branch",
        b"M": "changed after it was written",
        b"T": "changed type after it was written",
    }

    def __init__(self, repo: Repo, head: str) -> None:
        argv = ["git", f"--git-dir={repo.path}", "log", "-z", "-m", "--full-history", "--no-renames"]
        argv += ["--raw", "--no-abbrev", "--diff-filter=DMT", "--format=%x01%H", head, "--", *IMMUTABLE]
        env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        try:
            self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env
            )
        except OSError as exc:
            raise Transient(f"cannot run git to check the branch history: {exc}") from exc

    def findings(self) -> list[Finding]:
        assert self._process is not None
        out, err = self._process.communicate()
        code, self._process = self._process.returncode, None
        if code != 0:
            raise Transient(
                f"git log failed while checking the branch history: {err.decode(errors='replace')}"
            )
        found = []
        for chunk in out.split(b"\x01")[1:]:
            commit, _, rest = chunk.partition(b"\0")
            fields = rest.lstrip(b"\n").split(b"\0")
            for meta, path in zip(fields[0::2], fields[1::2], strict=False):
                status = meta.rsplit(b" ", 1)[-1][:1]
                if meta.startswith(b":") and status in self._MESSAGES:
                    name = path.decode(errors="replace")
                    found.append(Finding(name, self._MESSAGES[status], commit.decode(), "history"))
        return found

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.communicate()
            self._process = None


# --- verify: the policy chain and which key may sign what -----------------------------------------


@dataclass
class _PolicyBook:
    """The policies stored on the branch (`policies/`, `policy-files/`), their keys and signers.

    Workers verify each bundle with the keys of every stored policy (and the legacy keys) and report
    which key did; `check()` then holds each record to the keys of the policy it must be signed under,
    walking the ratified chain from its genesis.
    """

    policies: dict[str, Policy] = field(default_factory=dict)
    hints: dict[str, dict[str, str]] = field(default_factory=dict)
    """Policy id -> key hint -> the key's file."""
    allowed_signers: dict[str, bytes] = field(default_factory=dict)
    keyless: dict[str, tuple[tuple[str, bytes], ...]] = field(default_factory=dict)
    legacy: TrustedKeys = field(default_factory=TrustedKeys)
    legacy_keyless: tuple[tuple[str, bytes], ...] = ()
    pointer: dict[str, Any] | None = None
    stored: list[str] = field(default_factory=list)
    """The id of every policy stored under `policies/` (whether it reads or not)."""
    listed: set[str] = field(default_factory=set)
    """The sha256 hex of every file a stored policy lists (`policy-files/<hex>`)."""
    files: list[str] = field(default_factory=list)
    """The names under `policy-files/`."""

    @classmethod
    def read(
        cls,
        tree: GitTree,
        legacy: TrustedKeys,
        legacy_keyless: tuple[tuple[str, bytes], ...],
        findings: list[Finding],
    ) -> _PolicyBook:
        book = cls(legacy=legacy, legacy_keyless=legacy_keyless, pointer=read_pointer(tree))
        book.files = tree.listdir("policy-files")
        for name in tree.listdir("policies"):
            hex_id = name.removesuffix(".json")
            if not name.endswith(".json") or not _HEX.fullmatch(hex_id):
                findings.append(Finding(f"policies/{name}", "unexpected file in policies/", check="layout"))
                continue
            book.stored.append(f"sha256:{hex_id}")
            book.listed |= _listed_files(tree.read(f"policies/{name}"))
            try:
                policy = stored_policy(tree, f"sha256:{hex_id}")
            except PolicyError as exc:
                findings.append(Finding(exc.file or f"policies/{name}", str(exc), check="policy"))
                continue
            book.policies[policy.id] = policy
            book.hints[policy.id] = {}
            for path, data in sorted(policy.files.items()):
                if path.startswith(f"{KEYS_DIR}/") and path.endswith(".pub"):
                    try:
                        trusted = TrustedKeys.from_files([(path, data)])
                    except InvalidInput as exc:
                        findings.append(Finding(f"policies/{name}", f"{path}: {exc}", check="policy"))
                        continue
                    book.hints[policy.id].update({hint: path for hint in trusted})
            signers = policy.files.get("trust/allowed_signers")
            if signers is not None:
                book.allowed_signers[policy.id] = signers
            keyless = keyless_files(_MemoryFiles(sorted(policy.files.items())))
            if keyless:
                book.keyless[policy.id] = keyless
        return book

    def key_pems(self) -> tuple[tuple[str, bytes], ...]:
        """Every key a bundle may be verified with (legacy keys first), as (source, PEM)."""
        out = [(k.source, public_pem(k.public_key)) for k in self.legacy.values()]
        for policy_id, policy in sorted(self.policies.items()):
            for _hint, path in sorted(self.hints[policy_id].items()):
                out.append((f"{policy_id}:{path}", policy.files[path]))
        return tuple(out)

    def keyless_groups(self) -> tuple[tuple[tuple[str, ...], tuple[tuple[str, bytes], ...]], ...]:
        groups: dict[tuple[tuple[str, bytes], ...], list[str]] = {}
        for policy_id, files in sorted(self.keyless.items()):
            groups.setdefault(files, []).append(policy_id)
        return tuple((tuple(ids), files) for files, ids in groups.items())

    def _holds(self, policy_id: str, key: str | None) -> str | None:
        """The key file of `policy_id` that `key` (a hint or `keyless:<i>`) is, or None."""
        if key is None:
            return None
        if key.startswith("keyless:"):
            index = key.removeprefix("keyless:")
            if index == "legacy" or not index.isdigit():
                return None
            ids, _ = self.keyless_groups()[int(index)]
            return "trust/keyless.yaml" if policy_id in ids else None
        return self.hints.get(policy_id, {}).get(key)

    def check(
        self, repo: Repo, head: str, merged: _Merged, report: Report, root: str | None
    ) -> list[Finding]:
        """The policy chain from its genesis, and each record against the keys it must be signed with."""
        found: list[Finding] = []
        facts = {f"sha256:{f.hex}": f for f in merged.facts}
        ratifications = {k: f for k, f in facts.items() if f.kind == RATIFICATION}
        starts = sorted(k for k, f in ratifications.items() if f.previous is None)
        genesis: str | None = None
        if root is not None:
            if root in starts:
                genesis = root
            else:
                found.append(
                    Finding(
                        _path(root) if root.startswith("sha256:") else report.ref,
                        f"the pinned root {root} is not a genesis ratification on this branch",
                        check="policy",
                    )
                )
        elif len(starts) > 1:
            first = repo.first_added(head, [_path(k) for k in starts])
            genesis = next((k for k in starts if _path(k) == first), starts[0])
        elif starts:
            genesis = starts[0]
        for other in starts:
            if other != genesis:
                pinned = "the pinned root" if root else "the first genesis"
                found.append(
                    Finding(_path(other), f"a second genesis: the chain starts at {pinned}", check="policy")
                )
        report.genesis = genesis
        ratified: list[str] = []
        current = genesis
        on_chain: set[str] = set()
        while current is not None and current not in on_chain:
            on_chain.add(current)
            fact = ratifications[current]
            expected = fact.policy if fact.previous is None else (ratified[-1] if ratified else None)
            if fact.previous is not None and fact.previous_policy != expected:
                found.append(
                    Finding(
                        _path(current),
                        f"names previous policy {fact.previous_policy}, but the chain ratified {expected}",
                        check="policy",
                    )
                )
            signing = fact.policy if fact.previous is None else fact.previous_policy
            self._check_key(current, fact, signing, found, report)
            if fact.policy is not None:
                ratified.append(fact.policy)
            children = sorted(k for k, f in ratifications.items() if f.previous == current)
            current = children[0] if children else None
        for other in sorted(set(ratifications) - on_chain):
            if other not in starts:
                found.append(Finding(_path(other), "a ratification not on the policy chain", check="policy"))
        report.policies = ratified
        report.policy = ratified[-1] if ratified else None
        valid = set(ratified)
        chain_facts = [ratifications[k] for k in _chain_ids(genesis, ratifications)]
        superseded = {
            before.policy: after.decided
            for before, after in itertools.pairwise(chain_facts)
            if before.policy is not None and after.decided is not None
        }
        for evidence_id, fact in sorted(facts.items()):
            if fact.kind == RATIFICATION or fact.key is None:
                continue
            if fact.policy is None:
                if genesis is None:
                    source = next((k.source for k in self.legacy.values() if k.hint == fact.key), None)
                    if source is None and not fact.key.startswith("keyless:"):
                        found.append(
                            Finding(
                                _path(evidence_id), _not_in("the legacy keys", fact.key), check="signature"
                            )
                        )
                    else:
                        report.verified_by[evidence_id] = f"legacy: {source or fact.key}"
                    continue
                signing = ratifications[genesis].policy
                made, since = fact.decided, ratifications[genesis].decided
                if made is not None and since is not None and made > since:
                    found.append(
                        Finding(
                            _path(evidence_id),
                            f"names no policy, but was made at {made}, after the genesis ({since})",
                            check="policy",
                        )
                    )
            else:
                signing = fact.policy
                if signing not in valid:
                    found.append(
                        Finding(
                            _path(evidence_id),
                            f"made under policy {signing}, which was never ratified",
                            check="policy",
                        )
                    )
                    continue
                until = superseded.get(signing)
                if until is not None and fact.decided is not None and fact.decided > until:
                    found.append(
                        Finding(
                            _path(evidence_id),
                            f"made under policy {signing} at {fact.decided}, after a later policy was "
                            f"ratified ({until}): that policy's keys sign nothing new",
                            check="policy",
                        )
                    )
            self._check_key(evidence_id, fact, signing, found, report)
        found += self._check_pointer(report, ratifications)
        found += self._check_unreferenced(valid)
        return found

    def _check_unreferenced(self, ratified: set[str]) -> list[Finding]:
        """Every stored policy was ratified on the chain, every policy file is listed by a stored one."""
        found = [
            Finding(
                policies_path(policy_id.removeprefix("sha256:")),
                f"policy {policy_id} was never ratified on the policy chain",
                check="unreferenced",
            )
            for policy_id in self.stored
            if policy_id not in ratified
        ]
        found += [
            Finding(f"policy-files/{name}", "no stored policy lists this file", check="unreferenced")
            for name in self.files
            if _HEX.fullmatch(name) and name not in self.listed
        ]
        return found

    def _check_key(
        self, evidence_id: str, fact: _Fact, signing: str | None, found: list[Finding], report: Report
    ) -> None:
        if fact.key is None:
            return  # the bundle did not verify at all: already a finding
        held = self._holds(signing, fact.key) if signing else None
        if held is None:
            where = f"policy {signing}" if signing else "no policy"
            found.append(Finding(_path(evidence_id), _not_in(where, fact.key), check="signature"))
            return
        report.verified_by[evidence_id] = f"{signing}: {held}"

    def _check_pointer(self, report: Report, ratifications: Mapping[str, _Fact]) -> list[Finding]:
        head = next(
            (
                k
                for k in ratifications
                if k in report.verified_by and not any(f.previous == k for f in ratifications.values())
            ),
            None,
        )
        if not ratifications:
            if self.pointer is not None:
                return [
                    Finding(POINTER, "a policy pointer, but no ratification on the branch", check="pointer")
                ]
            return []
        expected = {"id": report.policy, "record": head}
        if self.pointer != expected:
            return [
                Finding(
                    POINTER,
                    f"says {self.pointer}, not the head of the policy chain ({report.policy}, {head})",
                    check="pointer",
                )
            ]
        return []


def _listed_files(raw: bytes | None) -> set[str]:
    """The sha256 hex of each file a `policies/<hex>.json` lists, as far as it reads."""
    try:
        manifest = json.loads(raw or b"")
    except ValueError:
        return set()
    if not isinstance(manifest, dict):
        return set()
    return {v.removeprefix("sha256:") for v in manifest.values() if isinstance(v, str)}


def _chain_ids(genesis: str | None, ratifications: Mapping[str, _Fact]) -> list[str]:
    """The ratification ids from the genesis along `previous` links (the first child at a fork)."""
    out: list[str] = []
    current = genesis
    while current is not None and current not in out:
        out.append(current)
        children = sorted(k for k, f in ratifications.items() if f.previous == current)
        current = children[0] if children else None
    return out


def _not_in(where: str, key: str) -> str:
    return f"signed by a key (hint {key}) that {where} does not hold as an evidence key"


# --- verify: the whole-branch checks, from the facts -----------------------------------------------


def _check_locks(merged: _Merged) -> list[Finding]:
    found: list[Finding] = []
    for fact in merged.facts:
        if fact.release_name is None:
            continue
        lock_id = merged.locks.get(fact.release_name)
        path = f"evidence/{fact.hex}.json"
        if fact.release_name not in merged.locks:
            found.append(
                Finding(path, f"its release lock releases/{fact.release_name}.json is missing", check="lock")
            )
        elif lock_id != fact.release_id:
            found.append(
                Finding(path, f"release id differs from releases/{fact.release_name}.json", check="lock")
            )
    return found


def _check_chains(tree: GitTree, merged: _Merged, report: Report) -> list[Finding]:
    """Chain links, forks, and each environment's heads and pointer; sets `report.chains`."""
    found: list[Finding] = []
    facts = {f"sha256:{f.hex}": f for f in merged.facts if f.environment is not None}
    children: dict[str, list[str]] = {}
    for evidence_id, fact in sorted(facts.items()):
        previous = fact.previous
        if previous is None:
            continue
        other = facts.get(previous)
        if other is None:
            message = f"chain link points to {previous}, which is not a record here"
            found.append(Finding(_path(evidence_id), message, None, "chain"))
        elif other.environment != fact.environment:
            message = f"chain link points to {previous} of another environment"
            found.append(Finding(_path(evidence_id), message, None, "chain"))
        children.setdefault(previous, []).append(evidence_id)
    for previous, kids in sorted(children.items()):
        if len(kids) > 1:
            message = f"chain forks: {len(kids)} records name it as previous"
            found.append(Finding(_path(previous), message, None, "chain"))
    heads: dict[str, list[str]] = {}
    for evidence_id, fact in sorted(facts.items()):
        if evidence_id not in children and fact.environment is not None:
            heads.setdefault(fact.environment, []).append(evidence_id)
    report.chains = {env: ids[0] for env, ids in sorted(heads.items()) if len(ids) == 1}
    for env in sorted((set(heads) - {POLICY_CHAIN}) | set(tree.listdir("environments"))):
        chain_heads = heads.get(env, []) if env != POLICY_CHAIN else []  # the policy chain has no pointer
        found += _check_pointer(tree, env, chain_heads, facts)
    return found


def _check_pointer(tree: GitTree, env: str, heads: list[str], facts: Mapping[str, _Fact]) -> list[Finding]:
    """`environments/<env>/stella.version.json` names the one head of the chain and its newest allowed
    record; any other head is a record no later record and no pointer reaches."""
    path = f"environments/{env}/stella.version.json"
    raw = tree.read(path)
    pointer: dict[str, Any] | None = None
    found: list[Finding] = []
    if raw is None:
        if heads:
            found.append(
                Finding(path, "missing: the environment has records but no pointer", check="pointer")
            )
    else:
        try:
            pointer = json.loads(raw)
            if not isinstance(pointer, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            found.append(Finding(path, f"not JSON: {exc}", check="pointer"))
            pointer = None
        if not heads:
            message = f"a pointer for {env}, which has no records: nothing was decided for it"
            return [*found, Finding(path, message, check="pointer")]
    head = pointer.get("head") if pointer is not None else None
    for other in heads:
        if other != head and len(heads) > 1:
            message = f"a second head of {env}'s chain: no record names it as previous"
            found.append(Finding(_path(other), f"{message}, and the pointer names {head}", None, "chain"))
    if pointer is None or not heads:
        return found
    if head not in heads:
        message = f"points to {head}, not the head of the chain ({', '.join(heads)})"
        return [*found, Finding(path, message, check="pointer")]
    if pointer.get("environment") != env:
        return [*found, Finding(path, f"names environment {pointer.get('environment')!r}", check="pointer")]
    if set(pointer) != _POINTER_FIELDS:
        fields = ", ".join(sorted(pointer))
        message = f"has the fields {fields}, not {', '.join(sorted(_POINTER_FIELDS))}"
        found.append(Finding(path, message, check="pointer"))
    current = pointer.get("current")
    named = current.get("evidence") if isinstance(current, dict) else None
    allowed = _newest_allowed(facts, head)
    expected = f"sha256:{allowed.hex}" if allowed is not None else None
    if expected != named:
        message = f"current names {named}, not the newest allowed record of the chain ({expected or 'none'})"
        found.append(Finding(path, message, check="pointer"))
    elif allowed is None:
        if current is not None:
            found.append(
                Finding(path, "current is set, but the chain has no allowed record", check="pointer")
            )
    elif current != (want := _current_of(allowed)):
        have = current if isinstance(current, dict) else {}
        differ = [
            f"{key} {have.get(key)!r} is not the record's {want.get(key)!r}"
            if key in want
            else f"{key} is not a field of current"
            for key in sorted(set(want) | set(have))
            if have.get(key) != want.get(key) or key not in want
        ]
        message = f"current differs from the record it names ({named}): {'; '.join(differ)}"
        found.append(Finding(path, message, check="pointer"))
    return found


_POINTER_FIELDS = frozenset({"environment", "head", "current"})


def _current_of(fact: _Fact) -> dict[str, Any]:
    """What a pointer's `current` must be for an allowed record (as the reconciler writes it)."""
    return {
        "release": fact.release_name,
        "releaseId": fact.release_id,
        "evidence": f"sha256:{fact.hex}",
        "decidedAt": fact.decided,
        "artifacts": dict(fact.artifacts),
    }


def _newest_allowed(facts: Mapping[str, _Fact], head: object) -> _Fact | None:
    seen: set[str] = set()
    current = head if isinstance(head, str) else None
    while current is not None and current not in seen and current in facts:
        seen.add(current)
        fact = facts[current]
        if fact.result == "allow":
            return fact
        current = fact.previous
    return None


def _check_duplicates(merged: _Merged, report: Report) -> list[Finding]:
    """One decision per promotion id: a recorded decision is final (DESIGN §4). Only records that
    verify count (a record that does not is ignored by the reconciler, which decides again); the first
    is the earliest in its chain (by `decidedAt` across environments), each later one is a finding."""
    by_promotion: dict[str, list[_Fact]] = {}
    for fact in merged.facts:
        if fact.kind == "release_decision" and fact.promotion and f"sha256:{fact.hex}" in report.verified_by:
            by_promotion.setdefault(fact.promotion, []).append(fact)
    doubled = {k: v for k, v in by_promotion.items() if len(v) > 1}
    if not doubled:
        return []
    facts = {f"sha256:{f.hex}": f for f in merged.facts if f.environment is not None}
    depths: dict[str, int] = {}
    found: list[Finding] = []
    for promotion, decisions in sorted(doubled.items()):
        one_chain = len({f.environment for f in decisions}) == 1
        keyed = []
        for fact in decisions:
            depth = _depth(facts, f"sha256:{fact.hex}", depths)
            keyed.append(((depth if one_chain else 0, fact.decided or "", depth, fact.hex), fact))
        first, *later = [fact for _, fact in sorted(keyed)]
        when = f" at {first.decided}" if first.decided else ""
        for fact in later:
            message = (
                f"a second decision for promotion {promotion}: sha256:{first.hex} decided it first{when}"
            )
            found.append(Finding(_path(fact.hex), message, check="duplicate"))
    return found


def _depth(facts: Mapping[str, _Fact], evidence_id: str, depths: dict[str, int]) -> int:
    """How many records precede `evidence_id` along its `previous` links (memoised in `depths`)."""
    path: list[str] = []
    seen: set[str] = set()
    current: str | None = evidence_id
    while current is not None and current not in depths and current in facts and current not in seen:
        path.append(current)
        seen.add(current)
        current = facts[current].previous
    base = depths.get(current, -1) if current is not None else -1
    for evidence in reversed(path):
        base += 1
        depths[evidence] = base
    return depths.get(evidence_id, 0)


_TOP_LEVEL = frozenset(
    {
        "releases",
        "evidence",
        "inputs",
        "artifacts",
        "environments",
        "targets",
        "policies",
        "policy-files",
        "policy",
    }
)
_POINTER_FILE = "stella.version.json"


def _check_layout(tree: Any) -> list[Finding]:
    """No file outside the layout (DESIGN §4, §8, §9): only the top-level directories of `_TOP_LEVEL`;
    in `environments/` only `<env>/stella.version.json`, in `targets/` only
    `<env>/<target>/stella.version.json`, in `policy/` only `stella.policy.json`, in `policy-files/`
    only `<sha256 hex>` files. The other directories are checked with their contents."""
    found: list[Finding] = []

    def stray(path: str, obj: Any, why: str) -> None:
        if isinstance(obj, pygit2.Tree):
            for entry in obj:
                stray(f"{path}/{entry.name}", entry, why)
        else:
            found.append(Finding(path, why, check="layout"))

    def pointers(path: str, obj: Any, levels: int) -> None:
        """`obj` must hold, `levels` directories down, only stella.version.json files."""
        for entry in obj:
            where = f"{path}/{entry.name}"
            if levels == 0:
                if entry.name != _POINTER_FILE or not isinstance(entry, pygit2.Blob):
                    stray(where, entry, f"unexpected file in {path}/: only {_POINTER_FILE}")
            elif isinstance(entry, pygit2.Tree):
                pointers(where, entry, levels - 1)
            else:
                stray(where, entry, f"unexpected file in {path.split('/')[0]}/")

    for entry in tree:
        name = entry.name or ""
        if name not in _TOP_LEVEL:
            stray(name, entry, "not part of the evidence branch's layout")
        elif not isinstance(entry, pygit2.Tree):
            found.append(Finding(name, "a file where the layout has a directory", check="layout"))
        elif name == "environments":
            pointers(name, entry, 1)
        elif name == "targets":
            pointers(name, entry, 2)
        elif name == "policy":
            for sub in entry:
                if sub.name != POINTER.split("/")[1] or not isinstance(sub, pygit2.Blob):
                    stray(f"policy/{sub.name}", sub, "unexpected file in policy/")
        elif name == "policy-files":
            for sub in entry:
                if not _HEX.fullmatch(sub.name or "") or not isinstance(sub, pygit2.Blob):
                    stray(f"policy-files/{sub.name}", sub, "unexpected file in policy-files/")
    return found


def _check_unreferenced(merged: _Merged) -> list[Finding]:
    """Every inputs file and artifact on the branch is one a record names."""
    named = {f"inputs/{f.inputs}.json" for f in merged.facts if f.inputs is not None}
    named |= {f"artifacts/{sha}/{name}" for f in merged.facts for name, sha in f.artifacts}
    return [
        Finding(
            path,
            "no record names this inputs file"
            if path.startswith("inputs/")
            else "no record lists this artifact",
            check="unreferenced",
        )
        for path in sorted(set(merged.stored) - named)
    ]


def _check_reflog(repo: Repo, ref: str) -> list[Finding]:
    try:
        entries = list(repo.git.lookup_reference(ref).log())
    except (KeyError, ValueError, pygit2.GitError):
        entries = []
    found = []
    for entry in entries:
        old, new = str(entry.oid_old), str(entry.oid_new)
        if old in (_ZERO, new):
            continue
        if not repo.is_ancestor(old, new):
            found.append(
                Finding(
                    ref,
                    f"moved from {old[:12]} to {new[:12]}, which is not a fast-forward (history rewritten)",
                    check="reflog",
                )
            )
    return found


def _path(evidence_id: str) -> str:
    return f"evidence/{evidence_id.removeprefix('sha256:')}.json"


def _list(value: object) -> Iterable[dict[str, object]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


# --- checkpoints -----------------------------------------------------------------------------------

CHECKPOINT_PAYLOAD_TYPE = "application/vnd.stella.checkpoint+json"
CHECKPOINT_TYPE = "https://stella.dev/checkpoint/v1"


@dataclass(frozen=True)
class Checkpoint:
    """What the evidence branch held at one time: its head, record count and each chain's head."""

    ref: str
    head: str
    records: int
    chains: Mapping[str, str]
    time: str

    def as_json(self) -> dict[str, Any]:
        return {
            "type": CHECKPOINT_TYPE,
            "ref": self.ref,
            "head": self.head,
            "records": self.records,
            "chains": dict(sorted(self.chains.items())),
            "time": self.time,
        }

    def payload(self) -> bytes:
        """The canonical (RFC 8785) bytes that are signed."""
        data: bytes = rfc8785.dumps(self.as_json())
        return data

    @classmethod
    def parse(cls, payload: bytes, source: str) -> Checkpoint:
        try:
            doc = json.loads(payload)
            if not isinstance(doc, dict) or doc.get("type") != CHECKPOINT_TYPE:
                raise ValueError(f"type is not {CHECKPOINT_TYPE}")
            chains = doc["chains"]
            if not isinstance(chains, dict) or not all(isinstance(v, str) for v in chains.values()):
                raise ValueError("chains must map environments to evidence ids")
            checkpoint = cls(
                str(doc["ref"]), str(doc["head"]), int(doc["records"]), dict(chains), str(doc["time"])
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"{source}: not a Stella checkpoint: {exc}") from exc
        if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", checkpoint.head):
            raise InvalidInput(
                f"{source}: not a Stella checkpoint: head {checkpoint.head!r} is not a commit id"
            )
        return checkpoint


def make_checkpoint(report: Report, now: datetime) -> Checkpoint:
    """The checkpoint of a verified branch; `InvalidInput` when there is nothing to checkpoint."""
    if report.head is None:
        raise InvalidInput(f"{report.ref}: the evidence ref does not exist; nothing to checkpoint")
    from .evidence import rfc3339  # here, not at the top: workers never need the models it imports

    return Checkpoint(report.ref, report.head, report.records, dict(report.chains), rfc3339(now))


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer) -> bytes:
    """A Sigstore bundle (DSSE) over the checkpoint's canonical bytes."""
    return signer.sign(checkpoint.payload(), CHECKPOINT_PAYLOAD_TYPE)


def read_checkpoint(data: bytes, keys: TrustedKeys, source: str) -> Checkpoint:
    """The checkpoint in a file `stella audit checkpoint` wrote (the bundle, or its `-o json` output),
    after verifying its signature with `keys`. Anything else is `InvalidInput` (exit 2)."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"{source}: not a checkpoint file (not JSON: {exc})") from exc
    if isinstance(doc, dict) and isinstance(doc.get("bundle"), dict):
        doc = doc["bundle"]
        data = json.dumps(doc).encode()
    if not isinstance(doc, dict) or "dsseEnvelope" not in doc:
        raise InvalidInput(
            f"{source}: not a checkpoint file: expected the signed bundle `stella audit checkpoint` writes"
        )
    try:
        verified = verify_bundle(data, keys, source=source)
    except BundleError as exc:
        raise InvalidInput(f"checkpoint not trusted: {exc}") from exc
    if verified.payload_type != CHECKPOINT_PAYLOAD_TYPE:
        raise InvalidInput(
            f"{source}: signs a {verified.payload_type!r} payload, "
            f"not a checkpoint ({CHECKPOINT_PAYLOAD_TYPE})"
        )
    return Checkpoint.parse(verified.payload, source)


def _check_checkpoint(
    repo: Repo, ref: str, report: Report, merged: _Merged, checkpoint: Checkpoint
) -> list[Finding]:
    found: list[Finding] = []
    taken = f"the checkpoint of {checkpoint.time}"
    head = report.head or ""
    if checkpoint.ref != ref:
        found.append(Finding(ref, f"{taken} is of {checkpoint.ref}, not of {ref}", None, "checkpoint"))
    if not repo.is_ancestor(checkpoint.head, head):
        known = repo.resolve_ref(checkpoint.head) is not None
        where = "is not an ancestor of" if known else "is not in the history of"
        found.append(
            Finding(
                ref,
                f"{taken} was at {checkpoint.head[:12]}, which {where} today's head {head[:12]}: "
                "the branch was rewritten after the checkpoint",
                None,
                "checkpoint",
            )
        )
    if report.records < checkpoint.records:
        found.append(
            Finding(
                ref,
                f"{report.records} records today, fewer than the {checkpoint.records} {taken} covered",
                None,
                "checkpoint",
            )
        )
    facts = {f"sha256:{f.hex}": f for f in merged.facts}
    for env, evidence_id in sorted(checkpoint.chains.items()):
        fact = facts.get(evidence_id)
        if fact is None:
            found.append(
                Finding(
                    _path(evidence_id), f"the head of {env}'s chain at {taken} is gone", None, "checkpoint"
                )
            )
            continue
        if fact.environment != env or not _in_chain(facts, report.chains.get(env), evidence_id):
            found.append(
                Finding(
                    _path(evidence_id),
                    f"the head of {env}'s chain at {taken} is no longer in {env}'s chain",
                    None,
                    "checkpoint",
                )
            )
    return found


def _in_chain(facts: Mapping[str, _Fact], head: str | None, wanted: str) -> bool:
    seen: set[str] = set()
    current = head
    while current is not None and current not in seen:
        if current == wanted:
            return True
        seen.add(current)
        fact = facts.get(current)
        current = fact.previous if fact is not None else None
    return False


# --- the offline packet ----------------------------------------------------------------------------

PACKET_FORMAT = "stella-evidence-packet/v1"
BUNDLE_MEMBER = "evidence.bundle"
MANIFEST_MEMBER = "manifest.json"
README_MEMBER = "README.md"
TRUST_FILES = ("trust/allowed_signers", "trust/keyless.yaml")
MAX_MANIFEST_BYTES = 1 << 20
"""The most `manifest.json` may hold."""
MAX_MEMBER_BYTES = 16 << 20
"""The most any member but the Git bundle may hold (README, keys, allowed signers, keyless policy and
trusted root)."""
MAX_PACKET_MEMBERS = 10_000
"""The most members a packet may have (an export writes fewer than ten)."""
UNPACKED_BASE = 64 << 20
UNPACKED_RATIO = 4
"""A packet may unpack to at most `UNPACKED_BASE` + `UNPACKED_RATIO` x its size (`unpacked_cap`)."""
_HEADROOM = 16 << 20
"""What tar headers and padding may add to the members' bytes in the stream."""


class PacketError(InvalidInput):
    """The packet is unusable: not a packet, a member outside the packet, a link, no manifest..."""


@dataclass(frozen=True)
class Exported:
    path: Path
    ref: str
    head: str
    records: int
    members: Mapping[str, str]
    """Member -> sha256 (the manifest's list)."""


def export_packet(repo: Repo, ref: str, branch: str, out: Path) -> Exported:
    """Write the offline packet of `ref` to `out` (a .tar.gz): the branch as a Git bundle, the trust
    material of `branch`, `manifest.json` and `README.md`. The same branch gives the same bytes."""
    if repo.resolve_ref(ref) is None:
        raise InvalidInput(f"{ref}: the evidence ref does not exist; nothing to export")
    source = repo.resolve_ref(f"refs/heads/{branch}")
    if source is None:
        raise InvalidInput(f"branch {branch!r} not found: cannot read the trust material")
    files = repo.tree(source)
    members: dict[str, bytes] = {}
    for name in files.listdir(KEYS_DIR):
        if name.endswith(".pub"):
            members[f"{KEYS_DIR}/{name}"] = files.read(f"{KEYS_DIR}/{name}") or b""
    stored = repo.tree(repo.resolve_ref(ref) or "").listdir("policies")
    keys = read_keys(sorted(members.items()), branch)  # an unreadable key goes in as is: the verifier says so
    if not stored and not keys:
        raise InvalidInput(
            f"{KEYS_DIR}/ on {branch} holds no readable *.pub key: the packet could not be verified"
        )
    for path in TRUST_FILES:
        data = files.read(path)
        if data is not None:
            members[path] = data
    root = _trusted_root_path(members.get("trust/keyless.yaml"))
    if root is not None and (data := files.read(root)) is not None:
        members[root] = data
    with tempfile.TemporaryDirectory(prefix="stella-export-") as tmp:
        bundle = Path(tmp) / BUNDLE_MEMBER
        # one thread: the same objects give the same pack, so the same branch gives the same packet
        git_dir = ["--git-dir", str(repo.path), "-c", "pack.threads=1"]
        _git([*git_dir, "bundle", "create", "--quiet", str(bundle), ref], "git bundle create")
        heads = _git([*git_dir, "bundle", "list-heads", str(bundle), ref], "git bundle list-heads")
        head = heads.split()[0]  # where the ref was when bundled (it may have moved since we looked)
        commit = repo.git[head].peel(pygit2.Commit)
        records = sum(
            1
            for name in _names(commit.tree, "evidence")
            if name.endswith(".json") and not name.endswith(".sigstore.json")
        )
        digests = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
        digests[BUNDLE_MEMBER] = _file_sha256(bundle)
        readme = _readme(ref, head, records, keys, sorted(members), root)
        members[README_MEMBER] = readme
        digests[README_MEMBER] = hashlib.sha256(readme).hexdigest()
        manifest = {
            "format": PACKET_FORMAT,
            "ref": ref,
            "head": head,
            "records": records,
            "trust": {"branch": branch, "commit": source},
            "members": dict(sorted(digests.items())),
        }
        members[MANIFEST_MEMBER] = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
        _write_tar(out, members, bundle, commit.commit_time)
    return Exported(out, ref, head, records, dict(sorted(digests.items())))


def _trusted_root_path(keyless: bytes | None) -> str | None:
    """The trusted root `trust/keyless.yaml` pins, when it names a plain path inside the repository."""
    if keyless is None:
        return None
    import yaml

    try:
        doc = yaml.safe_load(keyless)
    except yaml.YAMLError:
        return None
    path = doc.get("trustedRoot") if isinstance(doc, dict) else None
    if not isinstance(path, str) or _unsafe(path):
        return None
    return str(PurePosixPath(path))


def _write_tar(out: Path, members: Mapping[str, bytes], bundle: Path, mtime: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        with (
            open(partial, "wb") as raw,
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            names = sorted([*members, BUNDLE_MEMBER], key=lambda n: (n != README_MEMBER, n))
            for name in names:
                info = tarfile.TarInfo(name)
                info.mtime, info.mode, info.uname, info.gname = mtime, 0o644, "", ""
                if name == BUNDLE_MEMBER:
                    info.size = bundle.stat().st_size
                    with open(bundle, "rb") as fh:
                        tar.addfile(info, fh)
                else:
                    info.size = len(members[name])
                    tar.addfile(info, io.BytesIO(members[name]))
        os.replace(partial, out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise InvalidInput(f"{out}: cannot write the packet: {exc}") from exc


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git(argv: list[str], what: str) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"}
    try:
        done = subprocess.run(["git", *argv], capture_output=True, text=True, timeout=600, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Transient(f"{what}: {exc}") from exc
    if done.returncode != 0:
        raise Transient(f"{what} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _unsafe(name: str) -> str | None:
    """Why a member name could write outside the directory it is extracted into (None: it is safe)."""
    if not name or "\x00" in name:
        return "an empty or NUL name"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if "\\" in name:
        return "a backslash in the name"
    if ".." in PurePosixPath(name).parts:
        return "a parent-directory (..) component"
    return None


def unpacked_cap(packet_size: int) -> int:
    """How many bytes a packet of `packet_size` bytes may unpack to: `UNPACKED_BASE` plus
    `UNPACKED_RATIO` times its size (a Git bundle is compressed already: gzip barely shrinks it)."""
    return UNPACKED_BASE + UNPACKED_RATIO * packet_size


def _member_cap(name: str, total: int) -> tuple[int, str]:
    """The most bytes member `name` may hold, and how the cap is named in a refusal."""
    if name == MANIFEST_MEMBER:
        return MAX_MANIFEST_BYTES, f"the cap of {_size(MAX_MANIFEST_BYTES)} for {MANIFEST_MEMBER}"
    if name == BUNDLE_MEMBER:
        return total, (
            f"the cap of {_size(total)} for the packet's contents "
            f"({_size(UNPACKED_BASE)} plus {UNPACKED_RATIO} times the packet's size)"
        )
    return MAX_MEMBER_BYTES, f"the cap of {_size(MAX_MEMBER_BYTES)} for a member other than {BUNDLE_MEMBER}"


def _size(count: int) -> str:
    """`count` bytes for a message: `16 MiB`, `72.4 MiB`."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):.1f}".removesuffix(".0") + f" {unit}"
    return f"{count} bytes"


class _Capped(io.RawIOBase):
    """A file object over the decompressed stream that refuses to give more than `cap` bytes: it bounds
    what tarfile itself reads into memory (long names, PAX headers), whatever the headers declare."""

    def __init__(self, packet: Path, raw: Any, cap: int) -> None:
        super().__init__()
        self.packet, self.raw, self.cap, self.count = packet, raw, cap, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.raw.read(size if size >= 0 else self.cap + 1 - self.count)
        self.count += len(data)
        if self.count > self.cap:
            raise PacketError(
                f"{self.packet}: unpacks to more than {_size(self.cap)} (the cap: {_size(UNPACKED_BASE)} "
                f"plus {UNPACKED_RATIO} times the packet's size, and {_size(_HEADROOM)} for tar headers); "
                "the packet is not safe to open"
            )
        return data


@contextmanager
def _opened(packet: Path) -> Iterator[tuple[tarfile.TarFile, int]]:
    """The packet as a tar stream (read once, front to back), with its unpacked-size cap; the errors of
    a file that is not a .tar.gz are `PacketError`."""
    if not packet.is_file():
        raise PacketError(f"{packet}: no such file")
    try:
        cap = unpacked_cap(packet.stat().st_size)
        with (
            open(packet, "rb") as raw,
            gzip.GzipFile(fileobj=raw, mode="rb") as gz,
            tarfile.open(fileobj=_Capped(packet, gz, cap + _HEADROOM), mode="r|") as tar,
        ):
            yield tar, cap
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise PacketError(f"{packet}: not a .tar.gz evidence packet, or a damaged one: {exc}") from exc
    except OSError as exc:
        raise PacketError(f"{packet}: cannot extract the packet: {exc}") from exc


def _members(packet: Path, tar: tarfile.TarFile, cap: int) -> Iterator[tuple[tarfile.TarInfo, str]]:
    """Each member with its normalised name, refusing (`PacketError`) any absolute path or `..`
    component, link, device or other special file, duplicate name, member over its size cap, more than
    `MAX_PACKET_MEMBERS` members and more than `cap` bytes in all, from the headers alone."""
    seen: set[str] = set()
    total = 0
    for count, member in enumerate(tar, start=1):
        if count > MAX_PACKET_MEMBERS:
            raise PacketError(
                f"{packet}: more than {MAX_PACKET_MEMBERS} members (the cap); the packet is not safe to open"
            )
        why = _unsafe(member.name)
        name = str(PurePosixPath(member.name))
        limit, named = _member_cap(name, cap)
        if why is None and (member.issym() or member.islnk()):
            why = f"a {'symbolic' if member.issym() else 'hard'} link (to {member.linkname!r})"
        elif why is None and not (member.isfile() or member.isdir()):
            why = "a special file (device, FIFO...)"
        elif why is None and member.size > limit:
            why = f"{member.size} bytes, over {named}"
        if why is None and name in seen:
            why = "a duplicate name"
        if why is not None:
            raise PacketError(
                f"{packet}: refusing member {member.name!r}: {why}; the packet is not safe to open"
            )
        seen.add(name)
        total += member.size
        if total > cap:
            raise PacketError(
                f"{packet}: its members hold more than {_size(cap)} (the cap: {_size(UNPACKED_BASE)} plus "
                f"{UNPACKED_RATIO} times the packet's size); the packet is not safe to open"
            )
        yield member, name


@dataclass(frozen=True)
class _Scan:
    files: frozenset[str]
    """Every regular member, by normalised name."""
    manifest: bytes | None


def _scan(packet: Path) -> _Scan:
    """Check every member's header (see `_members`) and read the manifest; writes nothing."""
    files: set[str] = set()
    manifest: bytes | None = None
    with _opened(packet) as (tar, cap):
        for member, name in _members(packet, tar, cap):
            if not member.isfile():
                continue
            files.add(name)
            if name == MANIFEST_MEMBER:
                source = tar.extractfile(member)
                if source is None:
                    raise PacketError(f"{packet}: cannot read member {name!r}")
                with source:
                    manifest = source.read(MAX_MANIFEST_BYTES + 1)
    return _Scan(frozenset(files), manifest)


def extract_packet(packet: Path, dest: Path, members: Collection[str] | None = None) -> dict[str, str]:
    """Extract the regular files of `packet` into `dest` (only those named in `members`, when given);
    returns member -> sha256 of what was extracted.

    Every header is checked first, before anything is written (`_members`: path tricks, links, special
    files, duplicates, sizes over their caps, too many members), then the tar is read again and only
    the wanted members are written. An unusable packet is `PacketError`.
    """
    _scan(packet)
    return _extract(packet, dest, members)


def _extract(packet: Path, dest: Path, wanted: Collection[str] | None) -> dict[str, str]:
    digests: dict[str, str] = {}
    with _opened(packet) as (tar, cap):
        for member, name in _members(packet, tar, cap):
            if not member.isfile() or (wanted is not None and name not in wanted):
                continue
            target = dest.joinpath(*PurePosixPath(name).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is None:
                raise PacketError(f"{packet}: cannot read member {name!r}")
            digest = hashlib.sha256()
            with source, open(target, "xb") as fh:
                while block := source.read(1 << 20):
                    digest.update(block)
                    fh.write(block)
            digests[name] = digest.hexdigest()
    return digests


@dataclass(frozen=True)
class Packet:
    """What a packet holds, once extracted and checked against its manifest."""

    ref: str
    head: str
    records: int
    keys: TrustedKeys
    findings: tuple[Finding, ...]


def verify_packet(
    packet: Path,
    *,
    checkpoint: tuple[bytes, str] | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    root: str | None = None,
) -> tuple[Packet, Report]:
    """Verify an offline packet with only what it holds: read its manifest, extract the members it
    lists into a temporary directory, check each against the manifest, clone the Git bundle there, and
    verify that branch with the packet's keys (and `checkpoint`: the bytes of a checkpoint file and its
    name). Needs no network and no repository. Member mismatches are `packet` findings (a member the
    manifest does not list is never extracted); an unusable packet is `PacketError`."""
    scan = _scan(packet)  # every header checked, before anything is written
    manifest = _manifest(packet, scan.manifest)
    listed: dict[str, str] = manifest["members"]
    with tempfile.TemporaryDirectory(prefix="stella-packet-") as tmp:
        unpacked = Path(tmp) / "packet"
        unpacked.mkdir()
        digests = _extract(packet, unpacked, set(listed))
        findings: list[Finding] = []
        for name, digest in sorted(listed.items()):
            if name not in digests:
                findings.append(Finding(name, "listed in the manifest but not in the packet", None, "packet"))
            elif digests[name] != digest:
                findings.append(
                    Finding(
                        name,
                        f"sha256 {digests[name]} differs from the manifest's {digest}: "
                        "the packet was changed after it was exported",
                        None,
                        "packet",
                    )
                )
        for name in sorted(scan.files - set(listed) - {MANIFEST_MEMBER}):
            findings.append(
                Finding(name, "in the packet but not listed in the manifest (not used)", None, "packet")
            )
        if BUNDLE_MEMBER not in digests:
            where = "its manifest lists" if BUNDLE_MEMBER in scan.files else "the packet has"
            raise PacketError(f"{packet}: {where} no {BUNDLE_MEMBER}")
        members = {n: unpacked.joinpath(*n.split("/")) for n in sorted(digests)}
        keys = read_keys(
            (n, p.read_bytes())
            for n, p in members.items()
            if n.startswith(f"{KEYS_DIR}/") and n.endswith(".pub")
        )
        clone = Path(tmp) / "evidence.git"
        try:
            _git(
                ["clone", "--quiet", "--mirror", str(unpacked / BUNDLE_MEMBER), str(clone)],
                "git clone of the bundle",
            )
        except Transient as exc:
            raise PacketError(f"{packet}: {BUNDLE_MEMBER} is not a usable Git bundle: {exc}") from exc
        repo = Repo(clone)
        ref = manifest["ref"]
        head = repo.resolve_ref(ref)
        if head != manifest["head"]:
            findings.append(
                Finding(
                    ref, f"the bundle's head is {head}, not the manifest's {manifest['head']}", None, "packet"
                )
            )
        signed_with = branch_keys(repo, ref, keys)
        read = read_checkpoint(checkpoint[0], signed_with, checkpoint[1]) if checkpoint is not None else None
        keyless = keyless_files(
            _MemoryFiles([(n, p.read_bytes()) for n, p in members.items() if n.startswith("trust/")])
        )
        report = verify(
            repo, ref, keys, progress, workers=workers, checkpoint=read, keyless=keyless, root=root
        )
        if head == manifest["head"] and report.records != int(manifest["records"]):
            message = f"the branch holds {report.records} records, the manifest says {manifest['records']}"
            findings.append(Finding(ref, message, None, "packet"))
        report.findings = sorted({*report.findings, *findings}, key=Finding.sort_key)
        info = Packet(ref, manifest["head"], int(manifest["records"]), keys, tuple(findings))
    return info, report


def _manifest(packet: Path, raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        raise PacketError(f"{packet}: the packet has no {MANIFEST_MEMBER}: not a Stella evidence packet")
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != PACKET_FORMAT:
            raise ValueError(f"format is not {PACKET_FORMAT}")
        if not isinstance(doc.get("ref"), str) or not isinstance(doc.get("head"), str):
            raise ValueError("ref and head must be strings")
        members = doc.get("members")
        if not isinstance(members, dict) or not all(isinstance(v, str) for v in members.values()):
            raise ValueError("members must map names to sha256 digests")
        int(doc.get("records", 0))
    except (ValueError, TypeError) as exc:
        raise PacketError(f"{packet}: {MANIFEST_MEMBER} is not a packet manifest: {exc}") from exc
    return doc


def _readme(
    ref: str, head: str, records: int, keys: LoadedKeys, members: Sequence[str], trusted_root: str | None
) -> bytes:
    key_lines = "\n".join(
        [f"- `{k.source}`: hint `{k.hint}`" for k in keys.values()]
        + [f"- `{f.file}`: unreadable, it verifies nothing" for f in keys.unreadable]
    )
    first_key = next((k.source for k in keys.values()), f"{KEYS_DIR}/<key>.pub")
    root_note = (
        f"This packet includes `{trusted_root}` (the trusted root `trust/keyless.yaml` pins): give it to\n"
        "cosign with `--trusted-root`."
        if trusted_root
        else "Give cosign any trusted root file it accepts (e.g. the `trusted_root.json` of your Sigstore\n"
        "instance, saved while online); the key-based bundles use none of its keys."
    )
    listing = "\n".join(f"- `{m}`" for m in [BUNDLE_MEMBER, *members, MANIFEST_MEMBER])
    text = f"""# Stella evidence packet

The evidence branch `{ref}` at commit `{head}` ({records} records), exported for offline audit.

{listing}

`manifest.json` lists the sha256 of every other member. The trust material comes from the source
branch named there. Before you trust anything below, compare these key hints with the ones you were
given through another channel (whoever can change this packet can also change its keys):

{key_lines}

## Verify everything with stella

No network and no repository are needed; run it from any directory:

```sh
stella audit verify --packet PACKET.tar.gz --root GENESIS_ID   # the genesis id you were given
stella audit verify --packet PACKET.tar.gz -o json           # one entry per finding, with a check code
stella audit verify --packet PACKET.tar.gz --checkpoint CHECKPOINT.json   # a checkpoint you kept
```

It extracts the packet into a temporary directory, checks each member against the manifest, clones
`evidence.bundle`, and checks the policy chain from its genesis (pin it with `--root`; without it the
genesis found is trusted on first use, and said so), every record's signature against the evidence
keys of the policy it names, the requesters' and approvers' SSH signatures again, every file hash,
every chain link, the branch history (no evidence file changed or deleted), every record's inputs and
artifacts, the release locks and the environment pointers. Exit code 0: no findings; 1: findings; 2: not a
usable packet (or checkpoint).

## Verify records with standard Sigstore tooling

Extract the packet and check out the branch:

```sh
mkdir packet && tar -xzf PACKET.tar.gz -C packet && cd packet
git clone --quiet --branch {ref.removeprefix("refs/heads/")} evidence.bundle evidence
ls evidence/evidence/        # <hex>.json: a statement; <hex>.sigstore.json: its Sigstore bundle
sha256sum evidence/evidence/<hex>.json    # must print <hex>: the record's id is the hash of its bytes
```

Each `evidence/<hex>.sigstore.json` is a Sigstore bundle v0.3 with a DSSE envelope over exactly the
bytes of `evidence/<hex>.json`, signed with a P-256 key (key hint in `verificationMaterial.publicKey`,
no transparency-log entry). With sigstore-js (`npm install @sigstore/bundle @sigstore/verify`), save
this as `verify.js` and run `node verify.js evidence/evidence/<hex>.sigstore.json {first_key}`:

```js
const crypto = require('node:crypto');
const fs = require('node:fs');
const {{ bundleFromJSON }} = require('@sigstore/bundle');
const {{ Verifier, toSignedEntity, toTrustMaterial }} = require('@sigstore/verify');

const [bundlePath, keyPath] = process.argv.slice(2);
const der = crypto.createPublicKey(fs.readFileSync(keyPath)).export({{ type: 'spki', format: 'der' }});
const hint = crypto.createHash('sha256').update(der).digest('base64');
const root = {{ tlogs: [], certificateAuthorities: [], ctlogs: [], timestampAuthorities: [] }};
// keyDetails 5: PKIX_ECDSA_P256_SHA_256
const keys = {{ [hint]: {{ rawBytes: der, keyDetails: 5, validFor: undefined }} }};
const thresholds = {{ tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0 }};
const verifier = new Verifier(toTrustMaterial(root, keys), thresholds);
const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(bundlePath, 'utf8')));
verifier.verify(toSignedEntity(bundle));   // throws when the signature does not verify
const payload = Buffer.from(bundle.content.dsseEnvelope.payload);
const statement = fs.readFileSync(bundlePath.replace(/\\.sigstore\\.json$/, '.json'));
if (!payload.equals(statement)) throw new Error('the bundle signs other bytes than the statement');
console.log('OK');
```

The thresholds are 0 because key-based bundles made offline carry no log entry, certificate or
timestamp. With cosign (2.4 or later):

```sh
cosign verify-blob-attestation --new-bundle-format --insecure-ignore-tlog \\
  --key {first_key} --trusted-root trusted_root.json \\
  --bundle evidence/evidence/<hex>.sigstore.json --check-claims=false
```

Offline, cosign cannot fetch Sigstore's trusted root through TUF, and with `--new-bundle-format` it
needs one: pass a file with `--trusted-root`. {root_note}
`--check-claims=false` verifies the envelope only: by default cosign also wants a file whose sha256 is
one of the statement's subjects, which are the release's image manifests (if you have the image
manifest, pass it instead of that flag). Then compare the envelope's payload with the statement's
bytes, as the script above does.

Neither tool checks what is between the records (chain links, history, inputs, locks, pointers):
`stella audit verify --packet` does.
"""
    return text.encode()


# --- small helpers for the command line ------------------------------------------------------------


def checkpoint_json(checkpoint: Checkpoint, bundle: bytes) -> dict[str, Any]:
    """What `stella audit checkpoint -o json` prints (and `verify --checkpoint` accepts back)."""
    return {"checkpoint": checkpoint.as_json(), "bundle": json.loads(bundle)}
