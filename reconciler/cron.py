"""Validation of standard 5-field cron expressions (`freezeWindows[].cron`).

A bottom-layer module: the models validate with it and the `freeze-window` gate re-checks with it, so it
must not import anything from `reconciler` (models, gates, protocols). It only says whether a text is
cron; the arithmetic of fire times is croniter's, in the gate. It must not read the clock: whether an
expression fires at all is checked from a fixed point.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

__all__ = ["validate_cron"]

_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, start=1)}
_WEEKDAYS = {name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _WEEKDAYS),
)
_ITEM_RE = re.compile(
    r"^(?:(?P<star>\*)|(?P<lo>[0-9]+|[a-z]{3})(?:-(?P<hi>[0-9]+|[a-z]{3}))?)(?:/(?P<step>[0-9]+))?$",
    re.IGNORECASE,
)
_FIRES_FROM = datetime(2000, 1, 1, tzinfo=UTC)
"""A fixed point to check that a cron fires at all (so that validation does not depend on the clock)."""


def validate_cron(text: str) -> None:
    """Raise ValueError, saying what is wrong, unless `text` is a 5-field standard cron expression.

    Allowed in each field: `*`, a number or (month, day of week) an English three-letter name, a range
    `a-b` with a <= b, a step `*/n` or `a-b/n` (n >= 1), and comma-separated lists of those. Day of week
    is 0-7 (0 and 7 are Sunday). As in standard cron, when both day fields are restricted a day matches
    either. Extensions (`@daily`, seconds or year fields, `L`, `W`, `#`, `?`, `H`, `R`) are refused, and
    so is an expression that never fires (`0 0 30 2 *`).
    """
    if not isinstance(text, str):
        raise ValueError(f"cron must be a string, got {type(text).__name__}")
    fields = text.split()
    if len(fields) != len(_FIELDS):
        raise ValueError(
            f"cron {text!r} must have 5 fields (minute hour day-of-month month day-of-week), "
            f"it has {len(fields)}"
        )
    for value, (name, low, high, names) in zip(fields, _FIELDS, strict=True):
        for item in value.split(","):
            problem = _item_problem(item, low, high, names)
            if problem:
                raise ValueError(f"cron {text!r}: {name} field {value!r}: {problem}")
    from croniter import croniter  # type: ignore[import-untyped]  # (40 ms of import: only when needed)

    if not croniter.is_valid(text):
        raise ValueError(f"cron {text!r} is not a valid cron expression")
    try:
        croniter(text, _FIRES_FROM).get_next(datetime)
    except Exception as exc:  # croniter's CroniterBadDateError: no fire time within its search
        raise ValueError(f"cron {text!r} never fires") from exc


def _item_problem(item: str, low: int, high: int, names: dict[str, int]) -> str | None:
    match = _ITEM_RE.match(item)
    if not match:
        return f"{item!r} is not `*`, a value, a range or a step"
    values: list[int] = []
    for part in (match["lo"], match["hi"]):
        if part is None:
            continue
        if part.isdigit():
            number = int(part)
        elif part.lower() in names:
            number = names[part.lower()]
        else:
            return f"{part!r} is not a number" + (f" or one of {', '.join(names)}" if names else "")
        if not low <= number <= high:
            return f"{number} is out of range {low}-{high}"
        values.append(number)
    if len(values) == 2 and values[0] > values[1]:
        return f"range {item.split('/')[0]!r} goes backwards"
    if match["step"] is not None:
        if int(match["step"]) < 1:
            return "a step must be at least 1"
        if match["lo"] is not None and match["hi"] is None:
            return f"a step needs `*` or a range before it, as in `*/{match['step']}`"
    return None
