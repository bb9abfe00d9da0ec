"""A template that would hang or exhaust the reconciler: its render stops, and holds up only its promotion.

Issue 10. Each `stella` command runs as a real process under a subprocess timeout far below what the
template would take without the render's budget (forever): `reconcile --once`, `plan` and `why` finish
within seconds, the other environment's promotion is decided, and the problem names the template.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.cli import STELLA
from tests.support.pipeline import Workspace, example_workspace, promotion
from tests.support.repos import commit_all, write_files

TEMPLATE = "templates/loop.compose.yml.j2"
QA = "shop-1.4.0--qa"
DEV = "shop-1.4.0--dev"
TIMEOUT = 30
"""Seconds a command may take here: without the budget the template below runs for ever."""

NESTED_LOOPS = """\
services:
{# ten billion iterations, each doing nothing: a step each all the same #}
{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}
"""

SLOW_STEPS = """\
services:
{% set big = 'x' * 1000000 %}
{% for i in range(100000) %}{% if big.count('y') %}{% endif %}{% endfor %}
"""


def _environment(name: str) -> str:
    return (
        f"apiVersion: stella/v1\nkind: Environment\nname: {name}\ntemplate: {TEMPLATE}\n"
        "variables: {LOG_LEVEL: info}\n"
    )


def _workspace(tmp_path: Path, template: str) -> Workspace:
    """The example repository (dev promoted) plus environment qa rendered by `template`, also promoted.

    Both are committed before the first pass, so that its genesis ratifies them (docs/governance.md).
    """
    ws = example_workspace(tmp_path)
    write_files(
        ws.root,
        {
            TEMPLATE: template,
            "environments/qa.yaml": _environment("qa"),
            f"promotions/{QA}.yaml": promotion("shop-1.4.0", "qa"),
        },
    )
    commit_all(ws.root, "qa renders with a template that never ends")
    return ws


def _run(ws: Workspace, *args: str, env: dict[str, str] | None = None) -> tuple[int, Any, float]:
    """`stella ARGS -o json` in a real process that must finish within TIMEOUT seconds."""
    started = time.monotonic()
    done = subprocess.run(
        [STELLA, *args, "-o", "json", "--repo", str(ws.root)],
        env={**os.environ, **ws.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return done.returncode, json.loads(done.stdout), time.monotonic() - started


def _decisions(out: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {d["promotion"]: (d["decision"], d["problem"]) for d in out["decisions"]}


def test_a_template_that_loops_for_ever_holds_up_only_its_promotion(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, NESTED_LOOPS)
    problem = f"{TEMPLATE}:3: rendering took more than 1000000 steps (the budget of a template)"

    code, out, elapsed = _run(ws, "plan")
    assert (code, _decisions(out)) == (2, {DEV: ("allow", None), QA: ("error", problem)})
    assert elapsed < TIMEOUT

    code, out, elapsed = _run(ws, "reconcile", "--once")
    assert code == 2
    assert _decisions(out) == {DEV: ("allow", None), QA: ("error", problem)}
    assert out["problems"] == [{"file": f"promotions/{QA}.yaml", "line": None, "message": problem}]
    assert out["evidenceCommit"] is not None  # dev's decision is recorded, in the pass's one commit
    dev = next(d for d in out["decisions"] if d["promotion"] == DEV)
    assert dev["evidence"] is not None
    assert elapsed < TIMEOUT

    code, out, elapsed = _run(ws, "why", QA)
    assert (code, out["recorded"], out["decision"], out["problem"]) == (1, False, "error", problem)
    assert elapsed < TIMEOUT

    code, out, elapsed = _run(ws, "reconcile", "--once")  # still open, still refused; dev stays decided
    assert (code, _decisions(out), out["evidenceCommit"]) == (2, {QA: ("error", problem)}, None)


def test_render_timeout_is_read_from_the_environment(tmp_path: Path) -> None:
    """Steps slow in themselves are stopped by the clock: `STELLA_RENDER_TIMEOUT` seconds of it."""
    ws = _workspace(tmp_path, SLOW_STEPS)
    problem = f"{TEMPLATE}:3: rendering took longer than 0.25 s (the budget of a template)"
    code, out, elapsed = _run(ws, "reconcile", "--once", env={"STELLA_RENDER_TIMEOUT": "0.25"})
    assert (code, _decisions(out)) == (2, {DEV: ("allow", None), QA: ("error", problem)})
    assert elapsed < TIMEOUT
