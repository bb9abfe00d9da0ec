"""The freeze-window gate, `next_freeze` and `validate_cron`: tables over times, windows and requesters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import entry_points
from typing import Any

import pytest

import reconciler
from reconciler import gates
from reconciler.gates import freeze, order
from reconciler.gates.freeze import (
    SEARCH_HORIZON,
    SEARCH_STEPS,
    FreezeWindowGate,
    freeze_window,
    next_freeze,
    validate_cron,
)
from reconciler.models import Environment, Promotion, RecurringWindow, ReleaseLock
from reconciler.protocols import Actor, Gate, GateContext, GateResult, GateStatus

# The example windows of the design: 2026-12-04 is a Friday.
HOLIDAY: dict[str, Any] = {
    "start": "2026-12-20T00:00:00Z",
    "end": "2027-01-04T00:00:00Z",
    "reason": "holiday freeze",
    "exceptions": ["oncall-lead@example.com"],
}
WEEKEND: dict[str, Any] = {"cron": "0 18 * * FRI", "duration": "62h", "reason": "weekend"}
DESIGN = [HOLIDAY, WEEKEND]

ONCALL = Actor(identity="oncall-lead@example.com", commit="c" * 40, key="SHA256:k", verified=True)
ONCALL_UNVERIFIED = Actor(
    identity="oncall-lead@example.com", commit="c" * 40, verified=False, reason="commit is not signed"
)
DEV = Actor(identity="dev@example.com", commit="d" * 40, key="SHA256:d", verified=True)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def environment(windows: list[Any]) -> Environment:
    return Environment.model_validate(
        {"apiVersion": "stella/v1", "kind": "Environment", "name": "prod", "freezeWindows": windows}
    )


def context(windows: list[Any], now: datetime, requester: Actor = DEV) -> GateContext:
    """A GateContext for promoting release shop-1.4.0 to `prod` with these freeze windows."""
    return GateContext(
        now=now,
        promotion_id="shop-1.4.0--prod",
        promotion=Promotion.model_validate(
            {"apiVersion": "stella/v1", "kind": "Promotion", "release": "shop-1.4.0", "environment": "prod"}
        ),
        release=ReleaseLock.model_validate(
            {
                "name": "shop-1.4.0",
                "id": "sha256:" + "1" * 64,
                "components": {
                    "web": {
                        "image": "registry.example.com/shop/web",
                        "tag": "1.4.0",
                        "digest": "sha256:" + "f" * 64,
                    }
                },
            }
        ),
        environment=environment(windows),
        options={},
        requester=requester,
    )


def result(status: GateStatus, reason: str, message: str, **kw: Any) -> GateResult:
    return GateResult("freeze-window", status, reason, message, **kw)


def window(index: int, reason: str, start: str, end: str) -> dict[str, object]:
    return {"window": index, "reason": reason, "start": start, "end": end}


def frozen(message: str, until: str, windows: list[dict[str, object]], cut_short: bool = False) -> GateResult:
    return result(
        "pending",
        "frozen",
        message,
        retry_at=at(until),
        facts={"windows": windows, "until": until, "cutShort": cut_short},
    )


NOT_FROZEN = result("pass", "not-frozen", "no freeze window is open")
HOLIDAY_FACT = window(0, "holiday freeze", "2026-12-20T00:00:00Z", "2027-01-04T00:00:00Z")
WEEKEND_1204 = window(1, "weekend", "2026-12-04T18:00:00Z", "2026-12-07T08:00:00Z")
FROZEN_WEEKEND_1204 = frozen(
    "frozen: weekend until 2026-12-07T08:00:00Z", "2026-12-07T08:00:00Z", [WEEKEND_1204]
)

# Overlapping and chained absolute windows: A and B overlap, C starts where B ends, D after a gap.
A: dict[str, Any] = {"start": "2026-12-01T10:00:00Z", "end": "2026-12-01T12:00:00Z", "reason": "A"}
B: dict[str, Any] = {"start": "2026-12-01T11:00:00Z", "end": "2026-12-01T14:00:00Z", "reason": "B"}
C: dict[str, Any] = {"start": "2026-12-01T14:00:00Z", "end": "2026-12-01T15:00:00Z", "reason": "C"}
D: dict[str, Any] = {"start": "2026-12-01T15:30:00Z", "end": "2026-12-01T16:00:00Z", "reason": "D"}
A_FACT = window(0, "A", "2026-12-01T10:00:00Z", "2026-12-01T12:00:00Z")
B_FACT = window(1, "B", "2026-12-01T11:00:00Z", "2026-12-01T14:00:00Z")


@dataclass(frozen=True)
class Row:
    windows: list[Any]
    now: str
    expected: GateResult
    requester: Actor = DEV


ROWS = {
    "no-windows": Row([], "2026-12-04T18:00:00Z", NOT_FROZEN),
    "absolute-before": Row([HOLIDAY], "2026-12-19T23:59:59Z", NOT_FROZEN),
    "absolute-at-start": Row(
        [HOLIDAY],
        "2026-12-20T00:00:00Z",
        frozen("frozen: holiday freeze until 2027-01-04T00:00:00Z", "2027-01-04T00:00:00Z", [HOLIDAY_FACT]),
    ),
    "absolute-inside": Row(
        [HOLIDAY],
        "2027-01-03T23:59:59.999999Z",
        frozen("frozen: holiday freeze until 2027-01-04T00:00:00Z", "2027-01-04T00:00:00Z", [HOLIDAY_FACT]),
    ),
    "absolute-at-end-instant": Row([HOLIDAY], "2027-01-04T00:00:00Z", NOT_FROZEN),
    "weekend-friday-17:59": Row(DESIGN, "2026-12-04T17:59:00Z", NOT_FROZEN),
    "weekend-friday-17:59:59.9": Row(DESIGN, "2026-12-04T17:59:59.900000Z", NOT_FROZEN),
    "weekend-friday-18:00": Row(DESIGN, "2026-12-04T18:00:00Z", FROZEN_WEEKEND_1204),
    "weekend-sunday": Row(DESIGN, "2026-12-06T12:00:00Z", FROZEN_WEEKEND_1204),
    "weekend-monday-07:59:59.5": Row(DESIGN, "2026-12-07T07:59:59.500000Z", FROZEN_WEEKEND_1204),
    "weekend-monday-08:00": Row(DESIGN, "2026-12-07T08:00:00Z", NOT_FROZEN),
    "weekend-then-holiday-then-weekend-chain": Row(
        DESIGN,
        "2026-12-18T18:00:00Z",
        frozen(
            "frozen: weekend until 2027-01-04T08:00:00Z",
            "2027-01-04T08:00:00Z",
            [window(1, "weekend", "2026-12-18T18:00:00Z", "2026-12-21T08:00:00Z")],
        ),
    ),
    "exception-verified": Row(
        DESIGN,
        "2026-12-22T12:00:00Z",
        result(
            "pass",
            "frozen-exception",
            "oncall-lead@example.com (verified) is an exception to the open freeze window(s): "
            "holiday freeze (until 2027-01-04T00:00:00Z)",
            facts={"windows": [HOLIDAY_FACT], "exception": "oncall-lead@example.com"},
        ),
        ONCALL,
    ),
    "exception-unverified": Row(
        DESIGN,
        "2026-12-22T12:00:00Z",
        frozen(
            "frozen: holiday freeze until 2027-01-04T08:00:00Z; oncall-lead@example.com is an exception to "
            "holiday freeze but that identity is not verified: commit is not signed",
            "2027-01-04T08:00:00Z",
            [HOLIDAY_FACT],
        ),
        ONCALL_UNVERIFIED,
    ),
    "exception-not-listed": Row(
        DESIGN,
        "2026-12-22T12:00:00Z",
        frozen("frozen: holiday freeze until 2027-01-04T08:00:00Z", "2027-01-04T08:00:00Z", [HOLIDAY_FACT]),
    ),
    "exception-verified-but-weekend-holds": Row(
        DESIGN,
        "2026-12-26T12:00:00Z",
        frozen(
            "frozen: weekend until 2026-12-28T08:00:00Z",
            "2026-12-28T08:00:00Z",
            [window(1, "weekend", "2026-12-25T18:00:00Z", "2026-12-28T08:00:00Z")],
        ),
        ONCALL,
    ),
    "overlap-chain-from-first": Row(
        [A, B, C, D],
        "2026-12-01T10:30:00Z",
        frozen("frozen: A until 2026-12-01T15:00:00Z", "2026-12-01T15:00:00Z", [A_FACT]),
    ),
    "overlap-chain-two-open": Row(
        [A, B, C, D],
        "2026-12-01T11:30:00Z",
        frozen("frozen: A, B until 2026-12-01T15:00:00Z", "2026-12-01T15:00:00Z", [A_FACT, B_FACT]),
    ),
    "overlap-chain-in-the-gap": Row([A, B, C, D], "2026-12-01T15:10:00Z", NOT_FROZEN),
    "recurring-overlapping-itself-for-a-year": Row(
        [{"cron": "0 3 * * *", "duration": "25h", "reason": "maintenance"}],
        "2026-12-01T10:30:00Z",
        frozen(
            "frozen: maintenance until at least 2027-12-03T04:00:00Z (windows chain on; "
            "followed them for 366 days or 1000 windows at most)",
            "2027-12-03T04:00:00Z",
            [window(0, "maintenance", "2026-12-01T03:00:00Z", "2026-12-02T04:00:00Z")],
            cut_short=True,
        ),
    ),
    "recurring-every-minute": Row(
        [{"cron": "* * * * *", "duration": "1m"}],
        "2026-12-01T10:00:30Z",
        frozen(
            "frozen: freezeWindows[0] until at least 2026-12-02T02:40:00Z (windows chain on; "
            "followed them for 366 days or 1000 windows at most)",
            "2026-12-02T02:40:00Z",
            [window(0, "", "2026-12-01T10:00:00Z", "2026-12-01T10:01:00Z")],
            cut_short=True,
        ),
    ),
    "absolute-longer-than-the-horizon": Row(
        [{"start": "2026-01-01T00:00:00Z", "end": "2028-06-01T00:00:00Z"}],
        "2026-12-01T10:00:00Z",
        frozen(
            "frozen: freezeWindows[0] until 2028-06-01T00:00:00Z",
            "2028-06-01T00:00:00Z",
            [window(0, "", "2026-01-01T00:00:00Z", "2028-06-01T00:00:00Z")],
        ),
    ),
    "absolute-with-offset-reported-in-utc": Row(
        [{"start": "2026-12-01T12:00:00+02:00", "end": "2026-12-01T13:00:00+02:00", "reason": "r"}],
        "2026-12-01T10:00:00Z",
        frozen(
            "frozen: r until 2026-12-01T11:00:00Z",
            "2026-12-01T11:00:00Z",
            [window(0, "r", "2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z")],
        ),
    ),
    "invalid-cron": Row(
        # model_construct skips validation: the models may refuse this cron themselves.
        [HOLIDAY, RecurringWindow.model_construct(cron="61 * * * *", duration="1h")],
        "2026-12-04T18:00:00Z",
        result(
            "error",
            "invalid-cron",
            "freezeWindows[1] of prod: cron '61 * * * *': minute field '61': 61 is out of range 0-59",
            facts={"window": 1},
        ),
    ),
}


@pytest.mark.parametrize("row", list(ROWS.values()), ids=list(ROWS))
def test_freeze_window(row: Row) -> None:
    assert freeze_window.evaluate(context(row.windows, at(row.now), row.requester)) == row.expected


def test_search_bounds_are_what_the_messages_say() -> None:
    assert SEARCH_HORIZON.days == 366
    assert SEARCH_STEPS == 1000


NEXT_FREEZE = {
    "no-windows": ([], "2026-12-04T17:59:00Z", None),
    "weekend-next": (
        DESIGN,
        "2026-12-04T17:59:00Z",
        ("2026-12-04T18:00:00Z", "2026-12-07T08:00:00Z", "weekend"),
    ),
    "open-window-is-not-upcoming": (
        DESIGN,
        "2026-12-04T18:00:00Z",
        ("2026-12-11T18:00:00Z", "2026-12-14T08:00:00Z", "weekend"),
    ),
    "holiday-before-next-friday": (
        DESIGN,
        "2026-12-19T12:00:00Z",
        ("2026-12-20T00:00:00Z", "2027-01-04T00:00:00Z", "holiday freeze"),
    ),
    "absolute-already-started": ([HOLIDAY], "2026-12-20T00:00:00Z", None),
    "absolute-at-the-horizon": (
        [{"start": "2027-12-02T10:00:00Z", "end": "2027-12-03T00:00:00Z"}],
        "2026-12-01T10:00:00Z",
        ("2027-12-02T10:00:00Z", "2027-12-03T00:00:00Z", "freezeWindows[0]"),
    ),
    "absolute-beyond-the-horizon": (
        [{"start": "2027-12-02T10:00:01Z", "end": "2027-12-03T00:00:00Z"}],
        "2026-12-01T10:00:00Z",
        None,
    ),
    "same-start-first-listed-wins": (
        [
            {"cron": "0 0 * * *", "duration": "1h", "reason": "nightly"},
            {"start": "2026-12-02T00:00:00Z", "end": "2026-12-03T00:00:00Z"},
        ],
        "2026-12-01T10:00:00Z",
        ("2026-12-02T00:00:00Z", "2026-12-02T01:00:00Z", "nightly"),
    ),
    "leap-day-cron": (
        [{"cron": "0 0 29 2 *", "duration": "1d", "reason": "leap"}],
        "2026-12-01T10:00:00Z",
        None,
    ),
}


@pytest.mark.parametrize(("windows", "now", "expected"), list(NEXT_FREEZE.values()), ids=list(NEXT_FREEZE))
def test_next_freeze(windows: list[dict[str, Any]], now: str, expected: tuple[str, str, str] | None) -> None:
    found = next_freeze(environment(windows).freezeWindows, at(now))
    assert found == (None if expected is None else (at(expected[0]), at(expected[1]), expected[2]))


def test_next_freeze_refuses_an_invalid_cron() -> None:
    with pytest.raises(ValueError, match="never fires"):
        next_freeze(
            environment([{"cron": "0 0 30 2 *", "duration": "1h"}]).freezeWindows, at("2026-12-01T00:00:00Z")
        )


VALID_CRON = [
    "0 18 * * FRI",
    "0 18 * * fri",
    "*/15 9-17 * * 1-5",
    "0 0 1,15 * *",
    "0 0 * jan-mar mon-fri",
    "0 0 * * 7",
    "0 0 * * 0-7",
    "0-30/10 */2 * * *",
    "0 0 29 2 *",
    "0 0 31 2 mon",
    "  0\t18 * * FRI  ",
]


@pytest.mark.parametrize("text", VALID_CRON, ids=VALID_CRON)
def test_validate_cron_accepts(text: str) -> None:
    validate_cron(text)


FIVE_FIELDS = " must have 5 fields (minute hour day-of-month month day-of-week), it has "
NOT_AN_ITEM = "is not `*`, a value, a range or a step"
INVALID_CRON = {  # text -> what follows "cron '<text>'" in the message
    "": FIVE_FIELDS + "0",
    "0 18 * *": FIVE_FIELDS + "4",
    "0 0 * * * *": FIVE_FIELDS + "6",
    "@daily": FIVE_FIELDS + "1",
    "61 * * * *": ": minute field '61': 61 is out of range 0-59",
    "0 24 * * *": ": hour field '24': 24 is out of range 0-23",
    "0 0 0 * *": ": day of month field '0': 0 is out of range 1-31",
    "0 0 * 13 *": ": month field '13': 13 is out of range 1-12",
    "0 0 * * 8": ": day of week field '8': 8 is out of range 0-7",
    "*/0 * * * *": ": minute field '*/0': a step must be at least 1",
    "5/15 * * * *": ": minute field '5/15': a step needs `*` or a range before it, as in `*/15`",
    "0 0 10-5 * *": ": day of month field '10-5': range '10-5' goes backwards",
    "0 0 * * fri-mon": ": day of week field 'fri-mon': range 'fri-mon' goes backwards",
    "0 0 * foo *": ": month field 'foo': 'foo' is not a number or one of "
    "jan, feb, mar, apr, may, jun, jul, aug, sep, oct, nov, dec",
    "0 0 * * mon,": f": day of week field 'mon,': '' {NOT_AN_ITEM}",
    "0 0 L * *": f": day of month field 'L': 'L' {NOT_AN_ITEM}",
    "0 0 ? * *": f": day of month field '?': '?' {NOT_AN_ITEM}",
    "0 0 * * 5#2": f": day of week field '5#2': '5#2' {NOT_AN_ITEM}",
    "H * * * *": f": minute field 'H': 'H' {NOT_AN_ITEM}",
    "R * * * *": f": minute field 'R': 'R' {NOT_AN_ITEM}",
    "0 0 30 2 *": " never fires",
    "0 0 31 4,6 *": " never fires",
}


@pytest.mark.parametrize(("text", "message"), list(INVALID_CRON.items()), ids=list(INVALID_CRON))
def test_validate_cron_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_cron(text)
    assert str(info.value) == f"cron {text!r}{message}"


def test_is_a_gate_plugin_registered_by_entry_point() -> None:
    assert isinstance(freeze_window, Gate)
    assert isinstance(freeze_window, FreezeWindowGate)
    manifest = freeze_window.manifest
    assert (manifest.name, manifest.version, manifest.kinds, manifest.network) == (
        "freeze-window",
        reconciler.__version__,
        ("gate",),
        False,
    )
    (ep,) = [ep for ep in entry_points(group="stella.gates") if ep.name == "freeze-window"]
    assert ep.load() is freeze_window


RFC3339 = {
    "utc": (datetime(2026, 12, 1, 10, 0, tzinfo=UTC), "2026-12-01T10:00:00Z"),
    "offset": (at("2026-12-01T12:00:00+02:00"), "2026-12-01T10:00:00Z"),
    "fraction": (at("2026-12-01T10:00:00.250000Z"), "2026-12-01T10:00:00.250000Z"),
}


@pytest.mark.parametrize(("value", "text"), list(RFC3339.values()), ids=list(RFC3339))
def test_rfc3339(value: datetime, text: str) -> None:
    assert gates.rfc3339(value) == text


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^ctx\.now must be timezone-aware, got naive 2026-12-01T10:00:00$"):
        freeze_window.evaluate(context(DESIGN, datetime(2026, 12, 1, 10, 0)))
    with pytest.raises(ValueError, match=r"^now must be timezone-aware"):
        next_freeze([], datetime(2026, 12, 1, 10, 0))


def test_public_api() -> None:
    assert gates.__all__ == ["as_utc", "rfc3339", "validate_cron"]
    assert freeze.__all__ == [
        "GATE",
        "SEARCH_HORIZON",
        "SEARCH_STEPS",
        "FreezeWindowGate",
        "Window",
        "freeze_window",
        "next_freeze",
        "validate_cron",
    ]
    assert order.__all__ == ["GATE", "EnvironmentOrderGate", "environment_order"]
    assert freeze.validate_cron is gates.validate_cron
