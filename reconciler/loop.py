"""The reconcile pass: decide, then sign and write one evidence commit; and the schedule of passes.

`reconcile` runs the deciding steps of `passes.EVALUATE`, then the writing steps of `WRITE`:

    check_branch   every decision about to be signed is new on the evidence branch itself (not only in
                   the index cache); otherwise the index is rebuilt and the pass starts again
    sign           each new statement signed with the evidence key, which must be one the policy the
                   statement names holds
    commit         ALL new files (locks, statements, inputs, bundles, artifacts, pointers, policy files)
                   in ONE commit on the evidence ref, moved by compare-and-swap

A lost race re-reads the evidence ref and decides again from scratch, so each promotion gets exactly one
record. Pending promotions leave no record (they are status, shown by `plan` and `why`). `run()` repeats
passes on a schedule (APScheduler, imported only when a schedule runs). No printing here.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from .chain import pin_ref
from .discover import Plugins
from .errors import InvalidInput, StellaError, Transient
from .evidence import canonical
from .governance import RecordRejected
from .history import cache_path
from .ledger import Ledger, bundle_path, pointer_path, release_lock_path
from .passes import (
    EVALUATE,
    Evaluation,
    PassOptions,
    PassState,
    Step,
    run_steps,
)
from .protocols import Signer
from .repo import RaceLost, Repo
from .results import PassResult
from .sign import TrustedKeys

__all__ = ["MAX_RACES", "check_branch", "reconcile", "run", "write_steps"]

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_RACES = 10


class _StaleIndex(Exception):
    """The index missed decisions the branch has: rebuild it and start the pass again."""


@dataclass
class _Writing:
    """What the writing steps need besides the state: the signer, and the files to commit."""

    signer: Callable[[], Signer] | None
    files: dict[str, bytes] = field(default_factory=dict)


def check_branch(state: PassState) -> None:
    """Never trust the index cache alone before signing a decision that is final."""
    assert state.result is not None
    doubled = _decided_on_branch(state, {o.promotion_id for o in state.result.recorded})
    if doubled:
        log.warning(
            "the evidence index has no record of %s, but the branch does: rebuilding the index",
            ", ".join(sorted(doubled)),
        )
        raise _StaleIndex


def _signing(writing: _Writing) -> Step:
    def sign(state: PassState) -> None:
        """Every new statement signed, with a key of the policy it names."""
        assert state.decider is not None and state.result is not None
        decider = state.decider
        files = writing.files
        files.update(decider.files)
        for name, new in state.new_locks.items():
            files[release_lock_path(name)] = canonical(new.model_dump(mode="json"))
        for env_name, value in decider.pointers.items():
            files[pointer_path(env_name)] = canonical(value)
        if decider.statements:
            if writing.signer is None:
                raise InvalidInput("decisions to record but no signer configured")
            active = writing.signer()
            for hex_id, statement in sorted(decider.statements.items()):
                state.progress(f"signing sha256:{hex_id[:12]}")
                _check_signer(active, decider.signing.get(hex_id))
                files[bundle_path(hex_id)] = active.sign(statement)
        state.result.locked = [state.new_locks[n] for n in sorted(state.new_locks)]

    return sign


def _committing(writing: _Writing) -> Step:
    def commit(state: PassState) -> None:
        """All new files in one commit on the evidence ref, by compare-and-swap (`RaceLost` if it moved)."""
        assert state.result is not None
        if writing.files:
            message = _message(state.result, state.branch)
            state.result.evidence_commit = state.repo.commit_files(
                state.ref, state.evidence_head, writing.files, message
            )

    return commit


def write_steps(signer: Callable[[], Signer] | None) -> tuple[Step, ...]:
    """The steps after `EVALUATE` that make a pass write: check the branch, sign, commit."""
    writing = _Writing(signer)
    return (check_branch, _signing(writing), _committing(writing))


def reconcile(
    repo: Repo,
    plugins: Plugins,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    signer: Callable[[], Signer] | None = None,
    branch: str | None = None,
    offline: bool = False,
    progress: Callable[[str], None] | None = None,
) -> PassResult:
    """One reconcile pass -> at most one commit on the evidence ref (retried when a race is lost)."""
    for attempt in range(MAX_RACES):
        options = PassOptions(now(), branch, incremental=True, offline=offline, progress=progress)
        state = PassState(repo, plugins, options)
        try:
            run_steps(state, (*EVALUATE, *write_steps(signer)))
        except _StaleIndex:
            cache = cache_path(repo, state.ref)
            for stale in (cache, cache.with_name(cache.name + "-wal"), cache.with_name(cache.name + "-shm")):
                stale.unlink(missing_ok=True)
            continue
        except RaceLost:
            log.info("evidence ref moved during the pass; deciding again")
            continue
        result = state.result
        assert result is not None
        result.races = attempt
        Evaluation(state).keep(result.evidence_commit or state.evidence_head)
        if result.evidence_commit or state.evidence_head:
            pin_ref(repo, state.ref)
        return result
    raise Transient(f"the evidence ref kept moving: gave up after {MAX_RACES} attempts")


def _decided_on_branch(state: PassState, promotions: set[str]) -> set[str]:
    """Which of `promotions` (about to be recorded) already have a verified decision on the evidence
    branch. Reads the branch's statements (only those that mention one of the ids are parsed and
    verified)."""
    if not promotions or state.evidence is None or state.keyring is None:
        return set()
    ledger = Ledger(state.evidence)
    needles = {f'"id":"{pid}"'.encode(): pid for pid in promotions}
    found: set[str] = set()
    for hex_id in ledger.statement_ids():
        raw = ledger.statement_raw(hex_id) or b""
        hits = [pid for needle, pid in needles.items() if needle in raw and pid not in found]
        if not hits:
            continue
        statement = ledger.statement(hex_id)
        if statement is None or statement.type != "release_decision" or statement.promotion not in hits:
            continue
        try:
            state.keyring.verify(raw, ledger.bundle(hex_id), source=f"evidence/{hex_id}.json")
        except RecordRejected:
            continue  # a statement that does not verify decides nothing
        found.add(statement.promotion)
    return found


def _check_signer(signer: Signer, keys: TrustedKeys | None) -> None:
    """Refuse to sign with a key the policy does not hold: nothing it signed would verify."""
    hint = getattr(signer, "hint", None)
    if keys is None or not isinstance(hint, str) or hint in keys:
        return
    sources = ", ".join(k.source for k in keys.values()) or "none"
    raise InvalidInput(
        f"the signing key (hint {hint}) is not an evidence key of the policy this record must verify "
        f"under (its keys: {sources}); add its public half to trust/evidence-keys/ through a ratified "
        "policy change first, and keep the old key until the change is ratified"
    )


def _message(result: PassResult, branch: str) -> str:
    parts = []
    if result.ratification:
        parts.append("policy ratified")
    if result.recorded:
        parts.append(f"{len(result.recorded)} decision(s)")
    if result.locked:
        parts.append(f"{len(result.locked)} release lock(s)")
    lines = [f"stella: {', '.join(parts) or 'update'} from {branch}@{result.source_commit[:12]}", ""]
    lines += [f"{o.promotion_id}: {o.decision.result} {o.evidence}" for o in result.recorded if o.decision]
    lines += [f"release {lock.name}: {lock.id}" for lock in result.locked]
    if result.ratification:
        lines += [f"policy {result.policy}: ratified by {result.ratification}"]
    lines += ["", f"Stella-Source-Commit: {result.source_commit}"]
    return "\n".join(lines) + "\n"


def run(
    one_pass: Callable[[], T],
    *,
    interval: float,
    report: Callable[[T], None],
    on_error: Callable[[StellaError], None],
) -> int:
    """Run `one_pass` now and every `interval` seconds until SIGINT/SIGTERM (APScheduler).

    Passes never overlap (max_instances=1) and missed runs coalesce. A pass that fails is reported
    and the schedule goes on; the next pass starts from whatever is on the branches then.
    """
    from apscheduler.schedulers.blocking import BlockingScheduler

    scheduler = BlockingScheduler(
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": max(1, int(interval))}
    )

    def job() -> None:
        try:
            report(one_pass())
        except StellaError as exc:
            on_error(exc)
        except OSError as exc:  # the output went away (a closed pipe, a full disk): stop, do not spin
            log.error("cannot report the pass (%s): stopping", exc)
            threading.Thread(target=scheduler.shutdown, kwargs={"wait": False}, daemon=True).start()
            raise

    def stop(signum: int, frame: object) -> None:
        log.info("signal %d: stopping after the current pass", signum)
        threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    scheduler.add_job(job, "interval", seconds=interval, next_run_time=datetime.now(UTC), id="reconcile")
    scheduler.start()
    return 0
