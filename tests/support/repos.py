"""Real Git repositories for tests: write files, commit with the git CLI, no mocks."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

SETTINGS = """\
apiVersion: stella/v1
kind: Settings
tenant: shop
"""

ENV_DEV = """\
apiVersion: stella/v1
kind: Environment
name: dev
"""

ENV_PROD = """\
apiVersion: stella/v1
kind: Environment
name: prod
promotesFrom: dev
soak: 1h
approvals: {required: 2, groups: [release-managers]}
"""

GROUPS = """\
apiVersion: stella/v1
kind: Groups
groups:
  release-managers: [release-manager@example.com]
"""

DIGEST = "sha256:" + "a" * 64

RELEASE = f"""\
apiVersion: stella/v1
kind: Release
name: shop-1.0.0
components:
  web: {{image: registry.example.com/shop/web:1.0.0, digest: {DIGEST}}}
"""

PROMOTION = """\
apiVersion: stella/v1
kind: Promotion
release: shop-1.0.0
environment: dev
reason: test
"""

BASE: dict[str, str | bytes] = {
    "stella.yaml": SETTINGS,
    "environments/dev.yaml": ENV_DEV,
    "environments/prod.yaml": ENV_PROD,
    "trust/groups.yaml": GROUPS,
    "releases/shop-1.0.0.yaml": RELEASE,
    "promotions/shop-1.0.0--dev.yaml": PROMOTION,
}

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Requester",
    "GIT_AUTHOR_EMAIL": "requester@example.com",
    "GIT_COMMITTER_NAME": "Requester",
    "GIT_COMMITTER_EMAIL": "requester@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd)}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def write_files(root: Path, files: Mapping[str, str | bytes | None]) -> None:
    """Write (or, for None, delete) files under root."""
    for rel, content in files.items():
        path = root / rel
        if content is None:
            path.unlink(missing_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def make_repo(root: Path, files: Mapping[str, str | bytes | None] = BASE, *, commit: bool = True) -> Path:
    """A Git work tree at `root` on branch main holding `files`, committed once."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", GIT_ENV["GIT_AUTHOR_NAME"])
    git(root, "config", "user.email", GIT_ENV["GIT_AUTHOR_EMAIL"])
    write_files(root, files)
    if commit:
        commit_all(root, "initial")
    return root


def commit_all(root: Path, message: str) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "--allow-empty", "-m", message)
    return git(root, "rev-parse", "HEAD")
