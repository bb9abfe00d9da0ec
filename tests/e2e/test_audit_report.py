"""`stella audit report DIR`: a static HTML report, rendered by headless Chromium and checked in its DOM.

The branch: dev has two records (shop-1.4.0, then shop-1.3.0 requested with a `<script>` reason), qa has
one; dev's first record is then edited on the evidence branch. Chromium (Debian `chromium`) loads the
written files from disk, takes a screenshot and dumps the DOM it built; the assertions read that DOM.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from reconciler.evidence import canonical
from reconciler.sign import key_hint, load_private_key
from tests.support.pipeline import (
    RELEASE_130,
    Workspace,
    change_evidence,
    decision_records,
    example_workspace,
    promotion,
)
from tests.support.repos import commit_all, write_files

SCRIPT_REASON = "<script>alert(1)</script>"
QA = "apiVersion: stella/v1\nkind: Environment\nname: qa\n"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


# --- a DOM from Chromium's --dump-dom, with just enough querying ---------------------------------


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        """textContent, with whitespace collapsed."""
        return " ".join(self._raw().split())

    def _raw(self) -> str:
        return "".join(c if isinstance(c, str) else c._raw() for c in self.children)

    def all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        """Every descendant element with that tag and/or class, in document order."""
        found = []
        for child in self.children:
            if isinstance(child, Node):
                if (tag is None or child.tag == tag) and (cls is None or cls in child.classes):
                    found.append(child)
                found.extend(child.all(tag, cls))
        return found

    def one(self, tag: str | None = None, cls: str | None = None) -> Node:
        (found,) = self.all(tag, cls)
        return found

    def by_id(self, ident: str) -> Node:
        (found,) = [n for n in self.all() if n.attrs.get("id") == ident]
        return found


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


# --- headless Chromium ---------------------------------------------------------------------------


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: run make setup (Debian package `chromium`)", pytrace=False)
    return path


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with a new empty profile, as the machine notes require."""
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    profile.mkdir()
    done = subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def rendered(tmp_path: Path, page: Path) -> Node:
    return parse(chromium(tmp_path, "--dump-dom", page.as_uri()).stdout)


# --- the branch ----------------------------------------------------------------------------------


@dataclass
class Branch:
    ws: Workspace
    dev_first: str
    dev_second: str
    qa: str


def _record(ws: Workspace, environment: str, release: str) -> str:
    for path in decision_records(ws):
        predicate = json.loads(ws.show(path))["predicate"]
        if (predicate["environment"], predicate["release"]["name"]) == (environment, release):
            return path.removeprefix("evidence/").removesuffix(".json")
    raise AssertionError(f"no record of {release} in {environment}")


def build_branch(tmp_path: Path) -> Branch:
    """dev: shop-1.4.0 then shop-1.3.0 (reason: a script tag); qa: shop-1.4.0; dev's first record edited."""
    ws = example_workspace(tmp_path)
    write_files(ws.root, {"environments/qa.yaml": QA})
    commit_all(ws.root, "add qa (the first pass ratifies it with the rest of the policy)")
    assert ws.stella("reconcile", "--once").code == 0
    write_files(
        ws.root,
        {
            "releases/shop-1.3.0.yaml": RELEASE_130,
            "promotions/shop-1.4.0--qa.yaml": promotion("shop-1.4.0", "qa"),
        },
    )
    commit_all(ws.root, "release shop-1.3.0, request shop-1.4.0 in qa")
    promoted = ws.stella("promote", "shop-1.3.0", "--to", "dev", "--reason", SCRIPT_REASON)
    assert promoted.code == 0, promoted.err
    ws.git("merge", "--no-ff", "-q", "-m", "Merge promote/shop-1.3.0--dev", "promote/shop-1.3.0--dev")
    run = ws.stella("reconcile", "--once", "-o", "json")
    assert run.code == 0, run.err
    assert {d["promotion"]: d["decision"] for d in run.json()["decisions"]} == {
        "shop-1.3.0--dev": "allow",
        "shop-1.4.0--qa": "allow",
    }
    found = Branch(
        ws,
        _record(ws, "dev", "shop-1.4.0"),
        _record(ws, "dev", "shop-1.3.0"),
        _record(ws, "qa", "shop-1.4.0"),
    )
    # Tamper: turn dev's first decision into a deny after the fact.
    path = f"evidence/{found.dev_first}.json"
    statement = json.loads(ws.show(path))
    statement["predicate"]["decision"]["result"] = "deny"
    change_evidence(ws, {path: canonical(statement)}, "edit a statement")
    return found


