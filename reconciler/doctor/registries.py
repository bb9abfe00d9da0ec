"""The `registries` check: does each configured registry answer?

A registry served from the repository (an entry with a `path`, or a plugin that declares no network)
is checked by looking for its directory. Any other is opened with its own plugin, as the resolver opens
it, and asked `ping()` (`RegistryProbe`, a capability a `Registry` may offer): the plugin knows its
hosts, schemes and endpoints. A registry without `ping()` is reported as not checked (a warning).
Skipped in offline mode.

Must not: know any registry host or protocol (no URLs, no HTTP here: that is the plugin's business),
reach the network in offline mode, or let a plugin's `ping()` raise out of the doctor or hang it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Literal, NamedTuple

from ..errors import StellaError, Transient
from ..models import RegistrySettings, Settings
from ..protocols import FileSource, RegistryOptions, RegistryPing, RegistryPlugin, RegistryProbe
from ..repo import GitTree
from .plugins import PluginInfo, manifest_of, usable
from .result import Check, Status, bounded, error_text

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 3.0
"""Seconds a registry plugin's `ping()` may wait for an answer (it is passed as its `timeout`)."""
_PING_WAIT = 4 * PROBE_TIMEOUT
"""How long the doctor waits for `ping()` to return at all: a probe may ask more than once (a token,
then again with it), each within `PROBE_TIMEOUT`; one that overruns is abandoned on its thread."""

Outcome = Literal["answers", "odd", "unchecked", "unreachable"]
_STATUS: dict[Outcome, Status] = {"answers": "ok", "odd": "warn", "unchecked": "warn", "unreachable": "fail"}
_WORST_FIRST: tuple[Outcome, ...] = ("unreachable", "odd", "unchecked")
_SUMMARY: dict[Outcome, str] = {
    "answers": "every configured registry answers",
    "odd": "some registry answers oddly",
    "unchecked": "some registry was not checked",
    "unreachable": "some registry cannot be reached",
}


class _Answer(NamedTuple):
    outcome: Outcome
    line: str


def registries_check(
    settings: Settings, tree: GitTree | None, offline_why: str, plugins: Sequence[PluginInfo]
) -> Check:
    if offline_why:
        layouts = f"{settings.mirror}/oci"
        if tree is not None and not tree.isdir(layouts):
            return Check(
                "registries",
                "warn",
                f"offline mode is on ({offline_why}) and there is no {layouts}/ in the repository: "
                "releases with tags only cannot be resolved",
            )
        return Check(
            "registries", "ok", f"skipped: offline mode is on ({offline_why}); images come from {layouts}/"
        )
    if not settings.registries:
        return Check("registries", "ok", "no registries configured (loopback registries need no entry)")
    answers: list[_Answer] = []
    for entry in settings.registries:
        manifest = manifest_of(plugins, "registries", entry.plugin)
        if entry.path is not None or (manifest is not None and not manifest.network):
            where = entry.path or f"{settings.mirror}/oci"
            if tree is not None and tree.isdir(where):
                answers.append(_Answer("answers", f"{entry.host}: served from {where}/"))
            else:
                line = f"{entry.host}: served from {where}/ ({where}/ is not in the repository)"
                answers.append(_Answer("unreachable", line))
        else:
            answers.append(_ping(entry, usable(plugins, "registries", entry.plugin), tree))
    outcomes = {a.outcome for a in answers}
    worst: Outcome = next((o for o in _WORST_FIRST if o in outcomes), "answers")
    message = f"{_SUMMARY[worst]} ({len(settings.registries)} configured)"
    return Check("registries", _STATUS[worst], message, tuple(a.line for a in answers))


def _ping(entry: RegistrySettings, info: PluginInfo | None, files: FileSource | None) -> _Answer:
    """Open the registry of `entry` with its plugin and ask it `ping()`; what it answered, as a line."""
    host, plugin = entry.host, f"registry plugin {entry.plugin!r}"
    if info is None or info.health != "loaded" or not isinstance(info.obj, RegistryPlugin):
        return _Answer("unchecked", f"{host}: not checked: {plugin} is not usable")
    if files is None:
        return _Answer("unchecked", f"{host}: not checked: the repository cannot be read")
    options = RegistryOptions(
        host=host,
        insecure=entry.insecure,
        path=entry.path,
        credentials=entry.credentials,
        options=dict(entry.options),
    )
    try:
        registry = info.obj.open(options, files)
    except Exception as exc:  # a plugin that cannot open a registry must not crash the doctor
        return _Answer("unreachable", f"{host}: {plugin} cannot open it: {error_text(exc)}")
    try:
        if not isinstance(registry, RegistryProbe):
            return _Answer("unchecked", f"{host}: not checked: {plugin} has no ping()")
        probe = registry
        answer = bounded(
            lambda: probe.ping(timeout=PROBE_TIMEOUT), _PING_WAIT, name=f"stella-doctor-ping-{host}"
        )
    except TimeoutError:
        return _Answer("unreachable", f"{host}: {plugin} did not answer ping() within {_PING_WAIT:g}s")
    except Transient as exc:  # the plugin's own words name what it could not reach
        return _Answer("unreachable", f"{host}: {exc}")
    except StellaError as exc:  # it could not ask as configured (e.g. unreadable credentials)
        return _Answer("odd", f"{host}: {exc}")
    except Exception as exc:  # a broken plugin must not crash the doctor
        log.debug("%s: ping() of %s failed", plugin, host, exc_info=True)
        return _Answer("unreachable", f"{host}: {plugin} ping() raised {error_text(exc)}")
    finally:
        with contextlib.suppress(Exception):
            registry.close()
    return _answer(host, plugin, answer)


def _answer(host: str, plugin: str, answer: object) -> _Answer:
    """What a registry answered to `ping()`, as a line of the check."""
    if not isinstance(answer, RegistryPing):
        return _Answer("odd", f"{host}: {plugin} ping() returned {answer!r}, not a RegistryPing")
    if answer.healthy:
        return _Answer("answers", f"{host}: {answer.request} answered {answer.status}")
    if answer.status is None:
        return _Answer("unreachable", f"{host}: unreachable: {answer.request}: {answer.error}")
    line = f"{host}: {answer.request} answered {answer.status} (not what a working registry answers)"
    return _Answer("odd", f"{line}: {answer.error}" if answer.error else line)
