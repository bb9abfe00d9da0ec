"""Run every check of `stella doctor`, in order, each isolated from the others.

`diagnose()` opens the repository once and hands each check what it needs; a check that raises becomes
a `fail` naming it, so one broken check never hides the others.

Must not: print, exit or write anything; reach the network other than through a registry plugin's
`ping()` or, when asked (`STELLA_DOCTOR_ENGINE=1`), an agent plugin's engine (never in offline mode).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from .agents import agents_check, has_targets
from .evidence import EvidenceState, clock_check, evidence_check, read_evidence
from .plugins import plugins_check, scan_plugins
from .registries import registries_check
from .repository import git_access_check, offline_reason, open_repository
from .result import Check, Diagnosis, error_text
from .third_party import third_party_checks
from .trust import allowed_signers_check, policy_check, ratified_view, signing_key_check
from .usage import in_use_check, offline_check, uses

log = logging.getLogger(__name__)


def run_checks(
    repo_path: str | os.PathLike[str],
    *,
    offline: bool,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> list[Check]:
    """Every check of `repo_path` (see the package docstring)."""
    return diagnose(repo_path, offline=offline, environ=environ, now=now).checks


def diagnose(
    repo_path: str | os.PathLike[str],
    *,
    offline: bool,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> Diagnosis:
    """Every check of `repo_path`, and the plugin table. `offline` is the `--offline` flag; the
    repository's `offline:` setting is read here. Never raises for what it checks."""
    environ = os.environ if environ is None else environ
    moment = now or datetime.now(UTC)
    path = Path(repo_path)
    checks: list[Check] = []
    state = open_repository(path)
    checks.append(state.check)
    if state.repository_check is not None:
        checks.append(state.repository_check)
    settings, tree, repo = state.settings, state.tree, state.repo
    offline_why = offline_reason(flag=offline, setting=bool(settings and settings.offline))
    plugins = scan_plugins(offline=bool(offline_why))
    checks.append(plugins_check(plugins))
    if settings is not None and tree is not None:
        used = uses(settings, state.repository, offline=bool(offline_why), plugins=plugins)
        checks.append(in_use_check(used, plugins, state.repository is not None))
        checks.append(offline_check(used, plugins, offline_why, settings))
        checks.append(_safely("registries", lambda: registries_check(settings, tree, offline_why, plugins)))
    governed = ratified_view(repo, settings, tree) if repo is not None and tree is not None else None
    if governed is not None and tree is not None and settings is not None:
        checks.append(_safely("policy", lambda: policy_check(governed, tree, settings)))
    trusted_tree = governed or tree
    checks.append(_safely("signing-key", lambda: signing_key_check(settings, trusted_tree, environ)))
    if tree is not None:
        checks.append(_safely("allowed-signers", lambda: allowed_signers_check(tree, state.repository)))
    if repo is not None:
        checks.append(_safely("git-access", lambda: git_access_check(repo, settings)))
    if repo is not None and settings is not None and tree is not None:
        from ..chain import evidence_ref

        ref = evidence_ref(repo, settings)
        try:
            evidence = read_evidence(repo, ref)
        except Exception as exc:  # an odd evidence branch must not hide the other checks
            evidence = EvidenceState(None, [f"cannot read {ref}: {error_text(exc)}"])
        checks.append(clock_check(evidence, moment))
        checks.append(evidence_check(evidence, ref))
    if tree is not None and state.repository is not None and has_targets(state.repository):
        repository = state.repository
        checks.append(
            _safely(
                "agents",
                lambda: agents_check(repository, tree, governed, plugins, environ, offline=bool(offline_why)),
            )
        )
    checks.extend(third_party_checks(plugins, path))
    return Diagnosis(checks, plugins)


def _safely(name: str, make: Callable[[], Check]) -> Check:
    """`make()`, or a `fail` saying the check itself broke: one check never hides the others."""
    try:
        return make()
    except Exception as exc:
        log.debug("check %s failed", name, exc_info=True)
        return Check(name, "fail", f"the check itself failed: {error_text(exc)}")
