"""The server-side guard: `stella hook pre-receive` in a bare repository served by `git daemon`.

Pushes go over git://127.0.0.1 with the `git` CLI, from clones. A push that rewrites or deletes the
evidence ref, changes or deletes an evidence file, or changes a release on main is refused with one
`stella: rejected:` line per reason, and the served refs do not move; the reconciler's own fast-forward
and ordinary pushes to main land.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import STELLA, stella
from tests.support.gitdaemon import GitDaemon, start_git_daemon
from tests.support.pipeline import RELEASE_130, Workspace, change_evidence, example_workspace, promotion
from tests.support.repos import GIT_ENV, SETTINGS, commit_all, git, make_repo, write_files

EVIDENCE = "refs/heads/stella/evidence"
MAIN = "refs/heads/main"
APPEND_ONLY = "releases/, evidence/, inputs/, artifacts/, policies/ and policy-files/ are append-only"
NEVER = "a release never changes: create a new release"
DIGEST_1 = "sha256:" + "1" * 64
DIGEST_2 = "sha256:" + "2" * 64
DIGEST_3 = "sha256:" + "3" * 64


def release(name: str, **components: tuple[str, str | None]) -> str:
    """A release file: component -> (image, digest or None)."""
    lines = [f"apiVersion: stella/v1\nkind: Release\nname: {name}\ncomponents:"]
    for comp, (image, digest) in components.items():
        lines.append(f"  {comp}: {{image: {image}" + (f", digest: {digest}}}" if digest else "}"))
    return "\n".join(lines) + "\n"


WEB = "registry.example.com/shop/web"
WORKER = "registry.example.com/shop/worker"
RELEASE_120 = release("shop-1.2.0", web=(f"{WEB}:1.2.0", DIGEST_1), worker=(f"{WORKER}:1.2.0", DIGEST_2))


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitDaemon]:
    server = start_git_daemon(tmp_path_factory.mktemp("served"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def origin(daemon: GitDaemon, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bare repository, evidence key): example-repo/ plus a pinned release shop-1.2.0, reconciled once
    (shop-1.4.0 and shop-1.2.0 locked, shop-1.4.0--dev allowed), pushed over git:// into a bare
    repository guarded by `stella hook install` (so the creating push went through the hook)."""
    ws = example_workspace(tmp_path_factory.mktemp("workspace"))
    write_files(ws.root, {"releases/shop-1.2.0.yaml": RELEASE_120})
    commit_all(ws.root, "add shop-1.2.0, digests pinned")
    run = ws.stella("reconcile", "--once")
    assert run.code == 0, run.out + run.err
    bare = daemon.base / "origin.git"
    git(daemon.base, "init", "-q", "--bare", "-b", "main", str(bare))
    installed = stella("hook", "install", bare)
    assert (installed.code, installed.out.strip()) == (
        0,
        f"installed: {bare / 'hooks' / 'pre-receive'} (runs {STELLA} hook pre-receive)",
    ), installed.err
    pushed = _push(ws.root, daemon.url("origin.git"), "main", EVIDENCE)
    assert (pushed.code, pushed.rejected) == (0, []), pushed.stderr
    return bare, ws.key


@dataclass
class Pushed:
    code: int
    stderr: str

    @property
    def rejected(self) -> list[str]:
        """The guard's lines, as the pusher sees them (git prefixes `remote: ` and pads)."""
        lines = (line.removeprefix("remote: ").rstrip() for line in self.stderr.splitlines())
        return [line for line in lines if line.startswith("stella: rejected: ")]


