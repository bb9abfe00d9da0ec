"""What the evidence branch already says: decided promotions, each environment's chain and records.

An `EvidenceIndex` summarises the evidence branch at one commit for the reconciler: is this promotion
decided, what did an environment allow and when, where does each chain end. It lives in SQLite: a
file under the Git directory for `reconcile` (so a pass reads only what is new since the last pass,
and a pass with nothing new does not grow with history), or in memory for one-off commands. It is a
cache, never a source of truth: it is rebuilt from the branch whenever it does not describe an
ancestor of the branch head (`indexing.open_index`). Writes only its own cache file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from .errors import InvalidInput
from .governance import POLICY_CHAIN, RATIFICATION
from .ledger import DEPLOYMENT_TYPES, target_chain
from .protocols import PriorDecision
from .repo import Repo

log = logging.getLogger(__name__)

SCHEMA_VERSION = "3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    evidence TEXT PRIMARY KEY, type TEXT NOT NULL, environment TEXT NOT NULL, promotion TEXT,
    release_id TEXT NOT NULL, release_name TEXT NOT NULL, result TEXT NOT NULL,
    decided_at TEXT NOT NULL, previous TEXT, artifacts TEXT NOT NULL, policy TEXT, source TEXT
);
CREATE TABLE IF NOT EXISTS rejected (evidence TEXT PRIMARY KEY, code TEXT NOT NULL, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS records_by_promotion ON records (promotion);
CREATE INDEX IF NOT EXISTS records_by_release ON records (environment, release_id);
CREATE INDEX IF NOT EXISTS records_by_source ON records (source);
CREATE TABLE IF NOT EXISTS heads (environment TEXT PRIMARY KEY, evidence TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Record:
    """The parts of one evidence statement the reconciler looks at again."""

    evidence: str
    record_type: str
    environment: str
    promotion: str | None
    release_id: str
    release_name: str
    result: str
    decided_at: datetime
    previous: str | None
    artifacts: dict[str, str]
    policy: str | None = None
    """The policy the record was made under (for a ratification: the policy it ratifies)."""
    source: str | None = None
    """The source commit a ratification read; the decision a deployment record carried out (None for
    other records)."""

    def prior(self) -> PriorDecision:
        result: Literal["allow", "deny"] = "allow" if self.result == "allow" else "deny"
        return PriorDecision(self.evidence, self.environment, self.release_id, result, self.decided_at)


def parse_record(evidence_id: str, raw: bytes, source: str) -> Record:
    try:
        statement: dict[str, Any] = json.loads(raw)
        p = statement["predicate"]
        if p["type"] == RATIFICATION:
            return Record(
                evidence=evidence_id,
                record_type=RATIFICATION,
                environment=POLICY_CHAIN,
                promotion=None,
                release_id=p["policy"]["id"],
                release_name="policy",
                result="ratified",
                decided_at=datetime.fromisoformat(p["decidedAt"]),
                previous=p.get("previous"),
                artifacts={},
                policy=p["policy"]["id"],
                source=p.get("sourceCommit"),
            )
        if p["type"] in DEPLOYMENT_TYPES:  # an agent's record: chained per target, not per environment
            return Record(
                evidence=evidence_id,
                record_type=p["type"],
                environment=target_chain(p["environment"], p["target"]["name"]),
                promotion=None,
                release_id=p["release"]["id"],
                release_name=p["release"]["name"],
                result=p["result"],
                decided_at=datetime.fromisoformat(p["completedAt"]),
                previous=p.get("previous"),
                artifacts={a["name"]: a["sha256"] for a in p.get("artifacts", [])},
                policy=(p.get("policy") or {}).get("id"),
                source=p.get("decision"),
            )
        decision = p.get("decision") or {}
        return Record(
            evidence=evidence_id,
            record_type=p["type"],
            environment=p["environment"],
            promotion=(p.get("promotion") or {}).get("id"),
            release_id=p["release"]["id"],
            release_name=p["release"]["name"],
            result=decision.get("result", "allow"),
            decided_at=datetime.fromisoformat(p["decidedAt"]),
            previous=p.get("previous"),
            artifacts={a["name"]: a["sha256"] for a in p.get("artifacts", [])},
            policy=(p.get("policy") or {}).get("id"),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"{source}: not a Stella evidence statement: {exc}") from exc


def _row(record: Record) -> tuple[Any, ...]:
    return (
        record.evidence,
        record.record_type,
        record.environment,
        record.promotion,
        record.release_id,
        record.release_name,
        record.result,
        record.decided_at.isoformat(),
        record.previous,
        json.dumps(record.artifacts, sort_keys=True),
        record.policy,
        record.source,
    )


def _record(row: sqlite3.Row) -> Record:
    return Record(
        evidence=row["evidence"],
        record_type=row["type"],
        environment=row["environment"],
        promotion=row["promotion"],
        release_id=row["release_id"],
        release_name=row["release_name"],
        result=row["result"],
        decided_at=datetime.fromisoformat(row["decided_at"]),
        previous=row["previous"],
        artifacts=json.loads(row["artifacts"]),
        policy=row["policy"],
        source=row["source"],
    )


def chain_order(records: Iterable[Record]) -> list[Record]:
    """Records ordered so that each comes after the record it names as `previous` (when present).

    In rounds: first every record whose `previous` is not among them, ordered by (decidedAt, id); then
    those whose `previous` came in the round before, and so on. Records on (or after) a cycle of links,
    which hashes make impossible but a forged branch could name, come last, ordered by id. Linear: a
    record's round is its distance from the start of its chain."""
    by_id = {r.evidence: r for r in records}
    rounds: dict[str, int] = {}
    stuck: set[str] = set()
    for start in by_id:
        path: list[str] = []
        on_path: set[str] = set()
        current: str | None = start
        while current is not None and current not in rounds and current not in stuck:
            if current in on_path:  # a cycle: it, and everything after it on this walk, is stuck
                stuck.update(path)
                path = []
                break
            path.append(current)
            on_path.add(current)
            previous = by_id[current].previous
            current = previous if previous in by_id else None
        if current is not None and current in stuck:
            stuck.update(path)
            continue
        depth = rounds[current] + 1 if current is not None else 0
        for evidence in reversed(path):
            rounds[evidence] = depth
            depth += 1
    layers: dict[int, list[Record]] = {}
    for evidence, depth in rounds.items():
        layers.setdefault(depth, []).append(by_id[evidence])
    ordered: list[Record] = []
    for depth in sorted(layers):
        ordered += sorted(layers[depth], key=lambda r: (r.decided_at, r.evidence))
    ordered += sorted((by_id[e] for e in stuck), key=lambda r: r.evidence)
    return ordered


