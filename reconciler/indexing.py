"""Opening the evidence index of a ref, brought up to date from the branch with verified records only.

`open_index` reads what the branch gained since the index last looked (or everything, when the index
does not describe an ancestor of the head), verifies each statement with the keyring of the policy it
names, and indexes only those that verify: the others are kept in the `rejected` table with why, and a
pass reports them instead of believing them. Reads Git through `repo`; writes only the cache file.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import InvalidInput
from .governance import POLICY_CHAIN, RATIFICATION, Keyring, RecordRejected
from .history import SCHEMA_VERSION, EvidenceIndex, Record, cache_path, chain_order, connect, parse_record
from .ledger import BUNDLE_SUFFIX, EVIDENCE, bundle_path, evidence_path
from .repo import GitTree, Repo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Read:
    record: Record | None
    raw: bytes
    bundle: bytes | None
    path: str


def _read_records(tree: GitTree, names: Iterable[str], rejected: list[tuple[str, str, str]]) -> list[_Read]:
    out = []
    for name in names:
        if not name.endswith(".json") or name.endswith(BUNDLE_SUFFIX):
            continue
        hex_id = name.removesuffix(".json")
        path = evidence_path(hex_id)
        raw = tree.read(path)
        if raw is None:
            continue
        try:
            record = parse_record(f"sha256:{hex_id}", raw, path)
        except InvalidInput as exc:
            rejected.append((path, "statement", str(exc)))
            continue
        out.append(_Read(record, raw, tree.read(bundle_path(hex_id)), path))
    return out


def open_index(
    repo: Repo,
    ref: str,
    head: str | None,
    *,
    persistent: bool = True,
    keyring: Keyring | None = None,
) -> EvidenceIndex:
    """The index of `ref` at `head`: the cached one brought up to date, or one built afresh (in
    memory when `persistent` is false or the Git directory is not writable).

    Only statements that verify under the policy they name are indexed (`keyring`, by default one over
    the branch at `head` with no legacy keys); the others are listed by `rejected()`.
    """
    path = cache_path(repo, ref) if persistent else None
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            connect(path).close()
        except (OSError, sqlite3.Error) as exc:
            log.info("no index cache (%s): indexing %s in memory", exc, ref)
            path = None
    if keyring is None:
        keyring = Keyring(repo.tree(head) if head else None)
    try:
        index = EvidenceIndex(connect(path))
        _sync(repo, ref, head, index, keyring)
    except sqlite3.DatabaseError as exc:
        if path is None:
            raise
        log.warning("index cache %s is unusable (%s): rebuilding it", path, exc)
        path.unlink(missing_ok=True)
        index = EvidenceIndex(connect(path))
        _sync(repo, ref, head, index, keyring)
    return index


def _sync(repo: Repo, ref: str, head: str | None, index: EvidenceIndex, keyring: Keyring) -> None:
    known = index.head
    same = index.meta("schema") == SCHEMA_VERSION and index.meta("ref") == ref
    if same and known == (head or ""):
        genesis = index.genesis()
        keyring.genesis = genesis.policy if genesis else None
        return
    rejected: list[tuple[str, str, str]] = []
    with index._transaction():
        if same and head is not None and known and repo.is_ancestor(known, head):
            added = [p.split("/", 1)[1] for p in repo.added_paths(known, head, f"{EVIDENCE}/")]
            reads = _read_records(repo.tree(head), added, rejected)
        else:
            if known is not None:
                log.info("rebuilding the evidence index of %s", ref)
            for table in ("records", "heads", "meta", "rejected"):
                index._db.execute(f"DELETE FROM {table}")
            tree = repo.tree(head) if head is not None else None
            reads = _read_records(tree, tree.listdir(EVIDENCE), rejected) if tree is not None else []
        _index_verified(repo, head, index, keyring, reads, rejected)
        index._db.executemany("INSERT OR REPLACE INTO rejected VALUES (?, ?, ?)", rejected)
        index._db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [("schema", SCHEMA_VERSION), ("ref", ref), ("evidence", head or "")],
        )
    for path, code, message in rejected:
        log.warning("not indexed: %s (%s): %s", path, code, message)


def _index_verified(
    repo: Repo,
    head: str | None,
    index: EvidenceIndex,
    keyring: Keyring,
    reads: list[_Read],
    rejected: list[tuple[str, str, str]],
) -> None:
    """Store the records that verify: ratifications first (in chain order, each extending the chain
    from its one genesis), then the others, each under a ratified policy (or, naming none, the keys of
    the genesis policy, or before any genesis the legacy keys)."""
    ratifications = [r for r in reads if r.record and r.record.record_type == RATIFICATION]
    others = [r for r in reads if r.record and r.record.record_type != RATIFICATION]
    by_id = {r.record.evidence: r for r in ratifications if r.record}
    genesis = index.genesis()
    starts = [r for r in ratifications if r.record and r.record.previous is None]
    if genesis is None and len(starts) > 1 and head is not None:
        first = repo.first_added(head, [r.path for r in starts])
        starts = [r for r in starts if r.path == first] or starts[:1]
    for record in chain_order(r.record for r in ratifications if r.record):
        read = by_id[record.evidence]
        head_id = index.chain_head(POLICY_CHAIN)
        if (record.previous is None and (genesis is not None or read not in starts)) or (
            record.previous is not None and record.previous != head_id
        ):
            rejected.append((read.path, "chain", "a ratification that does not extend the policy chain"))
            continue
        if record.previous is not None:
            before = index.record(record.previous)
            raw_previous = json.loads(read.raw)["predicate"]["policy"].get("previous")
            if before is None or before.policy != raw_previous:
                rejected.append((read.path, "chain", "names a previous policy that is not the ratified one"))
                continue
        if not _verifies(keyring, read, rejected):
            continue
        index._store(record)
        if record.previous is None:
            genesis = record
    keyring.genesis = genesis.policy if genesis else None
    superseded = index.superseded()
    reads_by_id = {r.record.evidence: r for r in others if r.record}
    for record in chain_order(r.record for r in others if r.record):
        read = reads_by_id[record.evidence]
        if record.policy is not None and not index.is_ratified(record.policy):
            rejected.append((read.path, "policy", f"names policy {record.policy}, which was never ratified"))
            continue
        if record.policy is None and genesis is not None and record.decided_at > genesis.decided_at:
            rejected.append((read.path, "policy", "names no policy, but was made after the genesis"))
            continue
        until = superseded.get(record.policy or "")
        if until is not None and record.decided_at > until:
            rejected.append(
                (
                    read.path,
                    "policy",
                    f"made under policy {record.policy} at {record.decided_at.isoformat()}, after a later "
                    f"policy was ratified ({until.isoformat()}): its keys sign nothing new",
                )
            )
            continue
        if _verifies(keyring, read, rejected):
            index._store(record)


def _verifies(keyring: Keyring, read: _Read, rejected: list[tuple[str, str, str]]) -> bool:
    """Whether the statement's bundle verifies under its policy; if not, why is added to `rejected`."""
    try:
        keyring.verify(read.raw, read.bundle, source=read.path)
    except RecordRejected as exc:
        rejected.append((read.path, exc.code, str(exc).removeprefix(f"{read.path}: ")))
        return False
    return True
