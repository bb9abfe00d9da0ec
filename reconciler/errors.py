"""The one error hierarchy of Stella.

Every failure the core can report is a `StellaError`; the command line maps each branch of the tree to an
exit code (`cli.py` is the only place that does). Third-party exceptions are translated at the edge where
they happen (`raise ... from exc`), so nothing outside this module needs to know pygit2's or httpx's types.

    StellaError
    ├── InvalidInput      permanent: bad manifest, config or usage; names the file and line  -> exit 2
    │   └── ValidationFailed   several `Problem`s at once (validate reports them all)
    ├── Waiting           not a failure: something is pending, with when to look again
    ├── Transient         network or Git unavailable after retries                            -> exit 3
    │   └── RegistryUnavailable
    └── PluginError       a plugin could not load, has the wrong API version, or misbehaved   -> exit 2
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the input: where (file, line when known) and what."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "message": self.message}


class StellaError(Exception):
    """Base of every error Stella reports on purpose."""

    exit_code = 2

    def diagnostics(self) -> str:
        """A human-readable explanation, possibly several lines long."""
        return str(self)


class InvalidInput(StellaError):
    """Permanent: the input is wrong and retrying will not help."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        self.file = file
        self.line = line
        self.message = message
        super().__init__(str(Problem(file, line, message)) if file else message)

    @property
    def problems(self) -> list[Problem]:
        return [Problem(self.file or "-", self.line, self.message)]


class ValidationFailed(InvalidInput):
    """The repository has one or more problems; all of them are listed."""

    def __init__(self, problems: list[Problem]) -> None:
        self._problems = sorted(problems)
        first = self._problems[0] if self._problems else Problem("-", None, "invalid")
        InvalidInput.__init__(self, first.message, file=first.file, line=first.line)
        self.args = (f"{len(self._problems)} problem(s), first: {first}",)

    @property
    def problems(self) -> list[Problem]:
        return list(self._problems)

    def diagnostics(self) -> str:
        return "\n".join(str(p) for p in self._problems)


class Waiting(StellaError):
    """Not a failure: a gate is pending; `retry_at` says when it is worth looking again."""

    exit_code = 1

    def __init__(self, message: str, *, retry_at: datetime | None = None) -> None:
        self.retry_at = retry_at
        super().__init__(message)


class Transient(StellaError):
    """Infrastructure failed after retries (registry, Git); trying later may succeed."""

    exit_code = 3


class RegistryUnavailable(Transient):
    """A container registry could not be reached or kept failing."""


class PluginError(StellaError):
    """A plugin could not be loaded, has the wrong API version, or broke its contract."""

    exit_code = 2
