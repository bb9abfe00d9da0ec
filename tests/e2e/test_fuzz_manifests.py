"""Fuzz: promotion, approval and release files mutated at random never break a pass.

Each example mutates one file of a real repository (bytes replaced, inserted or deleted), commits it, and
plans the branch: never an exception, never a decision for a promotion whose file (or approval, or
release) is reported as a problem, and every other promotion decided as it was without the mutation.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.discover import discover
from reconciler.manifests import held_promotion
from reconciler.passes import dry_run
from reconciler.repo import Repo
from tests.support.pipeline import RELEASE_130, Workspace, example_workspace, promotion
from tests.support.repos import commit_all, git, write_files

NOW = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)  # a Tuesday: no freeze window is open
APPROVAL = "approvals/shop-1.4.0--staging/release-manager@example.com.yaml"
TARGETS = (
    "promotions/shop-1.3.0--dev.yaml",
    "promotions/shop-1.4.0--staging.yaml",
    APPROVAL,
    "releases/shop-1.3.0.yaml",
)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict[str, str]]:
    ws = example_workspace(tmp_path_factory.mktemp("fuzz"))
    assert ws.stella("reconcile", "--once").code == 0  # genesis; shop-1.4.0--dev allowed
    lock = ws.show("releases/shop-1.4.0.json").decode()
    release_id = lock.split('"id":"')[1].split('"')[0]
    write_files(
        ws.root,
        {
            "releases/shop-1.3.0.yaml": RELEASE_130,
            "promotions/shop-1.3.0--dev.yaml": promotion("shop-1.3.0", "dev"),
            "promotions/shop-1.4.0--staging.yaml": promotion("shop-1.4.0", "staging"),
            APPROVAL: (
                f"apiVersion: stella/v1\nkind: Approval\npromotion: shop-1.4.0--staging\nrelease: {release_id}\n"
                "environment: staging\ndecision: approve\n"
            ),
        },
    )
    commit_all(ws.root, "the promotions the fuzzer mutates")
    return ws, _plan(ws)


def _plan(ws: Workspace) -> dict[str, str]:
    result = dry_run(Repo(ws.root), discover(offline=True), now=NOW, offline=True)
    return {o.promotion_id: o.decision.result for o in result.outcomes if o.decision}


mutation = st.tuples(
    st.sampled_from(TARGETS),
    st.sampled_from(("replace", "insert", "delete")),
    st.integers(min_value=0, max_value=400),
    st.binary(min_size=1, max_size=8),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(change=mutation)
def test_a_mutated_file_holds_up_only_its_promotion(
    base: tuple[Workspace, dict[str, str]], change: tuple[str, str, int, bytes]
) -> None:
    ws, baseline = base
    path, how, at, data = change
    original = (ws.root / path).read_bytes()
    at = min(at, len(original))
    mutated = {
        "replace": original[:at] + data + original[at + len(data) :],
        "insert": original[:at] + data + original[at:],
        "delete": original[:at] + original[at + len(data) :],
    }[how]
    try:
        (ws.root / path).write_bytes(mutated)
        commit_all(ws.root, f"fuzz {how} at {at} of {path}")
        result = dry_run(Repo(ws.root), discover(offline=True), now=NOW, offline=True)
    finally:
        git(ws.root, "reset", "-q", "--hard", "HEAD~1")
    decided = {o.promotion_id: o.decision.result for o in result.outcomes if o.decision}
    held = {h for p in result.problems if (h := held_promotion(p.file)) is not None}
    if path.startswith("releases/") and any(p.file == path for p in result.problems):
        held.add("shop-1.3.0--dev")
    for pid, verdict in baseline.items():
        if pid in held or pid in _touched(path):
            continue
        assert decided.get(pid) == verdict, (pid, result.problems)
    for pid in held:
        assert pid not in decided, (pid, result.problems)


def _touched(path: str) -> set[str]:
    """The promotions a mutation of `path` may change without a problem (a still valid, other file)."""
    return {
        "promotions/shop-1.3.0--dev.yaml": {"shop-1.3.0--dev"},
        "releases/shop-1.3.0.yaml": {"shop-1.3.0--dev"},
        "promotions/shop-1.4.0--staging.yaml": {"shop-1.4.0--staging"},
        APPROVAL: {"shop-1.4.0--staging"},
    }[path]


def test_the_baseline_decides_every_promotion(base: tuple[Workspace, dict[str, str]]) -> None:
    _, baseline = base
    assert baseline == {"shop-1.3.0--dev": "allow", "shop-1.4.0--staging": "pending"}
