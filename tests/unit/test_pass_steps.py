"""Each step of the reconcile pass, run alone on a state the earlier steps left (a real Git repository
copied from example-repo/, its offline mirror, real signing keys)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler import loop, passes
from reconciler.decision import decide_inputs, gate_context
from reconciler.discover import discover
from reconciler.errors import InvalidInput
from reconciler.ledger import Ledger
from reconciler.passes import PassOptions, PassState
from reconciler.repo import RaceLost, Repo
from reconciler.sign import KeySigner, generate_key, load_private_key
from tests.support.pipeline import Workspace, example_workspace

NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)  # a Tuesday morning: no freeze window open


@pytest.fixture(scope="module")
def plugins():  # type: ignore[no-untyped-def]
    return discover(offline=True)


def _state(ws: Workspace, plugins: object, **options: object) -> PassState:
    return PassState(Repo(ws.root), plugins, PassOptions(NOW, offline=True, **options))  # type: ignore[arg-type]


def _run(state: PassState, steps: Sequence[passes.Step]) -> PassState:
    for step in steps:
        step(state)
    return state


def _upto(name: str) -> tuple[passes.Step, ...]:
    names = [step.__name__ for step in passes.EVALUATE]
    return passes.EVALUATE[: names.index(name) + 1]


def test_read_source_takes_the_branch_head_or_the_commit_asked_for(tmp_path: Path, plugins: object) -> None:
    ws = example_workspace(tmp_path)
    head = ws.git("rev-parse", "HEAD")
    state = _run(_state(ws, plugins), [passes.read_source])
    assert (state.branch, state.commit) == ("main", head)
    assert state.source is not None and state.source.read("stella.yaml") is not None
    planned = _run(_state(ws, plugins, commit=head), [passes.read_source])
    assert (planned.branch, planned.commit) == (head[:12], head)


def test_open_evidence_before_any_pass_finds_no_head(tmp_path: Path, plugins: object) -> None:
    state = _run(_state(example_workspace(tmp_path), plugins), _upto("open_evidence"))
    try:
        assert state.ref == "refs/heads/stella/evidence"
        assert state.evidence_head is None and state.evidence is None
        assert state.index is not None and state.index.ratified() is None
    finally:
        passes.discard(state)


def test_govern_ratifies_the_genesis_on_the_first_pass(tmp_path: Path, plugins: object) -> None:
    state = _run(_state(example_workspace(tmp_path), plugins), _upto("govern_step"))
    try:
        assert state.governed is not None and state.ratification is not None
        assert state.governed.ratified_now and state.governed.change is None
        assert state.ratification.record is not None and state.ratification.record.startswith("sha256:")
        assert state.governed.record == state.ratification.record
        assert "policy/stella.policy.json" in state.ratification.files
        assert state.view is not None and state.view.read("stella.yaml") is not None
    finally:
        passes.discard(state)


def test_load_and_lock_read_the_manifests_and_lock_the_new_release(tmp_path: Path, plugins: object) -> None:
    state = _run(_state(example_workspace(tmp_path), plugins), _upto("lock_step"))
    try:
        assert state.repository is not None and state.result is not None
        assert "shop-1.4.0--dev" in state.repository.promotions
        assert not state.result.problems
        assert set(state.new_locks) == {"shop-1.4.0"} == set(state.locks)
        assert state.new_locks["shop-1.4.0"].id.startswith("sha256:")
    finally:
        passes.discard(state)


def test_decide_promotions_records_the_allow_and_notes_nothing_to_recheck(
    tmp_path: Path, plugins: object
) -> None:
    state = _run(_state(example_workspace(tmp_path), plugins), passes.EVALUATE)
    try:
        assert state.result is not None and state.decider is not None
        [outcome] = state.result.outcomes
        assert outcome.promotion_id == "shop-1.4.0--dev"
        assert outcome.decision is not None and outcome.decision.result == "allow"
        assert outcome.evidence is not None
        # the genesis and the decision, each waiting for a signature
        assert len(state.decider.statements) == 2
        assert outcome.evidence.removeprefix("sha256:") in state.decider.statements
        assert state.recheck == {"promotions": [], "releases": []}
    finally:
        passes.discard(state)


def test_the_gate_context_is_built_from_the_recorded_inputs(tmp_path: Path, plugins: object) -> None:
    """The one seam: deciding again from the inputs the pass recorded gives the pass's decision."""
    state = _run(_state(example_workspace(tmp_path), plugins), passes.EVALUATE)
    try:
        assert state.result is not None and state.view is not None and state.repository is not None
        [outcome] = state.result.outcomes
        assert outcome.inputs is not None and outcome.decision is not None
        ctx = gate_context(outcome.inputs, state.view, mirror="mirror", offline=True)
        assert ctx.now == NOW and ctx.promotion_id == "shop-1.4.0--dev"
        assert ctx.release.id == outcome.inputs.release.id
        again, differences = decide_inputs(outcome.inputs, state.view, plugins, mirror="mirror", offline=True)  # type: ignore[arg-type]
        assert differences == []
        assert again == outcome.decision
    finally:
        passes.discard(state)


def test_sign_refuses_a_key_the_policy_does_not_hold(tmp_path: Path, plugins: object) -> None:
    ws = example_workspace(tmp_path)
    stranger = tmp_path / "stranger.pem"
    generate_key(stranger)
    signer = KeySigner(load_private_key(stranger))
    state = _run(_state(ws, plugins), [*passes.EVALUATE, loop.check_branch])
    try:
        _, sign, _ = loop.write_steps(lambda: signer)
        with pytest.raises(InvalidInput, match="not an evidence key of the policy"):
            sign(state)
    finally:
        passes.discard(state)
    assert Repo(ws.root).resolve_ref("refs/heads/stella/evidence") is None  # nothing written


def test_commit_moves_the_ref_by_compare_and_swap(tmp_path: Path, plugins: object) -> None:
    ws = example_workspace(tmp_path)
    signer = KeySigner(load_private_key(ws.key))
    state = _run(_state(ws, plugins), passes.EVALUATE)
    try:
        repo = Repo(ws.root)
        other = repo.commit_files(state.ref, None, {"README": b"written meanwhile\n"}, "another writer")
        check, sign, commit = loop.write_steps(lambda: signer)
        check(state)
        sign(state)
        with pytest.raises(RaceLost):
            commit(state)
    finally:
        passes.discard(state)
    assert repo.resolve_ref(state.ref) == other  # the other writer's commit stands, nothing half-written
    assert Ledger(repo.tree(other)).statement_ids() == []


def test_reconcile_is_the_evaluate_steps_then_the_write_steps(tmp_path: Path, plugins: object) -> None:
    ws = example_workspace(tmp_path)
    signer = KeySigner(load_private_key(ws.key))
    result = loop.reconcile(Repo(ws.root), plugins, now=lambda: NOW, signer=lambda: signer, offline=True)  # type: ignore[arg-type]
    assert [step.__name__ for step in loop.write_steps(None)] == ["check_branch", "sign", "commit"]
    assert result.evidence_commit is not None and result.ratification is not None
    assert [o.decision.result for o in result.outcomes if o.decision] == ["allow"]
    again = loop.reconcile(Repo(ws.root), plugins, now=lambda: NOW, signer=lambda: signer, offline=True)  # type: ignore[arg-type]
    assert again.evidence_commit is None and again.outcomes == []
