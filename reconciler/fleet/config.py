"""`fleet.yaml`: the tenants of a fleet and where its database is (DESIGN §10), parsed at the boundary.

`load_fleet(path)` reads the file with the manifests' safe YAML reader (size limit, no anchors, no
duplicate keys, lines kept) and validates it into frozen models; every problem names the file and line
(`InvalidInput`, exit 2). `resolve_ref` turns an `env:NAME` or `file:/path` reference into its value
and `database_url` says which URL the fleet uses (`STELLA_DATABASE_URL` wins over `database`). Secret
values are never logged nor put into an error message. No database, no network here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StringConstraints, ValidationError

from ..errors import InvalidInput, Problem, ValidationFailed
from ..models.common import Duration, Name, _Model

DATABASE_ENV = "STELLA_DATABASE_URL"
"""The environment variable whose value, when set, is the database URL whatever `database` says."""
DEFAULT_SERVICE_ROLE = "stella_service"
MAX_FLEET_BYTES = 1 << 20
MAX_SECRET_BYTES = 64 * 1024


def _valid_git_url(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("the repository contains control characters")
    if value.startswith("-"):
        raise ValueError(f"{value!r} starts with '-' (it would be read as an option)")
    schemes = ("git://", "https://", "http://", "ssh://", "file://")
    scp_like = "@" in value.split(":", 1)[0] and ":" in value
    if not (value.startswith(schemes) or value.startswith("/") or scp_like):
        raise ValueError(
            f"{value!r} is not a Git URL (git://, https://, ssh://, file://, user@host:path) "
            "nor an absolute path"
        )
    return value


def _absolute_path(value: str) -> str:
    if not value.startswith("/") or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{value!r} must be an absolute path")
    if ".." in value.split("/"):
        raise ValueError(f"{value!r} contains '..'")
    return value


Ref = Annotated[str, StringConstraints(pattern=r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:/[^\x00-\x1f\x7f]+)$")]
"""Where a secret is, never the secret: `env:NAME` or `file:/absolute/path`."""
_Bounded = StringConstraints(min_length=1, max_length=4096)
GitUrl = Annotated[str, _Bounded, AfterValidator(_valid_git_url)]
AbsolutePath = Annotated[str, _Bounded, AfterValidator(_absolute_path)]
RoleName = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]
"""A PostgreSQL role name that needs no quoting."""


class Tenant(_Model):
    """One repository of the fleet, with its own keys (invariant 8)."""

    name: Name
    repo: GitUrl
    signingKey: Ref
    webhookSecret: Ref
    pollInterval: Duration = "60s"


def _retention(value: str) -> str:
    from ..models.common import parse_duration

    if parse_duration(value).total_seconds() < 3600:
        raise ValueError(f"{value!r} is less than an hour (finished jobs are pruned by the hour)")
    return value


class Fleet(_Model):
    """`fleet.yaml`."""

    apiVersion: Literal["stella/v1"]
    kind: Literal["Fleet"]
    database: Ref = f"env:{DATABASE_ENV}"
    serviceRole: RoleName = DEFAULT_SERVICE_ROLE
    workdir: AbsolutePath
    jobRetention: Annotated[Duration, AfterValidator(_retention)] = "7d"
    """How long procrastinate's finished jobs (and their events) are kept before the workers prune them."""
    tenants: list[Tenant] = Field(default_factory=list)

    def job_retention_hours(self) -> int:
        from ..models.common import parse_duration

        return int(parse_duration(self.jobRetention).total_seconds() // 3600)

    def tenant(self, name: str) -> Tenant | None:
        return next((t for t in self.tenants if t.name == name), None)


def load_fleet(path: str | Path) -> Fleet:
    """The fleet `path` describes, or `InvalidInput` naming the file and line of each problem."""
    from ..manifests import _pydantic_problems, _YamlProblem, parse_yaml

    file = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FLEET_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read the fleet file: {exc.strerror or exc}", file=file) from exc
    if len(data) > MAX_FLEET_BYTES:
        raise InvalidInput(f"the fleet file is larger than {MAX_FLEET_BYTES} bytes", file=file)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput("the fleet file is not UTF-8", file=file) from exc
    try:
        doc = parse_yaml(text)
    except _YamlProblem as exc:
        raise InvalidInput(str(exc), file=file, line=exc.line) from None
    if not isinstance(doc.data, dict):
        raise InvalidInput("the fleet file must be a mapping (apiVersion, kind, workdir, tenants)", file=file)
    kind = doc.data.get("kind")
    if kind != "Fleet":
        raise InvalidInput(f"kind must be 'Fleet', not {kind!r}", file=file, line=doc.lines.get(("kind",), 1))
    try:
        fleet = Fleet.model_validate(doc.data)
    except ValidationError as exc:
        raise ValidationFailed(_pydantic_problems(file, doc, exc)) from None
    seen: set[str] = set()
    problems = []
    for i, tenant in enumerate(fleet.tenants):
        if tenant.name in seen:
            line = doc.lines.get(("tenants", i, "name"))
            problems.append(Problem(file, line, f"duplicate tenant {tenant.name!r}"))
        seen.add(tenant.name)
    if problems:
        raise ValidationFailed(problems)
    return fleet


def resolve_ref(ref: str, environ: Mapping[str, str], *, what: str = "secret") -> str:
    """The value `ref` points at (`env:NAME`: that variable; `file:/path`: the file, without its final
    newline). A missing or empty value is `InvalidInput` naming the reference, never the value."""
    kind, _, where = ref.partition(":")
    if kind == "env":
        value = environ.get(where)
        if not value:
            raise InvalidInput(f"the {what} ({ref}): environment variable {where} is not set or empty")
        return value
    if kind == "file":
        try:
            with open(where, "rb") as fh:
                data = fh.read(MAX_SECRET_BYTES + 1)
        except OSError as exc:
            raise InvalidInput(f"the {what} ({ref}): cannot read it: {exc.strerror or exc}") from exc
        if len(data) > MAX_SECRET_BYTES:
            raise InvalidInput(f"the {what} ({ref}): larger than {MAX_SECRET_BYTES} bytes")
        try:
            value = data.decode("utf-8").removesuffix("\n").removesuffix("\r")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"the {what} ({ref}): not UTF-8") from exc
        if not value:
            raise InvalidInput(f"the {what} ({ref}): the file is empty")
        return value
    raise InvalidInput(f"the {what}: {ref!r} is not a reference (use env:NAME or file:/path)")


def database_url(fleet: Fleet, environ: Mapping[str, str] | None = None) -> str:
    """The database URL: `STELLA_DATABASE_URL` when set, else what `fleet.database` points at."""
    env = os.environ if environ is None else environ
    override = env.get(DATABASE_ENV)
    if override:
        return override
    return resolve_ref(fleet.database, env, what="database URL")
