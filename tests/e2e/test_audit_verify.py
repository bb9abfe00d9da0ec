"""`stella audit verify` finds each kind of tampering and names the file, with a stable check code; the
untouched branch is OK. `stella audit export` writes a packet that verifies in an empty directory with
no network and no repository (with stella, and with sigstore-js as its README says); a changed packet
is caught. A checkpoint catches a history rewrite that a fresh clone cannot see.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler import audit
from reconciler.evidence import canonical, release_id, sha256_hex
from reconciler.repo import Repo
from reconciler.sign import KeySigner, generate_key, key_hint, load_private_key, load_public_key
from tests.support.cli import STELLA, Run
from tests.support.pipeline import (
    RELEASE_130,
    Workspace,
    change_evidence,
    decision_records,
    example_workspace,
    promotion,
)
from tests.support.repos import commit_all, write_files

REF = "refs/heads/stella/evidence"
JS = Path(__file__).resolve().parents[1] / "js"


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """Two allowed decisions in dev (a chain of two records) on a copy of example-repo/."""
    ws = example_workspace(tmp_path)
    assert ws.stella("reconcile", "--once").code == 0
    write_files(
        ws.root,
        {
            "releases/shop-1.3.0.yaml": RELEASE_130,
            "promotions/shop-1.3.0--dev.yaml": promotion("shop-1.3.0", "dev"),
        },
    )
    commit_all(ws.root, "request shop-1.3.0 in dev")
    assert ws.stella("reconcile", "--once").code == 0
    return ws


def _records(ws: Workspace) -> list[str]:
    """Statement paths, oldest first (by chain order)."""
    paths = decision_records(ws)
    first = next(p for p in paths if json.loads(ws.show(p))["predicate"]["previous"] is None)
    return [first] + [p for p in paths if p != first]


def test_untouched_branch_verifies(ws: Workspace) -> None:
    run = ws.stella("audit", "verify", "-o", "json")
    assert run.code == 0, run.out
    report = run.json()
    # two decisions and the genesis ratification of the policy
    assert (report["ok"], report["records"], report["bundles"], report["findings"]) == (True, 3, 3, [])


def _edit_statement(ws: Workspace) -> str:
    path = _records(ws)[0]
    data = json.loads(ws.show(path))
    data["predicate"]["decision"]["result"] = "deny"
    change_evidence(ws, {path: canonical(data)}, "edit a statement")
    return path


def _unknown_key(ws: Workspace) -> str:
    """A record continuing dev's chain, signed by a key no policy holds (the reconciler refuses to)."""
    other = ws.root.parent / "other.pem"
    generate_key(other)
    data = json.loads(ws.show(_records(ws)[1]))
    data["predicate"]["previous"] = "sha256:" + _records(ws)[1].removeprefix("evidence/").removesuffix(
        ".json"
    )
    data["predicate"]["decidedAt"] = "2030-01-01T00:00:00Z"
    statement = canonical(data)
    hex_id = sha256_hex(statement)
    signer = KeySigner(load_private_key(other))
    change_evidence(
        ws,
        {f"evidence/{hex_id}.json": statement, f"evidence/{hex_id}.sigstore.json": signer.sign(statement)},
        "add a record signed by a key the policy does not hold",
    )
    return f"evidence/{hex_id}.sigstore.json"


def _delete_record(ws: Workspace) -> str:
    path = _records(ws)[1]
    change_evidence(ws, {path: None}, "delete a record")
    return path


def _chain_elsewhere(ws: Workspace) -> str:
    data = json.loads(ws.show(_records(ws)[1]))
    data["predicate"]["previous"] = "sha256:" + "0" * 64
    data["predicate"]["decidedAt"] = "2030-01-01T00:00:00Z"
    statement = canonical(data)
    hex_id = sha256_hex(statement)
    signer = KeySigner(load_private_key(ws.key))
    change_evidence(
        ws,
        {f"evidence/{hex_id}.json": statement, f"evidence/{hex_id}.sigstore.json": signer.sign(statement)},
        "add a record whose chain link points elsewhere",
    )
    return f"evidence/{hex_id}.json"


def _second_start(ws: Workspace) -> str:
    """A well-signed record that starts dev's chain over (previous: null): no link is broken."""
    data = json.loads(ws.show(_records(ws)[0]))
    data["predicate"]["decidedAt"] = "2030-01-01T00:00:00Z"
    statement = canonical(data)
    hex_id = sha256_hex(statement)
    signer = KeySigner(load_private_key(ws.key))
    change_evidence(
        ws,
        {f"evidence/{hex_id}.json": statement, f"evidence/{hex_id}.sigstore.json": signer.sign(statement)},
        "add a record that starts dev's chain again",
    )
    return f"evidence/{hex_id}.json"


