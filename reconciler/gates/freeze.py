"""The `freeze-window` gate: no promotion while one of the environment's freeze windows is open.

Two kinds of window (`Environment.freezeWindows`), both in UTC and both half-open, [start, end):

- absolute: `{start, end}`;
- recurring: `{cron, duration}`: a 5-field standard cron expression (minute hour day-of-month month
  day-of-week; numbers, names, `*`, lists, ranges and steps) that opens a window at each fire time,
  each lasting `duration`. The occurrence that matters at a time `t` is the latest fire time <= t; the
  window is open when t < fire + duration.

While a window is open the gate is pending (reason `frozen`) until the end of the whole frozen period:
windows may overlap or chain, so it follows them until a moment where none is open, looking at most
`SEARCH_HORIZON` ahead and at most `SEARCH_STEPS` windows deep (beyond that it says "at least until").
A window lists `exceptions`: a requester whose identity is *verified* and listed there is not held by
that window (reason `frozen-exception`, pass). Not inside any window: pass, reason `not-frozen`.
A cron text that is not valid standard cron makes the gate an `error` (reason `invalid-cron`).

PURE: the time is `ctx.now`; no clock, disk, network or Git. Cron arithmetic is croniter's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import croniter  # type: ignore[import-untyped]

from reconciler.models import AbsoluteWindow, RecurringWindow, parse_duration
from reconciler.protocols import Actor, GateContext, GateResult, PluginManifest
from reconciler.version import __version__

from . import as_utc, rfc3339, validate_cron

__all__ = [
    "GATE",
    "SEARCH_HORIZON",
    "SEARCH_STEPS",
    "FreezeWindowGate",
    "Window",
    "freeze_window",
    "next_freeze",
    "validate_cron",
]

GATE = "freeze-window"

SEARCH_HORIZON = timedelta(days=366)
"""How far ahead the gate follows chained windows, and `next_freeze` looks for the next one."""

SEARCH_STEPS = 1000
"""How many chained windows the gate follows at most (a cron firing every minute is a long chain)."""

Window = AbsoluteWindow | RecurringWindow

# --- cron ----------------------------------------------------------------------------------------


def _last_fire(text: str, at: datetime) -> datetime:
    """The latest fire time <= `at` (fire times fall on whole minutes)."""
    after = at.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return _typed(croniter(text, after).get_prev(datetime))  # strictly before `after`


def _next_fire(text: str, after: datetime) -> datetime:
    """The earliest fire time > `after`."""
    return _typed(croniter(text, after).get_next(datetime))


def _typed(value: object) -> datetime:
    if not isinstance(value, datetime):  # pragma: no cover - croniter returns what ret_type asks for
        raise TypeError(f"croniter returned {value!r}, not a datetime")
    return as_utc(value)


# --- windows -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Open:
    """One occurrence of a window: which (index in freezeWindows), from when, until when."""

    index: int
    window: Window
    start: datetime
    end: datetime

    @property
    def name(self) -> str:
        return _describe(self.index, self.window)

    def fact(self) -> dict[str, object]:
        return {
            "window": self.index,
            "reason": self.window.reason,
            "start": rfc3339(self.start),
            "end": rfc3339(self.end),
        }


def _describe(index: int, window: Window) -> str:
    return window.reason or f"freezeWindows[{index}]"


def _open_at(index: int, window: Window, at: datetime) -> _Open | None:
    """The occurrence of `window` open at `at`, if any."""
    if isinstance(window, AbsoluteWindow):
        start, end = as_utc(window.start), as_utc(window.end)
    else:
        start = _last_fire(window.cron, at)
        end = start + parse_duration(window.duration)
    return _Open(index, window, start, end) if start <= at < end else None


def _frozen_until(windows: Sequence[tuple[int, Window]], at: datetime) -> tuple[datetime, bool]:
    """The first moment >= `at` where none of `windows` is open; True when the search was cut short."""
    moment = at
    for _ in range(SEARCH_STEPS):
        ends = [o.end for i, w in windows if (o := _open_at(i, w, moment))]
        if not ends:
            return moment, False
        moment = max(ends)
        if moment - at >= SEARCH_HORIZON:
            break
    return moment, any(_open_at(i, w, moment) for i, w in windows)


def next_freeze(windows: Sequence[Window], now: datetime) -> tuple[datetime, datetime, str] | None:
    """The next window to open after `now`: (start, end, reason), within `SEARCH_HORIZON`, or None.

    Only windows opening strictly after `now` count (one open at `now` is the gate's business). The
    reason is the window's `reason`, or `freezeWindows[<index>]` when it has none; between windows
    opening at the same instant the first listed wins. Raises ValueError for an invalid cron.
    """
    now = as_utc(now, "now")
    best: tuple[datetime, datetime, str] | None = None
    for index, window in enumerate(windows):
        if isinstance(window, AbsoluteWindow):
            start, end = as_utc(window.start), as_utc(window.end)
            if start <= now:
                continue
        else:
            validate_cron(window.cron)
            start = _next_fire(window.cron, now)
            end = start + parse_duration(window.duration)
        if start - now <= SEARCH_HORIZON and (best is None or start < best[0]):
            best = (start, end, _describe(index, window))
    return best


# --- the gate ------------------------------------------------------------------------------------


def _excepted(requester: Actor, window: Window) -> bool:
    return requester.verified and requester.identity is not None and requester.identity in window.exceptions


class FreezeWindowGate:
    """Pending while a freeze window not excepting the (verified) requester is open."""

    manifest = PluginManifest(
        name=GATE,
        version=__version__,
        kinds=("gate",),
        network=False,
        description="no promotion while a freeze window of the environment is open (absolute or cron)",
    )

    def evaluate(self, ctx: GateContext) -> GateResult:
        now = as_utc(ctx.now, "ctx.now")
        windows = list(enumerate(ctx.environment.freezeWindows))
        for index, window in windows:
            if isinstance(window, RecurringWindow):
                try:
                    validate_cron(window.cron)
                except ValueError as exc:
                    return GateResult(
                        GATE,
                        "error",
                        "invalid-cron",
                        f"freezeWindows[{index}] of {ctx.environment.name}: {exc}",
                        facts={"window": index},
                    )
        open_now = [o for i, w in windows if (o := _open_at(i, w, now))]
        if not open_now:
            return GateResult(GATE, "pass", "not-frozen", "no freeze window is open")
        requester = ctx.requester
        holding = [o for o in open_now if not _excepted(requester, o.window)]
        if not holding:
            names = ", ".join(f"{o.name} (until {rfc3339(o.end)})" for o in open_now)
            return GateResult(
                GATE,
                "pass",
                "frozen-exception",
                f"{requester.identity} (verified) is an exception to the open freeze window(s): {names}",
                facts={"windows": [o.fact() for o in open_now], "exception": requester.identity},
            )
        blocking = [(i, w) for i, w in windows if not _excepted(requester, w)]
        until, cut_short = _frozen_until(blocking, now)
        names = ", ".join(o.name for o in holding)
        message = f"frozen: {names} until {rfc3339(until)}"
        if cut_short:
            message = (
                f"frozen: {names} until at least {rfc3339(until)} (windows chain on; "
                f"followed them for {SEARCH_HORIZON.days} days or {SEARCH_STEPS} windows at most)"
            )
        unverified = [o.name for o in holding if requester.identity in o.window.exceptions]
        if unverified:
            why = f": {requester.reason}" if requester.reason else ""
            message += (
                f"; {requester.identity} is an exception to {', '.join(unverified)} but that identity "
                f"is not verified{why}"
            )
        return GateResult(
            GATE,
            "pending",
            "frozen",
            message,
            retry_at=until,
            facts={"windows": [o.fact() for o in holding], "until": rfc3339(until), "cutShort": cut_short},
        )


freeze_window = FreezeWindowGate()
"""The entry point object (`stella.gates`: `freeze-window`)."""
