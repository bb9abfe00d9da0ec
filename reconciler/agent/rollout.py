"""Rolling rollouts: whether a target may deploy a decision yet (DESIGN §9).

With `rollout.strategy: rolling`, the environment's targets form batches of `batchSize`, in the order
the environment lists them. A target deploys a decision only once every target of the batches before
its own has a `succeeded` deployment record of that decision; while one of them has none it waits, and
when the latest record of one of them (or of any target, for the batches after it) says `failed`, the
rollout is halted there: no later batch deploys that decision. Agents coordinate through the evidence
branch only, and only through records that verify under the target's agent key (the index holds no
other), so an agent cannot be hurried on by a record someone else wrote. With `all-at-once` every target
goes at once. Pure: the records come from the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ..history import Record
from ..ledger import target_chain
from ..models import Environment

GO: Literal["go"] = "go"
WAITING: Literal["waiting"] = "waiting"
HALTED: Literal["halted"] = "halted"


@dataclass(frozen=True)
class Position:
    """Where a target stands in a decision's rollout."""

    state: Literal["go", "waiting", "halted"]
    reason: str
    batch: int
    """The target's batch, counted from 1 (1 for every target of an all-at-once rollout)."""
    batches: int

    def as_json(self) -> dict[str, object]:
        return {"state": self.state, "reason": self.reason, "batch": self.batch, "batches": self.batches}


def batches(environment: Environment) -> list[list[str]]:
    """The environment's targets in batches, in list order (one batch for all-at-once)."""
    names = [t.name for t in environment.targets]
    if environment.rollout.strategy != "rolling":
        return [names] if names else []
    size = environment.rollout.batchSize
    return [names[i : i + size] for i in range(0, len(names), size)]


def latest_by_target(environment: str, records: Sequence[Record]) -> dict[str, Record]:
    """The newest deployment record of each target among `records` (those of one decision)."""
    prefix = target_chain(environment, "")
    latest: dict[str, Record] = {}
    for record in sorted(records, key=lambda r: (r.decided_at, r.evidence)):
        if record.environment.startswith(prefix):
            latest[record.environment.removeprefix(prefix)] = record
    return latest


def position(
    environment: Environment,
    target: str,
    decision: str,
    records: Sequence[Record],
    reason_of: Callable[[Record], str] = lambda record: "",
) -> Position:
    """Whether `target` may deploy `decision` now, given the deployment records of that decision."""
    groups = batches(environment)
    mine = next((i for i, group in enumerate(groups) if target in group), 0)
    if environment.rollout.strategy != "rolling":
        return Position(GO, "", 1, max(len(groups), 1))
    latest = latest_by_target(environment.name, records)
    failed = _first_failure(groups, latest, before=mine)
    if failed is not None:
        name, batch, record = failed
        why = reason_of(record)
        return Position(
            HALTED,
            f"the rollout of {decision} is halted: {name} (batch {batch + 1}) failed it"
            + (f" ({why})" if why else ""),
            mine + 1,
            len(groups),
        )
    waiting = [name for group in groups[:mine] for name in group if _result(latest.get(name)) != "succeeded"]
    if waiting:
        return Position(
            WAITING,
            f"batch {mine + 1} of {len(groups)} waits for {', '.join(waiting)} to deploy {decision}",
            mine + 1,
            len(groups),
        )
    return Position(GO, "", mine + 1, len(groups))


def halted_at(environment: Environment, records: Sequence[Record]) -> tuple[str, int, Record] | None:
    """(target, batch index, its failed record) where a rolling rollout of one decision stopped: a failure
    in any batch but the last (after which there is nothing left to halt)."""
    if environment.rollout.strategy != "rolling":
        return None
    groups = batches(environment)
    return _first_failure(groups, latest_by_target(environment.name, records), before=len(groups) - 1)


def _first_failure(
    groups: Sequence[Sequence[str]], latest: Mapping[str, Record], *, before: int
) -> tuple[str, int, Record] | None:
    """The first target of the batches before batch `before` (0-based), in order, whose latest record
    of the decision did not succeed."""
    for index, group in enumerate(groups[: max(before, 0)]):
        for name in group:
            record = latest.get(name)
            if record is not None and record.result != "succeeded":
                return name, index, record
    return None


def _result(record: Record | None) -> str | None:
    return None if record is None else record.result