def _rewrite(ws: Workspace) -> str:
    parent = ws.git("rev-parse", "refs/heads/stella/evidence~1")
    ws.git("update-ref", "-m", "rewrite", "refs/heads/stella/evidence", parent)
    return "refs/heads/stella/evidence"


def _delete_inputs(ws: Workspace) -> str:
    path = _records(ws)[0]
    inputs = json.loads(ws.show(path))["predicate"]["inputs"]["sha256"]
    change_evidence(ws, {f"inputs/{inputs}.json": None}, "delete an inputs file")
    return path


def _delete_artifact(ws: Workspace) -> str:
    path = _records(ws)[1]
    (artifact,) = json.loads(ws.show(path))["predicate"]["artifacts"]
    change_evidence(ws, {f"artifacts/{artifact['sha256']}/{artifact['name']}": None}, "delete an artifact")
    return path


def _move_pointer(ws: Workspace) -> str:
    path = "environments/dev/stella.version.json"
    pointer = json.loads(ws.show(path))
    pointer["head"] = "sha256:" + _records(ws)[0].removeprefix("evidence/").removesuffix(".json")
    change_evidence(ws, {path: canonical(pointer)}, "point dev back at its first record")
    return path


def _edit_lock(ws: Workspace) -> str:
    path = "releases/shop-1.3.0.json"
    lock = json.loads(ws.show(path))
    lock["components"]["web"]["digest"] = "sha256:" + "e" * 64
    change_evidence(ws, {path: canonical(lock)}, "swap a digest in a release lock")
    return path


