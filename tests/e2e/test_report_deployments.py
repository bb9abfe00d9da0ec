"""`stella audit report` covers deployments: each environment page has a section per target (what its
pointer says it runs, its deployment records newest first, with result, decision, steps, containers and
duration), and the index lists each environment's targets with their state.

End to end: a site with one target (as tests/e2e/test_agent.py builds it), reconciled, deployed once by
`stella agent` on a private dockerd, then reported and read in headless Chromium's DOM; then the
record is edited on the branch (flagged, and its `<script>` shown as text). A hostile record that
verifies cannot be made here (the agent's key signs only what the agent saw), so every hostile field
is checked one level down too: the view builders given a hand-made record, rendered by the report's
own templates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reconciler.evidence import canonical
from reconciler.ledger import target_chain
from reconciler.report.deployments import deployment_view, duration
from reconciler.report.pages import template_environment
from reconciler.report.values import target_anchor
from tests.e2e.test_agent import engine, make_site  # noqa: F401 (engine: the fixture)
from tests.e2e.test_audit_report import parse, rendered
from tests.support.dockerd import DockerDaemon
from tests.support.pipeline import Workspace, change_evidence
from tests.support.registry import RegistryServer

HOSTILE = "<script>alert(1)</script>"


@pytest.mark.registry
def test_the_report_shows_each_targets_deployments_and_what_it_runs(
    tmp_path: Path,
    registry: RegistryServer,
    engine: DockerDaemon,  # noqa: F811
) -> None:
    site, image = make_site(tmp_path, registry, engine)
    passed = site.reconcile()
    genesis = str(passed["ratification"])
    made = passed["decisions"]
    assert isinstance(made, list)
    (outcome,) = made
    run = site.agent(genesis)
    assert run.code == 0, run.out + run.err
    deployment = json.loads(run.out)["deployment"]
    dep_hex, decision_hex = deployment.removeprefix("sha256:"), outcome["evidence"].removeprefix("sha256:")
    predicate = json.loads(site.show(f"evidence/{dep_hex}.json"))["predicate"]

    out = tmp_path / "report"
    report = site.stella("audit", "report", out, "-o", "json")
    assert report.code == 0, report.out + report.err
    assert json.loads(report.out)["findings"] == 0

    page = rendered(tmp_path, out / "env-dev.html")
    assert page.all("script") == []
    # the decision timeline holds the decision only; the deployment is in its target's section
    decisions = page.by_id("environment").one("ol", "timeline").all("li", "record")
    assert [r.attrs["id"] for r in decisions] == [f"r-{decision_hex}"]
    (target,) = page.by_id("targets").all("section", "target")
    assert (target.attrs["id"], target.attrs["data-target"]) == ("t-web-1", "web-1")
    assert target.one("span", "target-state").text() == "succeeded"

    # what the pointer says it runs
    runs = target.one("section", "target-current")
    assert runs.one("dd", "target-release").text() == f"shop-1.0 {predicate['release']['id']}"
    assert runs.one("dd", "target-decision").one("a").attrs["href"] == f"#r-{decision_hex}"
    assert runs.one("dd", "target-deployment").one("a").attrs["href"] == f"#r-{dep_hex}"
    assert runs.one("dd", "target-deployed-at").text() == predicate["completedAt"]

    # the deployment record: result, decision carried out, release, times and duration
    (record,) = target.one("ol", "deployment-timeline").all("li", "record")
    assert record.attrs["id"] == f"r-{dep_hex}"
    assert {"deployment", "result-succeeded"} <= record.classes and "flagged" not in record.classes
    assert record.one(cls="result").text() == "succeeded"
    assert record.one("p", "deployment-result").text() == "result succeeded"
    assert record.one("dd", "deployment-decision").one("a").attrs["href"] == f"#r-{decision_hex}"
    assert record.one("dd", "deployment-release").text() == f"shop-1.0 {predicate['release']['id']}"
    assert record.one("dd", "time-started").text() == predicate["startedAt"]
    assert record.one("dd", "time-completed").text() == predicate["completedAt"]
    expected = duration(predicate["startedAt"], predicate["completedAt"])
    assert expected.endswith("s") and record.one("dd", "deployment-duration").text() == expected
    assert record.all(cls="chain-root")

    # every step: stage, command, exit code, duration, and its output collapsed
    steps = record.one("table", "steps").all("tr", "step")
    assert [
        (
            s.one("td", "step-stage").text(),
            s.one("td", "step-exit").text(),
            s.one("td", "step-duration").text(),
        )
        for s in steps
    ] == [(s["stage"], "0", duration(s["startedAt"], s["completedAt"])) for s in predicate["steps"]]
    assert [s["stage"] for s in predicate["steps"]] == ["pull", "up", "inspect"]
    assert [s.one("td", "step-command").one("code").text() for s in steps] == [
        " ".join(s["command"].split()) for s in predicate["steps"]
    ]
    outputs = [s.one("details", "step-output") for s in steps]
    assert all("open" not in d.attrs for d in outputs)
    assert outputs[-1].one("pre").text() == " ".join(predicate["steps"][-1]["output"].split())
    # the containers seen
    assert [
        (c.one("td", "container-service").text(), c.one("td", "container-digest").text())
        for c in record.one("table", "containers").all("tr", "container")
    ] == [("web", image.partition("@")[2])]

    # the index: the environment's targets with the state of each
    index = parse((out / "index.html").read_text())
    (row,) = index.by_id("targets").all("tr", "target-row")
    assert (row.attrs["data-environment"], row.attrs["data-target"]) == ("dev", "web-1")
    assert row.one("a", "target-link").attrs["href"] == "env-dev.html#t-web-1"
    assert row.one("td", "target-state").text() == "succeeded"
    assert row.one("td", "target-state").one("a").attrs["href"] == f"env-dev.html#r-{dep_hex}"
    assert row.one("td", "target-running").text() == "shop-1.0"
    assert row.one("td", "target-count").text() == "1"
    env_row = index.by_id("environments").one("tr", "environment-row")
    assert env_row.one("td", "record-count").text() == "1"  # decisions; deployments are per target

    # someone with push access edits the record: it is flagged, and what it says is shown as text
    statement = json.loads(site.show(f"evidence/{dep_hex}.json"))
    statement["predicate"]["steps"][0]["output"] = HOSTILE
    statement["predicate"]["reason"] = HOSTILE
    ws = Workspace(site.root, site.evidence_key)
    change_evidence(ws, {f"evidence/{dep_hex}.json": canonical(statement)}, "edit a deployment record")
    tampered = tmp_path / "tampered"
    assert site.stella("audit", "report", tampered).code == 1
    page = rendered(tmp_path, tampered / "env-dev.html")
    assert page.all("script") == []
    record = page.by_id("targets").one("li", "record")
    assert "flagged" in record.classes
    files = [f.attrs["data-file"] for f in record.one("div", "record-findings").all("li", "finding")]
    assert f"evidence/{dep_hex}.json" in files
    assert record.one("span", "deployment-reason").text() == HOSTILE
    assert record.all("details", "step-output")[0].one("pre").text() == HOSTILE
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in (tampered / "env-dev.html").read_text()
    index = parse((tampered / "index.html").read_text())
    assert index.by_id("targets").one("td", "target-flagged").text() == "1"


def _hostile_record() -> dict[str, Any]:
    return {
        "predicate": {
            "type": f"deployment{HOSTILE}",
            "environment": "dev",
            "target": {"name": HOSTILE, "project": HOSTILE, "agent": "docker"},
            "decision": "sha256:" + "a" * 64,
            "release": {"id": "sha256:" + "b" * 64, "name": HOSTILE},
            "result": f"failed{HOSTILE}",
            "reason": f"compose up failed: {HOSTILE}",
            "steps": [
                {
                    "stage": HOSTILE,
                    "command": f"docker compose up {HOSTILE}",
                    "exitCode": 1,
                    "output": f"line one\n{HOSTILE}\n",
                    "startedAt": "2026-12-04T10:00:00Z",
                    "completedAt": "2026-12-04T10:01:05Z",
                },
                "not a step",
            ],
            "containers": [{"service": HOSTILE, "container": HOSTILE, "image": HOSTILE, "digest": HOSTILE}],
            "startedAt": "2026-12-04T10:00:00Z",
            "completedAt": "2026-12-04T11:02:03Z",
        }
    }


def test_hostile_deployment_values_are_text_never_markup() -> None:
    view = deployment_view("c" * 64, _hostile_record(), "dev", entries={})
    assert (view["result"], view["result_class"], view["type_class"]) == (
        f"failed{HOSTILE}",
        "other",
        "other",
    )  # odd values are shown as stored, never used as a class
    assert view["decision"] == {"id": "sha256:" + "a" * 64, "href": None}  # not on the branch: no link
    assert view["duration"] == "1h 02m 03s"
    (step,) = view["steps"]
    assert (step["exit_code"], step["exit_class"], step["duration"], step["lines"]) == (
        "1",
        "bad",
        "1m 05s",
        2,
    )
    anchor = target_anchor(HOSTILE)
    assert anchor.startswith("t--") and "<" not in anchor
    shown = {**view, "position": 1, "hint": {"kind": "missing", "value": ""}, "previous": None, "next": []}
    shown["findings"] = []
    target = {
        "name": HOSTILE,
        "chain": target_chain("dev", HOSTILE),
        "anchor": anchor,
        "state": view["result"],
        "state_class": "other",
        "flagged": 0,
        "findings": [],
        "pointer": {"readable": False},
        "deployments": iter([shown]),
    }
    html = template_environment().get_template("targets.html.j2").render(targets=[target])
    assert "<script" not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 10
    dom = parse(html)
    (record,) = dom.all("li", "record")
    assert record.one("span", "deployment-reason").text() == f"compose up failed: {HOSTILE}"
    assert record.one("details", "step-output").one("pre").text() == f"line one {HOSTILE}"
    assert record.one("td", "step-stage").text() == HOSTILE
    assert {"result-other", "type-other"} <= record.classes
    assert dom.one("section", "target").attrs["id"] == anchor


@pytest.mark.parametrize(
    ("started", "completed", "expected"),
    [
        ("2026-12-04T10:00:00Z", "2026-12-04T10:00:00Z", "0s"),
        ("2026-12-04T10:00:00Z", "2026-12-04T10:00:59Z", "59s"),
        ("2026-12-04T10:00:00Z", "2026-12-04T10:01:00Z", "1m 00s"),
        ("2026-12-04T10:00:00Z", "2026-12-04T12:00:07Z", "2h 00m 07s"),
        ("2026-12-04T10:00:05Z", "2026-12-04T10:00:00Z", "-5s"),
        ("2026-12-04T10:00:00+01:00", "2026-12-04T09:00:03Z", "3s"),
        ("2026-12-04T10:00:00", "2026-12-04T10:00:03", ""),
        ("2026-12-04T10:00:00", "2026-12-04T10:00:03Z", ""),
        ("yesterday", "2026-12-04T10:00:00Z", ""),
        ("", "", ""),
    ],
    ids=["zero", "seconds", "minute", "hours", "negative", "offsets", "naive", "mixed", "garbage", "empty"],
)
def test_duration(started: str, completed: str, expected: str) -> None:
    assert duration(started, completed) == expected
