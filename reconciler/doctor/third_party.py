"""Third-party checks: every loaded `stella.doctor` plugin, each run isolated.

A check that raises, does not answer within `CHECK_TIMEOUT` seconds (its thread is left behind), or
returns something that is not a list of checks becomes a `fail` check under the plugin's name; each
valid result is named `<plugin>/<check>`.

Must not: let a plugin crash or hang the doctor, or trust what a plugin returns without checking it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..protocols import DoctorPlugin
from .plugins import PluginInfo
from .result import Check, Status, bounded, error_text

CHECK_TIMEOUT = 30.0
"""Seconds one third-party doctor check may take."""


def third_party_checks(plugins: Iterable[PluginInfo], repo_path: Path) -> list[Check]:
    checks: list[Check] = []
    for info in plugins:
        if info.kind != "doctor" or info.health != "loaded" or not isinstance(info.obj, DoctorPlugin):
            continue
        plugin = info.obj
        label = f"doctor plugin {info.name!r}"
        try:
            results = bounded(functools.partial(plugin.check, repo_path), CHECK_TIMEOUT)
        except TimeoutError:
            checks.append(Check(info.name, "fail", f"{label} did not answer within {CHECK_TIMEOUT:g}s"))
            continue
        except Exception as exc:  # a failing plugin must not crash the doctor
            checks.append(Check(info.name, "fail", f"{label} raised {error_text(exc)}"))
            continue
        if not isinstance(results, Sequence) or isinstance(results, str | bytes):
            checks.append(Check(info.name, "fail", f"{label} returned {results!r}, not a list of checks"))
            continue
        checks.extend(_as_check(item, info.name, label) for item in results)
    return checks


def _as_check(item: object, plugin: str, label: str) -> Check:
    def field_of(key: str) -> object:
        return item.get(key) if isinstance(item, Mapping) else getattr(item, key, None)

    name, status, message = field_of("name"), field_of("status"), field_of("message")
    details = field_of("details") or ()
    statuses: dict[object, Status] = {"ok": "ok", "warn": "warn", "fail": "fail"}
    checked = statuses.get(status) if isinstance(status, str) else None
    if not (isinstance(name, str) and isinstance(message, str) and isinstance(details, list | tuple)):
        checked = None
    if checked is None or not isinstance(details, list | tuple):
        return Check(plugin, "fail", f"{label} returned an invalid check: {item!r}")
    return Check(f"{plugin}/{name}", checked, str(message), tuple(str(d) for d in details))
