"""`stella replay` recomputes recorded decisions from their inputs."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.evidence import canonical, sha256_hex
from tests.support.pipeline import change_evidence, example_workspace


def test_replay_identical_and_different(tmp_path: Path) -> None:
    ws = example_workspace(tmp_path)
    run = ws.stella("reconcile", "--once", "-o", "json")
    assert run.code == 0, run.err
    (decision,) = [d for d in run.json()["decisions"] if d["evidence"]]
    evidence = decision["evidence"]

    one = ws.stella("replay", evidence, "-o", "json")
    assert one.code == 0, one.out + one.err
    assert one.json() == {
        "identical": True,
        "records": [{"evidence": evidence, "identical": True, "differences": []}],
    }
    assert ws.stella("replay", evidence.removeprefix("sha256:")).out.startswith(f"{evidence}: identical")

    path = f"evidence/{evidence.removeprefix('sha256:')}.json"
    statement = json.loads(ws.show(path))
    statement["predicate"]["decision"]["result"] = "deny"
    forged = canonical(statement)
    forged_path = f"evidence/{sha256_hex(forged)}.json"
    change_evidence(ws, {forged_path: forged}, "a record that its inputs do not support")
    run = ws.stella("replay", "--all", "-o", "json")
    assert run.code == 1
    by_id = {r["evidence"]: r for r in run.json()["records"]}
    assert by_id[evidence]["identical"] is True
    assert by_id[f"sha256:{sha256_hex(forged)}"]["differences"] == ["decision: recorded deny, replayed allow"]


def test_replay_usage_errors(tmp_path: Path) -> None:
    ws = example_workspace(tmp_path)
    assert ws.stella("reconcile", "--once").code == 0
    missing = ws.stella("replay", "sha256:" + "0" * 64)
    assert missing.code == 2 and "no record evidence/" in missing.err
    assert ws.stella("replay").code == 2
    assert ws.stella("replay", "nonsense").code == 2
