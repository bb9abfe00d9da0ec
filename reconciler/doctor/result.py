"""What `stella doctor` finds: a `Check` per check, a `Diagnosis` of them all, and the helpers every check
module shares (the worse of two statuses, a capped list of problems, an exception as text, a bounded
call).

Must not: check anything itself, print, or import a check module (they import this one).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .plugins import PluginInfo

Status = Literal["ok", "warn", "fail"]

SHOWN = 5
"""How many problems a check names before it only counts the rest."""


@dataclass(frozen=True)
class Check:
    """The outcome of one check."""

    name: str
    status: Status
    message: str
    details: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "details": list(self.details),
        }


@dataclass(frozen=True)
class Diagnosis:
    """Every check, and every installed plugin."""

    checks: list[Check]
    plugins: list[PluginInfo]

    @property
    def usable(self) -> bool:
        """False when the repository itself cannot be read (the `repository` check failed)."""
        return all(c.status != "fail" for c in self.checks if c.name == "repository")

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]


def worse(a: Status, b: Status) -> Status:
    order = ("ok", "warn", "fail")
    return a if order.index(a) >= order.index(b) else b


def named(problems: Sequence[object], shown: int = SHOWN) -> tuple[str, ...]:
    """The first `shown` problems as text, then how many more there are."""
    lines = [str(p) for p in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"... and {len(problems) - shown} more (`stella validate` lists them all)")
    return tuple(lines)


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def bounded(job: Callable[[], object], timeout: float, name: str = "stella-doctor-check") -> object:
    """`job()` on a daemon thread; its value, its exception, or TimeoutError (the thread is left)."""
    answer: queue.SimpleQueue[tuple[bool, object]] = queue.SimpleQueue()

    def run() -> None:
        try:
            answer.put((True, job()))
        except Exception as exc:
            answer.put((False, exc))

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        ok, value = answer.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError from None
    if not ok:
        assert isinstance(value, Exception)
        raise value
    return value