def _push(cwd: Path, *args: str) -> Pushed:
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd)}
    done = subprocess.run(
        ["git", "push", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    return Pushed(done.returncode, done.stderr)


@dataclass
class Served:
    """A fresh copy of the origin, served by the daemon, and a clone of it (main + evidence branch)."""

    url: str
    clone: Path
    key: Path

    def git(self, *args: str) -> str:
        return git(self.clone, *args)

    def push(self, *args: str) -> Pushed:
        return _push(self.clone, "origin", *args)

    def remote_refs(self) -> dict[str, str]:
        lines = self.git("ls-remote", self.url).splitlines()
        return {ref: oid for oid, ref in (line.split("\t") for line in lines)}

    def evidence_files(self, prefix: str) -> list[str]:
        """Files under `prefix` that belong to decisions (not to the policy's genesis ratification)."""
        names = self.git("ls-tree", "-r", "--name-only", "stella/evidence").splitlines()
        genesis = json.loads(self.git("show", "stella/evidence:policy/stella.policy.json"))["record"]
        statement = json.loads(
            self.git("show", f"stella/evidence:evidence/{genesis.removeprefix('sha256:')}.json")
        )
        skip = {
            f"evidence/{genesis.removeprefix('sha256:')}.json",
            f"inputs/{statement['predicate']['inputs']['sha256']}.json",
        }
        return [
            n for n in names if n.startswith(prefix) and not n.endswith(".sigstore.json") and n not in skip
        ]

    def lock(self, name: str) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.git("show", f"stella/evidence:releases/{name}.json"))
        return data

    def commit_main(self, files: dict[str, str | bytes | None], message: str) -> str:
        write_files(self.clone, files)
        return commit_all(self.clone, message)

    def commit_evidence(self, files: dict[str, bytes | None], message: str) -> str:
        return change_evidence(Workspace(self.clone, self.key), files, message)


@pytest.fixture
def served(daemon: GitDaemon, origin: tuple[Path, Path], tmp_path: Path) -> Served:
    bare, key = origin
    name = f"{tmp_path.name}.git"
    shutil.copytree(bare, daemon.base / name, symlinks=True)
    url = daemon.url(name)
    git(tmp_path, "clone", "-q", url, "clone")
    clone = tmp_path / "clone"
    git(clone, "branch", "-q", "stella/evidence", "origin/stella/evidence")
    return Served(url, clone, key)


# --- refused -------------------------------------------------------------------------------------

Case = Callable[[Served], tuple[list[str], list[str]]]
"""Prepares a forbidden push in the clone; returns (git push arguments after `origin`, the exact lines)."""


def _force_push_evidence(s: Served) -> tuple[list[str], list[str]]:
    old = s.git("rev-parse", "stella/evidence")
    new = s.git("commit-tree", "stella/evidence^{tree}", "-m", "the same files, another history")
    reason = f"not a fast-forward of {old[:12]}; the evidence ref only moves forward"
    return ["--force", f"{new}:{EVIDENCE}"], [f"{EVIDENCE} (commit {new[:12]}): {reason}"]


def _delete_evidence(s: Served) -> tuple[list[str], list[str]]:
    old = s.git("rev-parse", "stella/evidence")
    reason = "the evidence ref cannot be deleted; it only moves forward"
    return [f":{EVIDENCE}"], [f"{EVIDENCE} (commit {old[:12]}): {reason}"]


def _edit_statement(s: Served) -> tuple[list[str], list[str]]:
    (path,) = s.evidence_files("evidence/")
    data = json.loads(s.git("show", f"stella/evidence:{path}"))
    data["predicate"]["decision"]["result"] = "deny"
    commit = s.commit_evidence({path: json.dumps(data).encode()}, "turn the allow into a deny")
    reason = f"changed after it was written; {APPEND_ONLY}"
    return ["stella/evidence"], [f"{EVIDENCE}: {path} (commit {commit[:12]}): {reason}"]


def _delete_inputs(s: Served) -> tuple[list[str], list[str]]:
    (path,) = s.evidence_files("inputs/")
    commit = s.commit_evidence({path: None}, "drop the inputs of a decision")
    return ["stella/evidence"], [f"{EVIDENCE}: {path} (commit {commit[:12]}): deleted; {APPEND_ONLY}"]


def _change_digest(s: Served) -> tuple[list[str], list[str]]:
    lock = s.lock("shop-1.2.0")
    changed = release("shop-1.2.0", web=(f"{WEB}:1.2.0", DIGEST_3), worker=(f"{WORKER}:1.2.0", DIGEST_2))
    commit = s.commit_main({"releases/shop-1.2.0.yaml": changed}, "swap the web image")
    reason = (
        f"release 'shop-1.2.0' (locked as {lock['id']}) changed: "
        f"web: digest changed from {DIGEST_1} to {DIGEST_3}; {NEVER}"
    )
    return ["main"], [f"{MAIN}: releases/shop-1.2.0.yaml (commit {commit[:12]}): {reason}"]


def _drop_component(s: Served) -> tuple[list[str], list[str]]:
    lock = s.lock("shop-1.2.0")
    changed = release("shop-1.2.0", web=(f"{WEB}:1.2.0", DIGEST_1))
    commit = s.commit_main({"releases/shop-1.2.0.yaml": changed}, "drop the worker")
    reason = (
        f"release 'shop-1.2.0' (locked as {lock['id']}) changed: "
        f"components changed from ['web', 'worker'] to ['web']; {NEVER}"
    )
    return ["main"], [f"{MAIN}: releases/shop-1.2.0.yaml (commit {commit[:12]}): {reason}"]


def _retag_locked(s: Served) -> tuple[list[str], list[str]]:
    lock = s.lock("shop-1.4.0")
    changed = release("shop-1.4.0", web=(f"{WEB}:1.4.1", None), worker=(f"{WORKER}:1.4.0", None))
    commit = s.commit_main({"releases/shop-1.4.0.yaml": changed}, "web 1.4.1 instead")
    reason = f"release 'shop-1.4.0' (locked as {lock['id']}) changed: web: tag changed from 1.4.0 to 1.4.1"
    return ["main"], [f"{MAIN}: releases/shop-1.4.0.yaml (commit {commit[:12]}): {reason}; {NEVER}"]


def _pin_other_digest(s: Served) -> tuple[list[str], list[str]]:
    lock = s.lock("shop-1.4.0")
    locked_web = lock["components"]["web"]["digest"]  # type: ignore[index]
    changed = release("shop-1.4.0", web=(f"{WEB}:1.4.0", DIGEST_3), worker=(f"{WORKER}:1.4.0", None))
    commit = s.commit_main({"releases/shop-1.4.0.yaml": changed}, "pin web to another image")
    reason = (
        f"release 'shop-1.4.0' (locked as {lock['id']}) changed: "
        f"web: digest changed from {locked_web} to {DIGEST_3}; {NEVER}"
    )
    return ["main"], [f"{MAIN}: releases/shop-1.4.0.yaml (commit {commit[:12]}): {reason}"]


def _delete_locked(s: Served) -> tuple[list[str], list[str]]:
    lock = s.lock("shop-1.4.0")
    commit = s.commit_main({"releases/shop-1.4.0.yaml": None}, "remove shop-1.4.0")
    reason = f"release 'shop-1.4.0' is locked as {lock['id']} and cannot be deleted; {NEVER}"
    return ["main"], [f"{MAIN}: releases/shop-1.4.0.yaml (commit {commit[:12]}): {reason}"]


def _invalid_release(s: Served) -> tuple[list[str], list[str]]:
    text = release("shop-2.0.0", web=(f"{WEB}:2.0.0", DIGEST_1)).replace("digest:", "digests:")
    commit = s.commit_main({"releases/shop-2.0.0.yaml": text}, "a release with a typo")
    reason = "unknown field 'components.web.digests'"
    return ["main"], [f"{MAIN}: releases/shop-2.0.0.yaml:5 (commit {commit[:12]}): {reason}"]


REFUSED: dict[str, Case] = {
    "evidence-force-pushed": _force_push_evidence,
    "evidence-ref-deleted": _delete_evidence,
    "evidence-statement-edited": _edit_statement,
    "evidence-inputs-deleted": _delete_inputs,
    "main-release-digest-changed": _change_digest,
    "main-release-component-dropped": _drop_component,
    "main-locked-tag-only-release-retagged": _retag_locked,
    "main-locked-tag-only-release-pinned-elsewhere": _pin_other_digest,
    "main-locked-release-deleted": _delete_locked,
    "main-invalid-release-yaml": _invalid_release,
}


@pytest.mark.parametrize("case", REFUSED.values(), ids=REFUSED.keys())
def test_guard_refuses(served: Served, case: Case) -> None:
    before = served.remote_refs()
    args, expected = case(served)
    pushed = served.push(*args)
    assert pushed.code != 0, pushed.stderr
    assert pushed.rejected == [f"stella: rejected: {line}" for line in expected], pushed.stderr
    assert "(pre-receive hook declined)" in pushed.stderr
    assert "Traceback" not in pushed.stderr
    assert served.remote_refs() == before


# --- accepted ------------------------------------------------------------------------------------


def _new_release(s: Served) -> list[str]:
    s.commit_main(
        {"releases/shop-2.0.0.yaml": release("shop-2.0.0", web=(f"{WEB}:2.0.0", DIGEST_3))}, "shop-2.0.0"
    )
    return ["main"]


def _new_promotion(s: Served) -> list[str]:
    s.commit_main({"promotions/shop-1.4.0--staging.yaml": promotion("shop-1.4.0", "staging")}, "to staging")
    return ["main"]


def _pin_locked_digests(s: Served) -> list[str]:
    lock = s.lock("shop-1.4.0")
    digests = {name: comp["digest"] for name, comp in lock["components"].items()}  # type: ignore[attr-defined]
    pinned = release(
        "shop-1.4.0", web=(f"{WEB}:1.4.0", digests["web"]), worker=(f"{WORKER}:1.4.0", digests["worker"])
    )
    s.commit_main({"releases/shop-1.4.0.yaml": pinned}, "write down the locked digests")
    return ["main"]


ACCEPTED: dict[str, Callable[[Served], list[str]]] = {
    "main-new-release": _new_release,
    "main-new-promotion": _new_promotion,
    "main-locked-digests-written-down": _pin_locked_digests,
}


@pytest.mark.parametrize("case", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_guard_accepts_ordinary_pushes_to_main(served: Served, case: Callable[[Served], list[str]]) -> None:
    pushed = served.push(*case(served))
    assert (pushed.code, pushed.rejected) == (0, []), pushed.stderr
    assert served.remote_refs()[MAIN] == served.git("rev-parse", "main")


def test_guard_accepts_the_reconcilers_fast_forward(served: Served) -> None:
    served.commit_main(
        {
            "releases/shop-1.3.0.yaml": RELEASE_130,
            "promotions/shop-1.3.0--dev.yaml": promotion("shop-1.3.0", "dev"),
        },
        "request shop-1.3.0 in dev",
    )
    pushed = served.push("main")
    assert (pushed.code, pushed.rejected) == (0, []), pushed.stderr
    before = served.git("rev-parse", "stella/evidence")

    key = {"STELLA_SIGNING_KEY": str(served.key)}
    run = stella("reconcile", "--once", "-o", "json", "--repo", served.clone, env=key)
    assert run.code == 0, run.out + run.err
    decisions = [(d["promotion"], d["decision"]) for d in run.json()["decisions"]]
    assert decisions == [("shop-1.3.0--dev", "allow")]
    after = served.git("rev-parse", "stella/evidence")
    changes = served.git("diff", "--name-status", before, after).splitlines()
    assert "M\tenvironments/dev/stella.version.json" in changes  # the pointer moves; nothing else changes
    assert all(c.startswith("A\t") for c in changes if "stella.version.json" not in c), changes

    pushed = served.push(EVIDENCE)
    assert (pushed.code, pushed.rejected) == (0, []), pushed.stderr
    assert served.remote_refs()[EVIDENCE] == after


# --- the commands themselves ---------------------------------------------------------------------


def _pre_receive(repo: Path, stdin: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return subprocess.run(
        [STELLA, "hook", "pre-receive", "--repo", str(repo)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_pre_receive_fails_closed_on_what_it_cannot_check(served: Served) -> None:
    unknown = "ab" * 20
    done = _pre_receive(served.clone, f"{'0' * 40} {unknown} {EVIDENCE}\n")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"stella: rejected: {EVIDENCE}: cannot check this update: "
        f"{unknown}: no such object in this repository\n"
    )
    done = _pre_receive(served.clone, "not an update line\n")
    assert done.returncode == 2
    assert done.stderr == (
        "stella: rejected: cannot check the push: stdin line 1: expected `<old-oid> <new-oid> <refname>`, "
        "got 'not an update line'\n"
    )


def test_pre_receive_accepts_updates_it_does_not_guard(served: Served) -> None:
    head = served.git("rev-parse", "main")
    zero = "0" * 40
    done = _pre_receive(served.clone, f"{zero} {head} refs/heads/feature\n{zero} {head} refs/tags/v1\n")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


TRAIL = "refs/heads/audit/trail"
GUARDED: dict[str, tuple[str | None, str, str]] = {
    "ref-named-in-stella-yaml": (SETTINGS + f"evidence: {{ref: {TRAIL}}}\n", TRAIL, EVIDENCE),
    "no-stella-yaml-default-ref": (None, EVIDENCE, TRAIL),
    "invalid-stella-yaml-default-ref": ("apiVersion: stella/v1\nkind: Settings\n", EVIDENCE, TRAIL),
}


@pytest.mark.parametrize("case", GUARDED.values(), ids=GUARDED.keys())
def test_the_guarded_evidence_ref_is_the_one_stella_yaml_names_and_every_stella_ref(
    tmp_path: Path, case: tuple[str | None, str, str]
) -> None:
    settings, guarded, other = case
    root = make_repo(tmp_path / "repo", {"stella.yaml": settings} if settings else {"README.md": "x\n"})
    head = git(root, "rev-parse", "HEAD")
    for ref in (guarded, other):
        git(root, "update-ref", ref, head)
    done = _pre_receive(root, f"{head} {'0' * 40} {other}\n{head} {'0' * 40} {guarded}\n")
    rejected = [line for line in done.stderr.splitlines() if line.startswith("stella: rejected: ")]
    # every refs/heads/stella/* ref is guarded as evidence, whatever stella.yaml names
    refs = [r for r in (other, guarded) if r == guarded or r.startswith("refs/heads/stella/")]
    assert (done.returncode, rejected) == (
        1,
        [
            f"stella: rejected: {ref} (commit {head[:12]}): "
            "the evidence ref cannot be deleted; it only moves forward"
            for ref in refs
        ],
    )


def test_install_refuses_to_overwrite_another_hook(tmp_path: Path) -> None:
    bare = tmp_path / "repo.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    hook = bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)

    refused = stella("hook", "install", bare)
    assert refused.code == 2
    assert refused.err.strip() == (
        f"error: {hook} already exists and is not this hook: review it, then pass --force to replace it"
    )
    assert hook.read_text() == "#!/bin/sh\nexit 0\n"

    forced = stella("hook", "install", "--force", bare, "-o", "json")
    assert forced.code == 0, forced.err
    assert forced.json() == {
        "hook": str(hook),
        "command": [STELLA, "hook", "pre-receive"],
        "changed": True,
    }
    assert hook.read_text().splitlines()[-1] == f"exec {STELLA} hook pre-receive"
    assert os.access(hook, os.X_OK)

    again = stella("hook", "install", bare)
    assert (again.code, again.out.strip()) == (
        0,
        f"already installed: {hook} (runs {STELLA} hook pre-receive)",
    )


def test_install_needs_a_repository(tmp_path: Path) -> None:
    run = stella("hook", "install", tmp_path / "nothing")
    assert run.code == 2
    assert "not a Git repository" in run.err
    assert "Traceback" not in run.err