class EvidenceIndex:
    """Decided promotions and per-environment records, as of evidence commit `head`.

    Records a pass adds (`add`) stay in memory, on top of what is stored, until `keep()` stores them
    with the new head (after the evidence commit landed) or `discard()` forgets them (a lost race).
    So deciding never holds a write lock on the cache, and concurrent passes do not block each other.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._db = conn
        self._added: dict[str, Record] = {}
        self._heads: dict[str, str] = {}

    # --- reading ---------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    @property
    def head(self) -> str | None:
        return self.meta("evidence")

    def decided(self, promotion_id: str) -> str | None:
        row = self._db.execute(
            "SELECT evidence FROM records WHERE promotion = ? AND type = 'release_decision' "
            "ORDER BY decided_at, evidence LIMIT 1",
            (promotion_id,),
        ).fetchone()
        if row is not None:
            return str(row["evidence"])
        added = [r for r in self._added.values() if r.promotion == promotion_id]
        return added[0].evidence if added else None

    def record(self, evidence_id: str) -> Record | None:
        if evidence_id in self._added:
            return self._added[evidence_id]
        row = self._db.execute("SELECT * FROM records WHERE evidence = ?", (evidence_id,)).fetchone()
        return None if row is None else _record(row)

    def chain_head(self, environment: str) -> str | None:
        if environment in self._heads:
            return self._heads[environment]
        row = self._db.execute("SELECT evidence FROM heads WHERE environment = ?", (environment,)).fetchone()
        return None if row is None else str(row["evidence"])

    def priors(self, environment: str, release_id: str) -> list[PriorDecision]:
        rows = self._db.execute(
            "SELECT * FROM records WHERE environment = ? AND release_id = ? AND type = 'release_decision'",
            (environment, release_id),
        )
        records = [_record(row) for row in rows]
        records += [
            r
            for r in self._added.values()
            if r.environment == environment
            and r.release_id == release_id
            and r.record_type == "release_decision"
        ]
        return [r.prior() for r in sorted(records, key=lambda r: (r.decided_at, r.evidence))]

    def current(self, environment: str) -> Record | None:
        """The latest allowed record of the environment (what it should run)."""
        head = self.chain_head(environment)
        seen = set()
        while head is not None and head not in seen:
            seen.add(head)
            record = self.record(head)
            if record is None:
                return None
            if record.result == "allow":
                return record
            head = record.previous
        return None

    def carried_out(self, decision: str) -> list[Record]:
        """The deployment records (any target) that carried out `decision`, oldest first."""
        rows = self._db.execute("SELECT * FROM records WHERE source = ? AND type = 'deployment'", (decision,))
        records = [_record(row) for row in rows]
        records += [r for r in self._added.values() if r.source == decision and r.record_type == "deployment"]
        return sorted(records, key=lambda r: (r.decided_at, r.evidence))

    def allowed_since(self, since: datetime) -> int:
        """How many `allow` decisions were made at or after `since` (deployments, for the quota)."""
        row = self._db.execute(
            "SELECT count(*) FROM records WHERE result = 'allow' AND decided_at >= ?", (since.isoformat(),)
        ).fetchone()
        added = sum(1 for r in self._added.values() if r.result == "allow" and r.decided_at >= since)
        return int(row[0]) + added

    def ratified(self) -> Record | None:
        """The ratification at the head of the policy chain (what decisions are made under now)."""
        head = self.chain_head(POLICY_CHAIN)
        return self.record(head) if head else None

    def is_ratified(self, policy_id: str) -> bool:
        """Whether `policy_id` was ratified at some point of the chain (records may name older ones)."""
        if any(r.policy == policy_id for r in self._added.values() if r.record_type == RATIFICATION):
            return True
        row = self._db.execute(
            "SELECT 1 FROM records WHERE type = ? AND release_id = ? LIMIT 1", (RATIFICATION, policy_id)
        ).fetchone()
        return row is not None

    def superseded(self) -> dict[str, datetime]:
        """Policy id -> when the policy after it was ratified (what it could decide until)."""
        rows = self._db.execute("SELECT * FROM records WHERE type = ?", (RATIFICATION,))
        ratifications = {r.evidence: r for r in map(_record, rows)}
        ratifications.update({k: r for k, r in self._added.items() if r.record_type == RATIFICATION})
        out: dict[str, datetime] = {}
        for record in ratifications.values():
            before = ratifications.get(record.previous or "")
            if before is not None and before.policy is not None:
                out[before.policy] = record.decided_at
        return out

    def genesis(self) -> Record | None:
        row = self._db.execute(
            "SELECT * FROM records WHERE type = ? AND previous IS NULL LIMIT 1", (RATIFICATION,)
        ).fetchone()
        if row is not None:
            return _record(row)
        added = [r for r in self._added.values() if r.record_type == RATIFICATION and r.previous is None]
        return added[0] if added else None

    def rejected(self) -> list[tuple[str, str, str]]:
        """(evidence path, code, message) of every statement on the branch that was not indexed because
        it does not verify under the policy it names (or does not fit the policy chain)."""
        rows = self._db.execute("SELECT * FROM rejected ORDER BY evidence")
        return [(str(r["evidence"]), str(r["code"]), str(r["message"])) for r in rows]

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM records").fetchone()[0]) + len(self._added)

    def evidence_ids(self) -> set[str]:
        """The id of every indexed record: every statement on the branch that verified."""
        stored = {str(row[0]) for row in self._db.execute("SELECT evidence FROM records")}
        return stored | set(self._added)

    # --- changing -------------------------------------------------------------------------------

    def add(self, record: Record) -> None:
        """A record this pass wrote: visible at once, stored only by `keep()`."""
        self._added[record.evidence] = record
        current = self.chain_head(record.environment)
        if current is None or record.previous == current:
            self._heads[record.environment] = record.evidence

    def keep(self, **meta: str) -> None:
        """Store what `add` added, and `meta` (e.g. the new evidence head), in one transaction."""
        with self._transaction():
            for record in self._added.values():
                self._store(record)
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", sorted(meta.items()))
        self.discard()

    def discard(self) -> None:
        self._added.clear()
        self._heads.clear()

    def _store(self, record: Record) -> None:
        self._db.execute("INSERT OR IGNORE INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", _row(record))
        row = self._db.execute(
            "SELECT evidence FROM heads WHERE environment = ?", (record.environment,)
        ).fetchone()
        if row is None or record.previous == row["evidence"]:
            self._db.execute(
                "INSERT OR REPLACE INTO heads VALUES (?, ?)", (record.environment, record.evidence)
            )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


def connect(path: Path | None) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path) if path else ":memory:", isolation_level=None, timeout=30)
    conn.row_factory = sqlite3.Row
    if path is not None:
        conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
    conn.executescript(_SCHEMA)
    return conn


def cache_path(repo: Repo, ref: str) -> Path:
    """Where `reconcile` keeps its index for `ref` (inside the Git directory, never committed)."""
    name = hashlib.sha256(ref.encode()).hexdigest()[:16]
    return repo.path / "stella" / f"index-{name}.sqlite"
