"""`history.chain_order` orders records after the record each names as previous, in rounds, linearly;
it gives exactly the order of the plain round-by-round definition, cycles and forks included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.history import Record, chain_order

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _rounds(records: list[Record]) -> list[Record]:
    """The definition: each round, every record whose previous is not still waiting, by (time, id)."""
    pending = {r.evidence: r for r in records}
    ordered: list[Record] = []
    while pending:
        ready = sorted(
            (r for r in pending.values() if r.previous is None or r.previous not in pending),
            key=lambda r: (r.decided_at, r.evidence),
        )
        if not ready:
            ready = sorted(pending.values(), key=lambda r: r.evidence)
        for record in ready:
            ordered.append(record)
            del pending[record.evidence]
    return ordered


def _record(n: int, previous: int | None, minute: int) -> Record:
    return Record(
        evidence=f"sha256:{n:064x}",
        record_type="release_decision",
        environment="dev",
        promotion=None,
        release_id="sha256:" + "0" * 64,
        release_name="shop",
        result="allow",
        decided_at=T0 + timedelta(minutes=minute),
        previous=f"sha256:{previous:064x}" if previous is not None else None,
        artifacts={},
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 30)), st.integers(0, 5)), max_size=30))
def test_chain_order_is_the_round_by_round_order(links: list[tuple[int | None, int]]) -> None:
    records = [_record(n, previous, minute) for n, (previous, minute) in enumerate(links)]
    assert chain_order(records) == _rounds(records)


def test_a_long_chain_is_ordered_quickly() -> None:
    records = [_record(n, n - 1 if n else None, n % 7) for n in range(20_000)]
    ordered = chain_order(reversed(records))
    assert [r.evidence for r in ordered] == [r.evidence for r in records]
