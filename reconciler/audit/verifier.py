"""`verify`, the driver of an audit: it plans the work in chunks from the names on the branch (never
their contents), runs the chunks in this process and, for a large branch, in worker processes too,
then runs the whole-branch checks over the facts they return, with the history check running beside
it all in a `git log` of its own. Results are merged and sorted, so the report does not depend on
scheduling.

Read-only: never writes to the repository it verifies. What worker processes run (`records._run`) and
everything they are handed or return stay importable at module level, to be pickled.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pygit2

from ..errors import Transient
from ..repo import GitTree, Repo
from ..sign import TrustedKeys
from .branch import _check_chains, _check_duplicates, _check_locks, _check_unreferenced
from .checkpoint import Checkpoint, _check_checkpoint
from .findings import Finding, Report
from .history import _check_reflog, _History
from .keyless import _keyless_verifier
from .keys import LoadedKeys
from .layout import _HEX, _check_layout
from .policybook import _PolicyBook
from .records import _run
from .worker import _Job, _local, _Merged, _Result, _Task

Progress = Callable[[int, int], None]
"""`progress(done, total)`: units of work (records, inputs, artifacts, locks) done so far, of the total."""

PARALLEL_MIN = 2000
"""Below this many units of work, `verify` runs in this process: starting workers would cost more."""

_CHUNK = {"records": 250, "inputs": 1000, "artifacts": 1000, "releases": 500}


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
    """Verify the evidence branch `ref` of `repo` (see the `reconciler.audit` package docstring).

    `findings`: found before (e.g. the `key` findings of unreadable key files), reported with the rest;
    when `keys` is a `LoadedKeys`, its unreadable files are reported too.

    Every record verifies with the evidence keys of the ratified policy it names, every ratification
    with those of the policy before it, from the genesis (`root`: the genesis record id it must be;
    None: the one found, trusted on first use). `keys` (and `keyless`) verify what was written before
    the branch had a policy chain: records naming no policy when there is no genesis.

    `keyless`: the trust material the installed verifier plugins read (`load_keyless`; with
    `stella-sigstore`, `trust/keyless.yaml` and its trusted root), to verify keyless bundles and witnesses.

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
