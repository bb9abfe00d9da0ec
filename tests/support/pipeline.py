"""A repository with an evidence branch, built by running the real `stella` command."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from reconciler.sign import generate_key
from tests.support.cli import Run, stella
from tests.support.repos import commit_all, git

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"


CREATED: list[Workspace] = []
"""Every workspace the test session made: at the end, each untampered one must replay identically."""


@dataclass
class Workspace:
    root: Path
    key: Path
    tampered: bool = False

    def __post_init__(self) -> None:
        CREATED.append(self)

    @property
    def env(self) -> dict[str, str]:
        return {"STELLA_SIGNING_KEY": str(self.key)}

    def stella(self, *args: str | Path, env: dict[str, str] | None = None) -> Run:
        return stella(*args, "--repo", self.root, env={**self.env, **(env or {})})

    def git(self, *args: str) -> str:
        return git(self.root, *args)

    def evidence_files(self) -> list[str]:
        return self.git("ls-tree", "-r", "--name-only", "refs/heads/stella/evidence").splitlines()

    def show(self, path: str) -> bytes:
        """The exact bytes of a file on the evidence branch."""
        return subprocess.run(
            ["git", "cat-file", "blob", f"refs/heads/stella/evidence:{path}"],
            cwd=self.root,
            check=True,
            capture_output=True,
        ).stdout


def example_workspace(tmp_path: Path) -> Workspace:
    """A copy of example-repo/ committed on main, with a fresh evidence key trusted in trust/."""
    root = tmp_path / "repo"
    shutil.copytree(EXAMPLE, root)
    key = tmp_path / "keys" / "evidence.pem"
    generate_key(key)
    (root / "trust" / "evidence-keys" / "test.pub").write_bytes(
        key.with_name("evidence.pem.pub").read_bytes()
    )
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Requester")
    git(root, "config", "user.email", "requester@example.com")
    commit_all(root, "example repository")
    return Workspace(root, key)


RELEASE_130 = """\
apiVersion: stella/v1
kind: Release
name: shop-1.3.0
components:
  web:    {image: registry.example.com/shop/web:1.3.0}
  worker: {image: registry.example.com/shop/worker:1.3.0}
"""


def promotion(release: str, environment: str) -> str:
    return f"apiVersion: stella/v1\nkind: Promotion\nrelease: {release}\nenvironment: {environment}\n"


def decision_records(ws: Workspace) -> list[str]:
    """Paths of the statements on the evidence branch that are not policy ratifications."""
    out = []
    for path in ws.evidence_files():
        if not path.startswith("evidence/") or path.endswith(".sigstore.json"):
            continue
        if json.loads(ws.show(path))["predicate"]["type"] != "policy_ratification":
            out.append(path)
    return out


def change_evidence(ws: Workspace, files: dict[str, bytes | None], message: str) -> str:
    """Commit a change to the evidence branch the way a person with push access could (fast-forward)."""
    ws.tampered = True
    worktree = ws.root.parent / "evidence-worktree"
    ws.git("worktree", "add", "-q", str(worktree), "stella/evidence")
    try:
        for path, data in files.items():
            target = worktree / path
            if data is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        git(worktree, "add", "-A")
        git(worktree, "commit", "-q", "-m", message)
        return git(worktree, "rev-parse", "HEAD")
    finally:
        ws.git("worktree", "remove", "--force", str(worktree))
