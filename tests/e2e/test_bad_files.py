"""One bad promotion, approval or release file holds up only what depends on it.

A reconcile pass decides every other promotion, names each bad file with its line, and a full pass and an
incremental pass agree. Bad settings or policy still stop the pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.pipeline import RELEASE_130, Workspace, example_workspace, promotion
from tests.support.repos import commit_all, write_files

DEEP = "apiVersion: stella/v1\nkind: Promotion\nrelease: " + "[" * 200 + "]" * 200 + "\n"

BAD: dict[str, tuple[dict[str, str], str, str]] = {
    "yaml-syntax": (
        {"promotions/shop-1.3.0--broken.yaml": "apiVersion: stella/v1\nkind: Promotion\nrelease: [\n"},
        "promotions/shop-1.3.0--broken.yaml:4: YAML syntax error",
        "shop-1.3.0--broken",
    ),
    "nested-deep": (
        {"promotions/shop-1.3.0--deep.yaml": DEEP},
        "promotions/shop-1.3.0--deep.yaml:3: nested more than 64 levels deep",
        "shop-1.3.0--deep",
    ),
    "unknown-field": (
        {"promotions/shop-1.3.0--odd.yaml": promotion("shop-1.3.0", "dev") + "colour: blue\n"},
        "promotions/shop-1.3.0--odd.yaml:5: unknown field 'colour'",
        "shop-1.3.0--odd",
    ),
    "bad-approval": (
        {
            "promotions/shop-1.3.0--staging.yaml": promotion("shop-1.3.0", "staging"),
            "approvals/shop-1.3.0--staging/release-manager@example.com.yaml": "kind: Approval\n",
        },
        "approvals/shop-1.3.0--staging/release-manager@example.com.yaml",
        "shop-1.3.0--staging",
    ),
    "bad-release": (
        {
            "releases/shop-9.yaml": "apiVersion: stella/v1\nkind: Release\nname: shop-9\ncomponents: {}\n",
            "promotions/shop-9--dev.yaml": promotion("shop-9", "dev"),
        },
        "releases/shop-9.yaml",
        "shop-9--dev",
    ),
}


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    ws = example_workspace(tmp_path)
    assert ws.stella("reconcile", "--once").code == 0  # genesis; shop-1.4.0--dev allowed
    return ws


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_a_bad_file_holds_up_only_its_promotion(ws: Workspace, case: tuple[dict[str, str], str, str]) -> None:
    files, problem, held = case
    write_files(
        ws.root,
        {
            **files,
            "releases/shop-1.3.0.yaml": RELEASE_130,
            "promotions/shop-1.3.0--dev.yaml": promotion("shop-1.3.0", "dev"),
        },
    )
    commit_all(ws.root, "a good promotion and a bad file")
    run = ws.stella("reconcile", "--once", "-o", "json")
    assert run.code == 2, run.out + run.err  # invalid input is named; the rest is decided
    assert "Traceback" not in run.err
    result = run.json()
    decided = {d["promotion"]: d["decision"] for d in result["decisions"]}
    assert decided.get("shop-1.3.0--dev") == "allow"
    assert held not in decided or decided[held] == "error"
    shown = [
        f"{p['file']}:{p['line']}: {p['message']}" if p["line"] else f"{p['file']}: {p['message']}"
        for p in result["problems"]
    ]
    assert any(line.startswith(problem) for line in shown), shown
    again = ws.stella("reconcile", "--once", "-o", "json")  # the incremental pass agrees
    assert again.code == 2
    assert [d for d in again.json()["decisions"] if d["evidence"]] == []
    assert {p["file"] for p in again.json()["problems"]} == {p["file"] for p in result["problems"]}
    plan = ws.stella("plan", "--rev", "main")
    assert plan.code == 2 and problem.split(":")[0] in plan.out


def test_bad_settings_still_stop_the_pass(ws: Workspace) -> None:
    write_files(ws.root, {"stella.yaml": "apiVersion: stella/v1\nkind: Settings\n"})
    commit_all(ws.root, "break the settings")
    ws.tampered = True  # every command that reads main's settings refuses now, `replay` too
    run = ws.stella("reconcile", "--once")
    assert run.code == 2
    assert "stella.yaml" in run.err and "Traceback" not in run.err


def test_why_names_the_bad_file_of_a_held_promotion(ws: Workspace) -> None:
    files, problem, held = BAD["yaml-syntax"]
    write_files(ws.root, files)
    commit_all(ws.root, "a broken promotion")
    run = ws.stella("why", held)
    assert run.code == 2
    assert run.err.startswith(f"error: {problem}") and "Traceback" not in run.err