# case: (tamper, message of the finding naming the returned file, its check, every check reported)
CASES: dict[str, tuple[Callable[[Workspace], str], str, str, set[str]]] = {
    "statement-edited": (
        _edit_statement,
        "changed after it was written",
        "history",
        {"history", "hash", "signature"},
    ),
    "unknown-key": (_unknown_key, "verifies with none of the", "signature", {"signature", "pointer"}),
    "record-deleted": (  # its inputs and artifact stay, named by no record
        _delete_record,
        "deleted from the evidence branch",
        "history",
        {"history", "pointer", "signature", "unreferenced"},
    ),
    # both copy a record that verifies: a second decision of its promotion
    "chain-link-elsewhere": (
        _chain_elsewhere,
        "chain link points to sha256:0000",
        "chain",
        {"chain", "duplicate"},
    ),
    "second-chain-start": (_second_start, "a second head of dev's chain", "chain", {"chain", "duplicate"}),
    "branch-rewritten": (_rewrite, "not a fast-forward", "reflog", {"reflog"}),
    "inputs-deleted": (_delete_inputs, "its inputs file inputs/", "inputs", {"history", "inputs"}),
    "artifact-deleted": (
        _delete_artifact,
        "artifact compose.stella.lock.yml",
        "artifact",
        {"history", "artifact"},
    ),
    "pointer-moved": (_move_pointer, "not the head of the chain", "pointer", {"pointer"}),
    "lock-edited": (
        _edit_lock,
        "release id does not match the release's name and digests",
        "lock",
        {"history", "lock"},
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_tampering_is_found(
    ws: Workspace, case: tuple[Callable[[Workspace], str], str, str, set[str]]
) -> None:
    tamper, expected, check, checks = case
    path = tamper(ws)
    run = ws.stella("audit", "verify", "-o", "json")
    assert run.code == 1, run.out
    findings = run.json()["findings"]
    assert any(f["file"] == path and expected in f["message"] and f["check"] == check for f in findings), (
        findings
    )
    assert {f["check"] for f in findings} == checks, findings
    assert all(set(f) == {"file", "message", "commit", "check"} for f in findings)
    assert [(f["file"], f["message"]) for f in findings] == sorted(
        (f["file"], f["message"]) for f in findings
    )
    text = ws.stella("audit", "verify")
    assert text.code == 1 and f"FAIL {path}" in text.out


def test_worker_processes_find_what_one_process_finds(ws: Workspace) -> None:
    _edit_statement(ws)
    _delete_artifact(ws)
    repo = Repo(ws.root)
    keys = audit.load_keys(repo, "main")
    seen: list[tuple[int, int]] = []
    serial = audit.verify(repo, REF, keys, workers=0)
    parallel = audit.verify(repo, REF, keys, lambda done, total: seen.append((done, total)), workers=2)
    assert parallel == serial
    assert {f.check for f in serial.findings} == {"hash", "history", "signature", "artifact"}
    total = seen[0][1]
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


# --- pointers, stray files, duplicates, unreadable keys (each an attack first) ---------------------

POINTER = "environments/dev/stella.version.json"
PRIVILEGED = (
    b"services:\n  web:\n    image: registry.example.com/shop/web@sha256:" + b"e" * 64 + b"\n"
    b"    privileged: true\n    volumes: ['/var/run/docker.sock:/var/run/docker.sock']\n"
)


def _id(path: str) -> str:
    return "sha256:" + path.removeprefix("evidence/").removesuffix(".json")


def _edit_pointer(ws: Workspace, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """dev's pointer, edited."""
    pointer = json.loads(ws.show(POINTER))
    edit(pointer)
    return canonical(pointer)


def _reaim(ws: Workspace) -> dict[str, bytes | None]:
    """Aim dev's pointer at a lock that runs a privileged container, under another release name."""
    sha = sha256_hex(PRIVILEGED)

    def edit(pointer: dict[str, Any]) -> None:
        pointer["current"]["artifacts"] = {"compose.stella.lock.yml": sha}
        pointer["current"]["release"] = "shop-1.3.0-hotfix"

    return {POINTER: _edit_pointer(ws, edit), f"artifacts/{sha}/compose.stella.lock.yml": PRIVILEGED}


def _set(field: str, value: object, top: bool = False) -> Callable[[Workspace], dict[str, bytes | None]]:
    def tamper(ws: Workspace) -> dict[str, bytes | None]:
        def edit(pointer: dict[str, Any]) -> None:
            (pointer if top else pointer["current"])[field] = value

        return {POINTER: _edit_pointer(ws, edit)}

    return tamper


def _pointer_without_records(ws: Workspace) -> dict[str, bytes | None]:
    """A pointer for prod, where nothing was decided: an agent there would run dev's lock."""
    return {
        "environments/prod/stella.version.json": _edit_pointer(ws, lambda p: p.update(environment="prod"))
    }


# case: (tamper, [(file, check)] of every finding, a fragment of the pointer finding's message)
POINTER_CASES: dict[
    str, tuple[Callable[[Workspace], dict[str, bytes | None]], list[tuple[str, str]], str]
] = {
    "artifacts-reaimed-and-release-renamed": (
        _reaim,
        [
            (f"artifacts/{sha256_hex(PRIVILEGED)}/compose.stella.lock.yml", "unreferenced"),
            (POINTER, "pointer"),
        ],
        f"artifacts {{'compose.stella.lock.yml': '{sha256_hex(PRIVILEGED)}'}} is not the record's "
        "{'compose.stella.lock.yml': '",
    ),
    "decided-at": (
        _set("decidedAt", "2020-01-01T00:00:00Z"),
        [(POINTER, "pointer")],
        "decidedAt '2020-01-01T00:00:00Z' is not the record's '",
    ),
    "release-id": (
        _set("releaseId", "sha256:" + "f" * 64),
        [(POINTER, "pointer")],
        f"releaseId 'sha256:{'f' * 64}' is not the record's 'sha256:",
    ),
    "field-added-to-current": (
        _set("privileged", True),
        [(POINTER, "pointer")],
        "privileged is not a field of current",
    ),
    "field-added-to-pointer": (
        _set("next", {"release": "shop-9.9.9"}, top=True),
        [(POINTER, "pointer")],
        "has the fields current, environment, head, next, not current, environment, head",
    ),
    "pointer-without-records": (
        _pointer_without_records,
        [("environments/prod/stella.version.json", "pointer")],
        "a pointer for prod, which has no records",
    ),
}


@pytest.mark.parametrize("case", POINTER_CASES.values(), ids=POINTER_CASES.keys())
def test_a_pointer_is_checked_whole_against_the_record_it_names(
    ws: Workspace, case: tuple[Callable[[Workspace], dict[str, bytes | None]], list[tuple[str, str]], str]
) -> None:
    tamper, expected, fragment = case
    change_evidence(ws, tamper(ws), "re-aim a pointer")
    run = ws.stella("audit", "verify", "-o", "json")
    assert run.code == 1, run.out
    findings = run.json()["findings"]
    assert [(f["file"], f["check"]) for f in findings] == expected, findings
    (pointer,) = [f for f in findings if f["check"] == "pointer"]
    assert fragment in pointer["message"], pointer


def test_the_reaimed_pointer_names_each_field_that_differs(ws: Workspace) -> None:
    record = _records(ws)[1]
    predicate = json.loads(ws.show(record))["predicate"]
    (artifact,) = predicate["artifacts"]
    change_evidence(ws, _reaim(ws), "re-aim dev at a privileged lock")
    findings = ws.stella("audit", "verify", "-o", "json").json()["findings"]
    assert [f["message"] for f in findings if f["check"] == "pointer"] == [
        f"current differs from the record it names ({_id(record)}): "
        f"artifacts {{'compose.stella.lock.yml': '{sha256_hex(PRIVILEGED)}'}} is not the record's "
        f"{{'compose.stella.lock.yml': '{artifact['sha256']}'}}; "
        "release 'shop-1.3.0-hotfix' is not the record's 'shop-1.3.0'"
    ]


def _stray_policy(ws: Workspace) -> dict[str, bytes | None]:
    """A stored policy that was never ratified (its one file is a stored policy file)."""
    stored = next(p for p in ws.evidence_files() if p.startswith("policy-files/"))
    manifest = canonical({"stella.yaml": "sha256:" + stored.removeprefix("policy-files/")})
    return {f"policies/{sha256_hex(manifest)}.json": manifest}


STRAY = b"stray\n"
UNREFERENCED_INPUTS = canonical({"kind": "DecisionInputs", "promotionId": "shop-9.9.9--prod"})
# case: (files added, [(file, check, message)] of every finding)
STRAY_CASES: dict[str, tuple[Callable[[Workspace], dict[str, bytes | None]], list[tuple[str, str, str]]]] = {
    "top-level-file": (
        lambda ws: {"notes/rewritten.txt": STRAY, "README": STRAY},
        [
            ("README", "layout", "not part of the evidence branch's layout"),
            ("notes/rewritten.txt", "layout", "not part of the evidence branch's layout"),
        ],
    ),
    "file-beside-a-pointer": (
        lambda ws: {"environments/dev/compose.yml": STRAY, "environments/notes.txt": STRAY},
        [
            (
                "environments/dev/compose.yml",
                "layout",
                "unexpected file in environments/dev/: only stella.version.json",
            ),
            ("environments/notes.txt", "layout", "unexpected file in environments/"),
        ],
    ),
    "file-in-policy": (
        lambda ws: {"policy/next.policy.json": STRAY},
        [("policy/next.policy.json", "layout", "unexpected file in policy/")],
    ),
    "misnamed-policy-file": (
        lambda ws: {"policy-files/keys.pub": STRAY},
        [("policy-files/keys.pub", "layout", "unexpected file in policy-files/")],
    ),
    "unreferenced-inputs": (
        lambda ws: {f"inputs/{sha256_hex(UNREFERENCED_INPUTS)}.json": UNREFERENCED_INPUTS},
        [
            (
                f"inputs/{sha256_hex(UNREFERENCED_INPUTS)}.json",
                "unreferenced",
                "no record names this inputs file",
            )
        ],
    ),
    "unreferenced-artifact": (
        lambda ws: {f"artifacts/{sha256_hex(PRIVILEGED)}/compose.stella.lock.yml": PRIVILEGED},
        [
            (
                f"artifacts/{sha256_hex(PRIVILEGED)}/compose.stella.lock.yml",
                "unreferenced",
                "no record lists this artifact",
            )
        ],
    ),
    "unlisted-policy-file": (
        lambda ws: {f"policy-files/{sha256_hex(STRAY)}": STRAY},
        [(f"policy-files/{sha256_hex(STRAY)}", "unreferenced", "no stored policy lists this file")],
    ),
    "unratified-policy": (
        _stray_policy,
        [("policies/", "unreferenced", "was never ratified on the policy chain")],
    ),
}


@pytest.mark.parametrize("case", STRAY_CASES.values(), ids=STRAY_CASES.keys())
def test_stray_and_unreferenced_files_are_found(
    ws: Workspace, case: tuple[Callable[[Workspace], dict[str, bytes | None]], list[tuple[str, str, str]]]
) -> None:
    add, expected = case
    change_evidence(ws, add(ws), "add a file no record names")
    run = ws.stella("audit", "verify", "-o", "json")
    assert run.code == 1, run.out
    findings = [(f["file"], f["check"], f["message"]) for f in run.json()["findings"]]
    assert len(findings) == len(expected), findings
    for (file, check, message), (want_file, want_check, want_message) in zip(findings, expected, strict=True):
        assert (file.startswith(want_file), check) == (True, want_check), findings
        assert want_message in message, findings


def test_a_release_lock_no_record_names_is_fine(ws: Workspace) -> None:
    """Locks are written when a release is resolved, before (and whether or not) it is decided."""
    lock = json.loads(ws.show("releases/shop-1.3.0.json"))
    lock["name"] = "shop-1.3.1"
    pinned = {c: f"{v['image']}@{v['digest']}" for c, v in lock["components"].items()}
    lock["id"] = release_id("shop-1.3.1", pinned)
    change_evidence(ws, {"releases/shop-1.3.1.json": canonical(lock)}, "a lock written before its decision")
    run = ws.stella("audit", "verify", "-o", "json")
    assert (run.code, run.json()["findings"]) == (0, [])


def test_a_second_decision_for_a_promotion_is_found(ws: Workspace) -> None:
    """A well-signed second record of dev's last promotion, chained and pointed at properly: only the
    promotion being decided twice gives it away."""
    first = _records(ws)[1]
    data = json.loads(ws.show(first))
    decided = data["predicate"]["decidedAt"]
    data["predicate"]["previous"] = _id(first)
    data["predicate"]["decidedAt"] = "2030-01-01T00:00:00Z"
    statement = canonical(data)
    hex_id = sha256_hex(statement)

    def edit(pointer: dict[str, Any]) -> None:
        pointer["head"] = pointer["current"]["evidence"] = f"sha256:{hex_id}"
        pointer["current"]["decidedAt"] = "2030-01-01T00:00:00Z"

    change_evidence(
        ws,
        {
            f"evidence/{hex_id}.json": statement,
            f"evidence/{hex_id}.sigstore.json": KeySigner(load_private_key(ws.key)).sign(statement),
            POINTER: _edit_pointer(ws, edit),
        },
        "decide shop-1.3.0--dev again",
    )
    run = ws.stella("audit", "verify", "-o", "json")
    assert run.code == 1, run.out
    assert [(f["file"], f["message"], f["check"]) for f in run.json()["findings"]] == [
        (
            f"evidence/{hex_id}.json",
            f"a second decision for promotion shop-1.3.0--dev: {_id(first)} decided it first at {decided}",
            "duplicate",
        )
    ]


def test_an_unreadable_key_on_main_is_a_finding_and_the_rest_is_verified(
    ws: Workspace, tmp_path: Path
) -> None:
    """One bad file in trust/evidence-keys/ of main: verify, report, checkpoint and export still run,
    the file is a `key` finding, and the good key still counts (in the packet too)."""
    write_files(ws.root, {"trust/evidence-keys/broken.pub": "not a key\n"})
    commit_all(ws.root, "a broken evidence key")
    run = ws.stella("audit", "verify", "-o", "json")
    assert run.code == 1, run.out + run.err
    report = run.json()
    assert [(f["file"], f["check"]) for f in report["findings"]] == [
        ("trust/evidence-keys/broken.pub", "key")
    ]
    message = report["findings"][0]["message"]
    assert message.startswith("unreadable evidence key on main: not a PEM public key") and message.endswith(
        "; it verifies nothing"
    )
    assert (report["records"], report["bundles"]) == (3, 3)
    assert [k["source"] for k in report["keys"]] == ["trust/evidence-keys/test.pub"]

    written = ws.stella("audit", "report", tmp_path / "report", "-o", "json")
    assert (written.code, written.json()["findings"]) == (1, 1), written.err
    refused = ws.stella("audit", "checkpoint")
    assert refused.code == 1 and "FAIL trust/evidence-keys/broken.pub: unreadable evidence key" in refused.err

    packet = tmp_path / "evidence.tar.gz"
    assert "trust/evidence-keys/broken.pub" in _export(ws, packet)["members"]  # as is
    offline = _offline([STELLA, "audit", "verify", "--packet", str(packet), "-o", "json"], tmp_path)
    assert offline.code == 1, offline.out + offline.err
    findings = offline.json()["findings"]
    assert [(f["file"], f["check"]) for f in findings] == [("trust/evidence-keys/broken.pub", "key")]
    assert [k["source"] for k in offline.json()["keys"]] == ["trust/evidence-keys/test.pub"]


# --- the offline packet ----------------------------------------------------------------------------


def _offline(argv: list[str], cwd: Path) -> Run:
    """Run with no network: in a network namespace of its own where the system allows one, and in any
    case with proxies that lead nowhere and git allowed local files only."""
    isolate = (
        ["unshare", "-rn"]
        if shutil.which("unshare")
        and subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False).returncode == 0
        else []
    )
    env = {
        **os.environ,
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "all_proxy": "http://127.0.0.1:9",
        "GIT_ALLOW_PROTOCOL": "file",
    }
    env.pop("STELLA_REPO", None)
    done = subprocess.run([*isolate, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return Run(done.returncode, done.stdout, done.stderr)


def _export(ws: Workspace, packet: Path) -> dict[str, object]:
    run = ws.stella("audit", "export", packet, "-o", "json")
    assert run.code == 0, run.err
    exported: dict[str, object] = run.json()
    return exported


def test_packet_verifies_in_an_empty_directory_offline(ws: Workspace, tmp_path: Path) -> None:
    packet = tmp_path / "export" / "evidence.tar.gz"
    exported = _export(ws, packet)
    head = ws.git("rev-parse", REF)
    assert {k: v for k, v in exported.items() if k != "members"} == {
        "packet": str(packet),
        "ref": REF,
        "head": head,
        "records": 3,
    }
    with tarfile.open(packet) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert names == [
        "README.md",
        "evidence.bundle",
        "manifest.json",
        "trust/allowed_signers",
        "trust/evidence-keys/test.pub",
    ]
    assert manifest == {
        "format": "stella-evidence-packet/v1",
        "ref": REF,
        "head": head,
        "records": 3,
        "trust": {"branch": "main", "commit": ws.git("rev-parse", "main")},
        "members": exported["members"],
    }
    assert sorted(manifest["members"]) == [n for n in names if n != "manifest.json"]
    again = tmp_path / "again.tar.gz"
    _export(ws, again)
    assert again.read_bytes() == packet.read_bytes()  # the same branch gives the same packet

    auditor = tmp_path / "auditor"
    auditor.mkdir()
    shutil.copy(packet, auditor / "packet.tar.gz")
    run = _offline([STELLA, "audit", "verify", "--packet", "packet.tar.gz", "-o", "json"], auditor)
    assert run.code == 0, run.out + run.err
    report = run.json()
    key = load_public_key(ws.key.with_name("evidence.pem.pub").read_bytes(), "test.pub")
    assert (report["ok"], report["records"], report["bundles"], report["head"], report["findings"]) == (
        True,
        3,
        3,
        head,
        [],
    )
    assert report["keys"] == [{"source": "trust/evidence-keys/test.pub", "hint": key_hint(key)}]
    assert report["packet"] == str(auditor / "packet.tar.gz")
    assert sorted(p.name for p in auditor.iterdir()) == ["packet.tar.gz"]  # nothing left behind
    text = _offline([STELLA, "audit", "verify", "--packet", "packet.tar.gz"], auditor)
    assert text.code == 0 and f"hint {key_hint(key)}" in text.out and "OK: 3 records" in text.out


def test_packet_readme_commands_verify_a_record_with_sigstore_js(ws: Workspace, tmp_path: Path) -> None:
    """The README's own commands: clone the bundle, run its sigstore-js snippet on a record."""
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "@sigstore" / "verify").is_dir():
        pytest.fail("node and tests/js/node_modules are needed: run `make setup`", pytrace=False)
    packet = tmp_path / "evidence.tar.gz"
    _export(ws, packet)
    work = tmp_path / "packet"
    work.mkdir()
    with tarfile.open(packet) as tar:
        readme = tar.extractfile("README.md").read().decode()  # type: ignore[union-attr]
        tar.extractall(work, filter="data")
    (snippet,) = re.findall(r"```js\n(.*?)```", readme, flags=re.S)
    (tmp_path / "verify.js").write_text(snippet)
    (clone,) = [line for line in readme.splitlines() if line.startswith("git clone ")]
    subprocess.run(clone, shell=True, cwd=work, check=True, capture_output=True)
    record = _records(ws)[1]
    bundle = f"evidence/{record.replace('.json', '.sigstore.json')}"
    env = {**os.environ, "NODE_PATH": str(JS / "node_modules")}
    argv = [node, str(tmp_path / "verify.js"), bundle, "trust/evidence-keys/test.pub"]
    done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "OK\n", "")
    statement = work / "evidence" / record
    statement.write_bytes(statement.read_bytes().replace(b'"allow"', b'"deny"'))
    done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "the bundle signs other bytes than the statement" in done.stderr


def _repack(packet: Path, tmp_path: Path, member: str, change: Callable[[bytes], bytes]) -> Path:
    out = tmp_path / "tampered.tar.gz"
    with tarfile.open(packet) as source, tarfile.open(out, "w:gz") as target:
        for info in source.getmembers():
            data = source.extractfile(info).read()  # type: ignore[union-attr]
            if info.name == member:
                data = change(data)
                info.size = len(data)
            target.addfile(info, io.BytesIO(data))
    return out


TAMPERED_PACKETS: dict[str, tuple[str, Callable[[bytes], bytes], int, str]] = {
    "readme-edited": (
        "README.md",
        lambda data: data.replace(b"compare these key hints", b"no need to compare key hints"),
        1,
        "README.md: sha256 ",
    ),
    "signers-edited": (
        "trust/allowed_signers",
        lambda data: data + b"mallory@example.com ssh-ed25519 AAAA\n",
        1,
        "trust/allowed_signers: sha256 ",
    ),
    "bundle-replaced": (
        "evidence.bundle",
        lambda data: b"# v2 git bundle\n" + data[:40],
        2,
        "is not a usable Git bundle",
    ),
}


def test_a_packet_with_a_path_trick_is_refused(ws: Workspace, tmp_path: Path) -> None:
    packet = tmp_path / "evidence.tar.gz"
    _export(ws, packet)
    tricked = tmp_path / "tricked.tar.gz"
    with tarfile.open(packet) as source, tarfile.open(tricked, "w:gz") as target:
        for info in source.getmembers():
            target.addfile(info, source.extractfile(info))
        link = tarfile.TarInfo("trust/evidence-keys/attacker.pub")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/ssh/ssh_host_ecdsa_key.pub"
        target.addfile(link)
    run = _offline([STELLA, "audit", "verify", "--packet", str(tricked)], tmp_path)
    assert run.code == 2, run.out + run.err
    assert run.out == ""
    assert run.err.strip() == (
        f"error: {tricked}: refusing member 'trust/evidence-keys/attacker.pub': a symbolic link "
        "(to '/etc/ssh/ssh_host_ecdsa_key.pub'); the packet is not safe to open"
    )


@pytest.mark.parametrize("case", TAMPERED_PACKETS.values(), ids=TAMPERED_PACKETS.keys())
def test_a_changed_packet_is_caught(
    ws: Workspace, tmp_path: Path, case: tuple[str, Callable[[bytes], bytes], int, str]
) -> None:
    member, change, code, expected = case
    packet = tmp_path / "evidence.tar.gz"
    _export(ws, packet)
    tampered = _repack(packet, tmp_path, member, change)
    run = _offline([STELLA, "audit", "verify", "--packet", str(tampered)], tmp_path)
    assert run.code == code, run.out + run.err
    assert expected in run.out + run.err
    if code == 1:
        assert f"FAIL {member}: sha256 " in run.out
        assert (
            "differs from the manifest's" in run.out
            and "the packet was changed after it was exported" in run.out
        )
        findings = _offline(
            [STELLA, "audit", "verify", "--packet", str(tampered), "-o", "json"], tmp_path
        ).json()["findings"]
        assert [(f["file"], f["check"]) for f in findings] == [(member, "packet")]


def _with_zeros(packet: Path, out: Path, name: str, size: int) -> Path:
    """`packet` with one more member, `name`, of `size` zero bytes (a multiple of 1 MiB), compressed as
    a bomb is: the gzip of one MiB of zeros repeated (concatenated gzip members are one stream), so
    that a 2 GiB member makes a 2 MB packet and costs no time to build."""
    prefix = io.BytesIO()
    with (
        tarfile.open(packet) as source,
        tarfile.open(fileobj=prefix, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for info in source.getmembers():
            tar.addfile(info, source.extractfile(info))
        end = tar.offset
    info = tarfile.TarInfo(name)
    info.size = size
    one = gzip.compress(bytes(1 << 20))
    with open(out, "wb") as fh:
        fh.write(gzip.compress(prefix.getvalue()[:end] + info.tobuf(tarfile.PAX_FORMAT)))
        for _ in range(size >> 20):
            fh.write(one)
        fh.write(gzip.compress(bytes(2 * tarfile.BLOCKSIZE)))
    return out


def test_a_compression_bomb_in_a_packet_is_refused_before_anything_is_written(
    ws: Workspace, tmp_path: Path
) -> None:
    """2 MB of packet that would unpack to 2 GiB: refused from the member's header, in no time."""
    packet = tmp_path / "evidence.tar.gz"
    _export(ws, packet)
    bomb = _with_zeros(packet, tmp_path / "bomb.tar.gz", "junk.bin", 2 << 30)
    assert bomb.stat().st_size < 3 << 20
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    run = _offline([STELLA, "audit", "verify", "--packet", str(bomb)], scratch)
    assert run.code == 2, run.out + run.err
    assert run.err.strip() == (
        f"error: {bomb}: refusing member 'junk.bin': 2147483648 bytes, over the cap of 16 MiB for a "
        "member other than evidence.bundle; the packet is not safe to open"
    )
    assert list(scratch.iterdir()) == []


def test_a_member_the_manifest_does_not_list_is_reported_and_not_used(ws: Workspace, tmp_path: Path) -> None:
    packet = tmp_path / "evidence.tar.gz"
    _export(ws, packet)
    attacker = tmp_path / "attacker.pem"
    generate_key(attacker)
    added = tmp_path / "added.tar.gz"
    with tarfile.open(packet) as source, tarfile.open(added, "w:gz") as target:
        for info in source.getmembers():
            target.addfile(info, source.extractfile(info))
        data = attacker.with_name("attacker.pem.pub").read_bytes()
        info = tarfile.TarInfo("trust/evidence-keys/attacker.pub")
        info.size = len(data)
        target.addfile(info, io.BytesIO(data))
    run = _offline([STELLA, "audit", "verify", "--packet", str(added), "-o", "json"], tmp_path)
    assert run.code == 1, run.out + run.err
    assert [(f["file"], f["message"], f["check"]) for f in run.json()["findings"]] == [
        (
            "trust/evidence-keys/attacker.pub",
            "in the packet but not listed in the manifest (not used)",
            "packet",
        )
    ]
    assert [k["source"] for k in run.json()["keys"]] == ["trust/evidence-keys/test.pub"]


# --- checkpoints -----------------------------------------------------------------------------------


def test_checkpoint_catches_a_rewrite_that_a_fresh_clone_cannot_see(ws: Workspace, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    run = ws.stella("audit", "checkpoint", "--out", checkpoint)
    assert run.code == 0, run.err
    assert f"wrote {checkpoint}: checkpoint of {REF}" in run.out
    printed = ws.stella("audit", "checkpoint", "-o", "json").json()
    dev_head = "sha256:" + _records(ws)[1].removeprefix("evidence/").removesuffix(".json")
    head = ws.git("rev-parse", REF)
    assert {k: v for k, v in printed["checkpoint"].items() if k != "time"} == {
        "type": "https://stella.dev/checkpoint/v1",
        "ref": REF,
        "head": head,
        "records": 3,
        "chains": {"dev": dev_head, "@policy": json.loads(ws.show("policy/stella.policy.json"))["record"]},
    }
    assert ws.stella("audit", "verify", "--checkpoint", checkpoint).code == 0

    # history rewritten: back one commit, and a different commit on top (consistent in itself)
    ws.tampered = True
    ws.git("update-ref", "-m", "rewrite", REF, ws.git("rev-parse", f"{REF}~1"))
    other = ws.git("commit-tree", f"{REF}^{{tree}}", "-p", REF, "-m", "a different commit on top")
    ws.git("update-ref", "-m", "rewrite", REF, other)

    run = ws.stella("audit", "verify", "--checkpoint", checkpoint, "-o", "json")
    assert run.code == 1
    local = run.json()["findings"]
    assert {f["check"] for f in local} == {"checkpoint", "reflog"}

    packet = tmp_path / "evidence.tar.gz"  # a fresh clone: no reflog to tell the story
    _export(ws, packet)
    plain = _offline([STELLA, "audit", "verify", "--packet", str(packet), "-o", "json"], tmp_path)
    assert plain.code == 0 and plain.json()["findings"] == []
    run = _offline(
        [STELLA, "audit", "verify", "--packet", str(packet), "--checkpoint", str(checkpoint), "-o", "json"],
        tmp_path,
    )
    assert run.code == 1
    findings = [(f["file"], f["check"]) for f in run.json()["findings"]]
    assert findings == [
        (f"evidence/{dev_head.removeprefix('sha256:')}.json", "checkpoint"),
        (REF, "checkpoint"),
        (REF, "checkpoint"),
    ]
    messages = [f["message"] for f in run.json()["findings"]]
    assert "the head of dev's chain at the checkpoint of" in messages[0] and messages[0].endswith("is gone")
    assert messages[1].startswith("2 records today, fewer than the 3 the checkpoint of")
    assert f"was at {head[:12]}, which is not in the history of today's head" in messages[2]
    assert "the branch was rewritten after the checkpoint" in messages[2]


def _evidence_bundle(ws: Workspace, path: Path) -> None:
    """Signed by a trusted key, but a record's bundle, not a checkpoint."""
    path.write_bytes(ws.show(_records(ws)[0].replace(".json", ".sigstore.json")))


BAD_CHECKPOINT_FILES: dict[str, tuple[Callable[[Workspace, Path], None], str]] = {
    "missing": (lambda ws, p: None, "checkpoint.json: cannot read the checkpoint: No such file or directory"),
    "not-json": (
        lambda ws, p: p.write_text("checkpoint?"),
        "checkpoint.json: not a checkpoint file (not JSON",
    ),
    "evidence-bundle": (
        _evidence_bundle,
        "payload, not a checkpoint (application/vnd.stella.checkpoint+json)",
    ),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINT_FILES.values(), ids=BAD_CHECKPOINT_FILES.keys())
def test_a_bad_checkpoint_file_is_invalid_input(
    ws: Workspace, tmp_path: Path, case: tuple[Callable[[Workspace, Path], None], str]
) -> None:
    make, expected = case
    path = tmp_path / "checkpoint.json"
    make(ws, path)
    run = ws.stella("audit", "verify", "--checkpoint", path)
    assert run.code == 2, run.out + run.err
    assert expected in run.err
