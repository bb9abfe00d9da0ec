"""What every model shares: the strict base models and the constrained strings and times.

Names, identities, digests, durations, secret references, image references, repository paths and cron
expressions are checked here, once, so that each manifest model only says which fields it has. This is the
bottom of the models: it must not import another model module, nor anything above the models (gates,
policy, evidence); cron validation comes from `reconciler.cron`. No I/O here.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from .. import reference
from ..cron import validate_cron

API_VERSION = "stella/v1"

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_IDENTITY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9][A-Za-z0-9.-]{0,190}$"
_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def _no_double_dot(value: str) -> str:
    if ".." in value:
        raise ValueError(f"{value!r} contains '..', which could escape a directory")
    return value


def _valid_duration(value: str) -> str:
    if not value or not _DURATION_RE.match(value) or parse_duration(value) <= timedelta(0):
        raise ValueError(f"invalid duration {value!r}: use e.g. 30m, 1h, 2d, 1h30m")
    return value


def _valid_image(value: str) -> str:
    try:
        reference.parse(value)
    except reference.ReferenceError as exc:
        raise ValueError(str(exc)) from None
    return value


def _valid_repo_path(value: str) -> str:
    parts = value.split("/")
    if value.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in value:
        raise ValueError(f"{value!r} must be a relative path inside the repository (no '..', no '/')")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{value!r} contains control characters")
    return value


def _valid_cron(value: str) -> str:
    validate_cron(value)
    return value


Name = Annotated[
    str,
    StringConstraints(pattern=_NAME_PATTERN),
    AfterValidator(_no_double_dot),
]
"""A manifest, component or environment name: safe as a single path component."""

Identity = Annotated[
    str,
    StringConstraints(pattern=_IDENTITY_PATTERN),
    AfterValidator(_no_double_dot),
]
"""A principal as `trust/allowed_signers` names it (an email address)."""

Digest = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
Duration = Annotated[str, StringConstraints(pattern=r"^[0-9dhms]+$"), AfterValidator(_valid_duration)]
SecretRef = Annotated[
    str,
    StringConstraints(pattern=r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:/[^\x00-\x1f]+|plugin:[a-z0-9-]+:.+)$"),
]
"""Where a secret comes from, never the secret: `env:NAME`, `file:/path` or `plugin:<name>:<ref>`."""
ImageText = Annotated[str, AfterValidator(_valid_image)]
RepoPath = Annotated[str, AfterValidator(_valid_repo_path)]
Cron = Annotated[str, AfterValidator(_valid_cron)]
UtcTime = Annotated[AwareDatetime, Field(strict=False)]
"""A timezone-aware time; read from JSON text as well as from a datetime."""


def parse_duration(value: str) -> timedelta:
    """`1h30m` -> timedelta(hours=1, minutes=30)."""
    match = _DURATION_RE.match(value)
    if not match:
        raise ValueError(f"invalid duration {value!r}")
    d, h, m, s = (int(g) if g else 0 for g in match.groups())
    return timedelta(days=d, hours=h, minutes=m, seconds=s)


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, populate_by_name=False, defer_build=True
    )


class _Manifest(_Model):
    apiVersion: Literal["stella/v1"]