def test_report_renders_every_record_and_highlights_tampering(tmp_path: Path) -> None:
    _chromium()  # fails (never skips) at once when Chromium is missing
    branch = build_branch(tmp_path)
    ws = branch.ws
    out = tmp_path / "report"
    run = ws.stella("audit", "report", out, "-o", "json")
    assert run.code == 1, run.err  # findings: the report is written and the exit code says so
    result = run.json()
    index_path = out / "index.html"
    assert result["index"] == str(index_path.resolve())
    assert result["pages"] == [str((out / "env-dev.html").resolve()), str((out / "env-qa.html").resolve())]
    verify = ws.stella("audit", "verify", "-o", "json").json()
    assert result["findings"] == len(verify["findings"]) > 0
    text = ws.stella("audit", "report", out)
    assert (text.code, text.out.strip()) == (1, str(index_path.resolve()))

    screenshot = tmp_path / "index.png"
    chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1280,2000", index_path.as_uri())
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1280, 2000)
    assert len(png) > 20_000, len(png)  # a rendered page, not a blank one
    dev_shot = tmp_path / "env-dev.png"
    chromium(tmp_path, f"--screenshot={dev_shot}", "--window-size=1280,2000", (out / "env-dev.html").as_uri())
    assert dev_shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    first, second, qa = branch.dev_first, branch.dev_second, branch.qa

    # index.html: findings at the top, each linked to the record it concerns; both environments listed.
    index = rendered(tmp_path, index_path)
    assert index.all("script") == []
    assert 'content: ""' in index.one("style").text()  # the inline CSS is not escaped into nonsense
    assert [m.attrs.get("http-equiv") for m in index.all("meta") if "http-equiv" in m.attrs] == [
        "Content-Security-Policy"
    ]
    findings = index.by_id("findings")
    assert "findings-summary" in findings.classes
    items = findings.all("li", "finding")
    assert [(i.attrs["data-file"], i.one("span", "finding-message").text()) for i in items] == [
        (f["file"], f["message"]) for f in verify["findings"]
    ]
    statement_finding = next(i for i in items if i.attrs["data-file"] == f"evidence/{first}.json")
    assert [a.attrs["href"] for a in statement_finding.all("a", "finding-record")] == [
        f"env-dev.html#r-{first}"
    ]
    rows = index.by_id("environments").all("tr", "environment-row")
    assert [
        (
            r.attrs["data-environment"],
            r.one("td", "current-release").text(),
            r.one("td", "record-count").text(),
        )
        for r in rows
    ] == [("dev", "shop-1.3.0", "2"), ("qa", "shop-1.4.0", "1")]
    assert [r.one("td", "flagged-count").text() for r in rows] == ["1", "0"]
    assert "flagged" in rows[0].classes and "flagged" not in rows[1].classes

    # env-dev.html: the timeline, newest first, chained, with the tampered record highlighted.
    dev = rendered(tmp_path, out / "env-dev.html")
    assert dev.all("script") == []
    section = dev.by_id("environment")
    assert section.attrs["data-environment"] == "dev"
    assert section.one(cls="current").one("dd", "current-release").text() == "shop-1.3.0"
    records = section.one("ol", "timeline").all("li", "record")
    assert [(r.attrs["id"], r.attrs["data-position"]) for r in records] == [
        (f"r-{second}", "1"),
        (f"r-{first}", "2"),
    ]
    newest, oldest = records

    assert "flagged" in oldest.classes and "flagged" not in newest.classes
    flagged = oldest.one("div", "record-findings").all("li", "finding")
    messages = {(f.attrs["data-file"], f.one("span", "finding-message").text()) for f in flagged}
    assert (f"evidence/{first}.json", "changed after it was written") in messages
    assert any(file == f"evidence/{first}.sigstore.json" for file, _ in messages)
    assert newest.all("div", "record-findings") == []
    assert oldest.one(cls="result").text() == "deny"  # shown as stored, flagged as tampered

    assert newest.one("a", "chain-previous").attrs["href"] == f"#r-{first}"
    assert oldest.one("a", "chain-next").attrs["href"] == f"#r-{second}"
    assert oldest.all(cls="chain-root") and newest.all("a", "chain-next") == []

    # why: the decision, the reason as text (escaped, never a script), every gate with status and reason
    assert newest.one(cls="result").text() == "allow"
    assert newest.one("p", "promotion-reason").text() == SCRIPT_REASON
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in (out / "env-dev.html").read_text()
    gates = [
        (
            g.one("td", "gate-name").text(),
            g.one("td", "gate-status").text(),
            g.one("td", "gate-reason").text(),
        )
        for g in newest.one("table", "gates").all("tr", "gate")
    ]
    assert gates == [
        ("environment-order", "pass", "no-prior-environment"),
        ("freeze-window", "pass", "not-frozen"),
        ("approvals", "pass", "no-approvals-required"),
        ("quota", "pass", "no-limit"),
    ]
    assert all("status-pass" in g.classes for g in newest.one("table", "gates").all("tr", "gate"))

    # who: the requester (unverified: signatures are not checked yet) by the commit that added the file
    requester_commit = ws.git("log", "-1", "--format=%H", "promote/shop-1.3.0--dev")
    requester = newest.one("tr", "requester")
    assert requester.one("td", "actor-identity").text() == "unknown"
    assert "verified-no" in requester.one("td", "actor-verified").classes
    assert requester.one("td", "actor-verified").text().startswith("not verified")
    assert requester.one("td", "actor-commit").one("code").text() == requester_commit
    assert newest.all("tr", "approver") == [] and newest.all("tr", "no-approvers")

    # what, how, when
    lock = json.loads(ws.show("releases/shop-1.3.0.json"))
    assert newest.one("code", "release-id").text() == lock["id"]
    assert [tuple(td.text() for td in row.all("td")) for row in newest.all("tr", "component")] == [
        (name, f"{c['image']}:{c['tag']}", c["digest"]) for name, c in sorted(lock["components"].items())
    ]
    predicate = json.loads(ws.show(f"evidence/{second}.json"))["predicate"]
    assert newest.one("code", "artifact").text() == "sha256:" + predicate["artifacts"][0]["sha256"]
    assert newest.one("code", "inputs").text() == "sha256:" + predicate["inputs"]["sha256"]
    assert newest.one("code", "key-hint").text() == key_hint(load_private_key(ws.key).public_key())
    assert newest.one("dd", "time-requested").text() == predicate["requestedAt"]
    assert newest.one("dd", "time-decided").text() == predicate["decidedAt"]

    # env-qa.html: one untouched record, its own chain
    qa_page = rendered(tmp_path, out / "env-qa.html")
    (only,) = qa_page.by_id("environment").all("li", "record")
    assert only.attrs["id"] == f"r-{qa}" and "flagged" not in only.classes
    assert only.all(cls="chain-root")


def test_report_is_deterministic_and_clean_branch_exits_0(tmp_path: Path) -> None:
    ws = example_workspace(tmp_path)
    assert ws.stella("reconcile", "--once").code == 0
    first, second = tmp_path / "a", tmp_path / "b"
    runs = [ws.stella("audit", "report", d, "-o", "json") for d in (first, second)]
    assert [(r.code, r.json()["findings"]) for r in runs] == [(0, 0), (0, 0)]
    names = sorted(p.name for p in first.iterdir())
    assert names == ["env-dev.html", "index.html"] == sorted(p.name for p in second.iterdir())
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in names)
    index = parse((first / "index.html").read_text())
    assert index.by_id("no-findings") and index.all(cls="findings-summary") == []
