"""The people's side of a promotion: request it on a branch (`promote`), approve it (`approve`).

Both write one manifest and one commit, and nothing else. A request is committed on a new branch
`promote/<release>--<env>` for a pull request; it is signed when the user's Git configuration signs
commits with an SSH key. An approval is committed on the current branch of the work tree with an SSH
signature (`git commit -S`, `gpg.format=ssh`): its identity is what that signature proves, not what the
file says. No decisions are made here.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import TypeAdapter

from .chain import evidence_ref
from .discover import Plugins
from .errors import InvalidInput
from .governance import Policy, approvals_dir, governed_files
from .locking import read_lock
from .manifests import load_repository, load_settings
from .models import Approval, Identity, PolicyApproval, Promotion
from .repo import Repo
from .resolve import Resolver, resolve_release


def promote(repo: Repo, branch: str, release: str, environment: str, reason: str) -> str:
    """Commit `promotions/<release>--<env>.yaml` on a new branch `promote/<release>--<env>`.

    The branch starts at `branch`'s head; the work tree is not touched. Returns the new commit id.
    """
    base = repo.resolve_ref(f"refs/heads/{branch}")
    if base is None:
        raise InvalidInput(f"branch {branch!r} does not exist")
    repository = load_repository(repo.tree(base))
    if release not in repository.releases:
        raise InvalidInput(f"no release {release!r} on {branch} (releases/{release}.yaml)")
    if environment not in repository.environments:
        raise InvalidInput(f"no environment {environment!r} on {branch} (environments/{environment}.yaml)")
    promotion_id = f"{release}--{environment}"
    path = f"promotions/{promotion_id}.yaml"
    if promotion_id in repository.promotions:
        raise InvalidInput(f"{path} already exists on {branch}: that promotion was already requested")
    ref = f"refs/heads/promote/{promotion_id}"
    if repo.resolve_ref(ref) is not None:
        raise InvalidInput(f"branch promote/{promotion_id} already exists")
    body: dict[str, str] = {"apiVersion": "stella/v1", "kind": "Promotion", "release": release}
    body["environment"] = environment
    if reason:
        body["reason"] = reason
    Promotion.model_validate(body)
    message = f"stella: promote {release} to {environment}\n" + (f"\n{reason}\n" if reason else "")
    data = yaml.safe_dump(body, sort_keys=False).encode()
    return repo.commit_files(
        ref, None, {path: data}, message, author=repo.user(), parent=base, sign=repo.signing_configured()
    )


@dataclass(frozen=True)
class Approved:
    commit: str
    path: str
    identity: str
    release_id: str


def approve(
    repo: Repo,
    plugins: Plugins,
    promotion_id: str,
    *,
    reject: bool,
    comment: str,
    key: Path | None,
    identity: str | None,
    offline: bool,
    environ: Mapping[str, str] | None = None,
) -> Approved:
    """Write `approvals/<promotion>/<identity>.yaml` bound to the release id, and commit it signed."""
    workdir = repo.workdir
    if workdir is None:
        raise InvalidInput(f"{repo.path}: approving needs a work tree (a clone with the promotion's branch)")
    head = repo.resolve_ref("HEAD")
    if head is None:
        raise InvalidInput(f"{workdir}: no commits yet")
    source = repo.tree(head)
    repository = load_repository(source)
    promotion = repository.promotions.get(promotion_id)
    if promotion is None:
        raise InvalidInput(f"no promotion {promotion_id!r} at HEAD (promotions/{promotion_id}.yaml)")
    release = repository.releases[promotion.release]
    settings = load_settings(source)
    evidence = repo.resolve_ref(evidence_ref(repo, settings))
    lock = read_lock(repo.tree(evidence), release.name) if evidence else None
    if lock is None:
        with Resolver(settings, plugins, source, offline=offline) as resolver:
            lock = resolve_release(release, resolver)
    signing_key = _signing_key(repo, key)
    who = identity or _configured_email(repo)
    body = {
        "apiVersion": "stella/v1",
        "kind": "Approval",
        "promotion": promotion_id,
        "release": lock.id,
        "environment": promotion.environment,
        "decision": "reject" if reject else "approve",
    }
    if comment:
        body["comment"] = comment
    Approval.model_validate(body)
    if not _safe_identity(who):
        raise InvalidInput(f"identity {who!r} is not a valid approver identity (an email address)")
    path = f"approvals/{promotion_id}/{who}.yaml"
    verb = "reject" if reject else "approve"
    message = f"stella: {verb} {promotion_id}\n\nRelease {release.name} ({lock.id}).\n"
    commit = _commit_signed(workdir, path, body, message, signing_key, environ)
    return Approved(commit, path, who, lock.id)


def approve_policy(
    repo: Repo,
    *,
    reject: bool,
    comment: str,
    key: Path | None,
    identity: str | None,
    environ: Mapping[str, str] | None = None,
) -> Approved:
    """Write `approvals/policy-<hex>/<identity>.yaml` for the policy (the governed files) at HEAD, and
    commit it signed. The approval file is not governed, so it does not change the policy it approves."""
    workdir = repo.workdir
    if workdir is None:
        raise InvalidInput(f"{repo.path}: approving needs a work tree (a clone of the branch)")
    head = repo.resolve_ref("HEAD")
    if head is None:
        raise InvalidInput(f"{workdir}: no commits yet")
    policy = Policy.of(governed_files(repo.tree(head)))
    signing_key = _signing_key(repo, key)
    who = identity or _configured_email(repo)
    if not _safe_identity(who):
        raise InvalidInput(f"identity {who!r} is not a valid approver identity (an email address)")
    body = {
        "apiVersion": "stella/v1",
        "kind": "Approval",
        "policy": policy.id,
        "decision": "reject" if reject else "approve",
    }
    if comment:
        body["comment"] = comment
    PolicyApproval.model_validate(body)
    path = f"{approvals_dir(policy.id)}/{who}.yaml"
    verb = "reject" if reject else "approve"
    message = f"stella: {verb} policy {policy.id}\n\nThe governed files at {head[:12]}.\n"
    commit = _commit_signed(workdir, path, body, message, signing_key, environ)
    return Approved(commit, path, who, policy.id)


def _commit_signed(
    workdir: Path,
    path: str,
    body: Mapping[str, str],
    message: str,
    signing_key: str,
    environ: Mapping[str, str] | None,
) -> str:
    """Write `path` (YAML of `body`) in the work tree and commit only it, SSH-signed."""
    target = workdir / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(dict(body), sort_keys=False))
    env = dict(environ if environ is not None else os.environ)
    _git(workdir, "add", "--", path, env=env)
    unchanged = subprocess.run(
        ["git", "diff", "--cached", "--quiet", "--", path], cwd=workdir, env=env, check=False
    )
    if unchanged.returncode == 0:
        raise InvalidInput(
            f"{path} already says exactly this, so a new commit would change nothing (an approval counts "
            "from the commit that last changed the file): give a different --comment to approve again"
        )
    _git(
        workdir,
        "-c",
        "gpg.format=ssh",
        "-c",
        f"user.signingkey={signing_key}",
        "commit",
        "-q",
        "-S",
        "-m",
        message,
        "--",
        path,
        env=env,
    )
    return _git(workdir, "rev-parse", "HEAD", env=env)


def _safe_identity(identity: str) -> bool:
    try:
        TypeAdapter(Identity).validate_python(identity)
    except ValueError:
        return False
    return True


def _signing_key(repo: Repo, key: Path | None) -> str:
    if key is not None:
        if not key.is_file():
            raise InvalidInput(f"{key}: no such SSH key")
        return str(key.resolve())
    try:
        configured = str(repo.git.config["user.signingkey"])
    except KeyError:
        configured = ""
    if not configured:
        raise InvalidInput(
            "approvals must be SSH-signed: pass --key PATH (an SSH private key) "
            "or set git config user.signingkey"
        )
    return configured


def _configured_email(repo: Repo) -> str:
    try:
        return str(repo.git.config["user.email"])
    except KeyError as exc:
        raise InvalidInput("no identity: pass --identity or set git config user.email") from exc


def _git(cwd: Path, *argv: str, env: Mapping[str, str]) -> str:
    done = subprocess.run(["git", *argv], cwd=cwd, capture_output=True, text=True, env=dict(env))
    if done.returncode != 0:
        raise InvalidInput(f"git {argv[-1] if argv else ''} failed: {done.stderr.strip()}")
    return done.stdout.strip()
