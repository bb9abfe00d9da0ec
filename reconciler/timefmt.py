"""Times as the reconciler compares and writes them: aware, in UTC, and as RFC 3339 text.

A bottom-layer module shared by the models, the gates and the plugin API: it must not import anything
from `reconciler` and must not read the clock (the time is always handed in).
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["as_utc", "evidence_time", "rfc3339"]


def as_utc(value: datetime, what: str = "time") -> datetime:
    """`value` in UTC; raises ValueError when it is naive (a naive time cannot be compared safely)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def rfc3339(value: datetime) -> str:
    """`2026-12-01T10:00:00Z`: RFC 3339 in UTC (fractional seconds only when there are some)."""
    return as_utc(value).isoformat().replace("+00:00", "Z")


def evidence_time(value: datetime) -> str:
    """The one time format of evidence: `rfc3339` at whole seconds (`2026-12-01T10:00:00Z`).

    Every time written to the evidence branch goes through here, so a record never carries fractions."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
