"""The people's side of a promotion: request it on a branch (`promote`, `rollback`), approve it
(`approve`).

Each writes one manifest and one commit, and nothing else. A request is committed on a new branch
`promote/<promotion>` for a pull request; it is signed when the user's Git configuration signs
commits with an SSH key. A rollback is a promotion with `rollback: true` and an id of its own
(`<release>--<env>--rollback-<n>`: the release's ordinary promotion was decided already); it is
requested only for a release the evidence branch shows this environment allowed before, and not running
there now. An approval is committed on the current branch of the work tree with an SSH signature
(`git commit -S`, `gpg.format=ssh`): its identity is what that signature proves, not what the file
says. No decisions are made here.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import TypeAdapter

from .chain import evidence_ref, keyring_of
from .discover import Plugins
from .errors import InvalidInput
from .governance import Policy, approvals_dir, governed_files
from .indexing import open_index
from .locking import read_lock
from .manifests import ROLLBACK_ID, load_repository, load_settings
from .models import Approval, Identity, Name, PolicyApproval, Promotion
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
class Requested:
    """A promotion requested on a branch of its own, for a pull request."""

    promotion: str
    path: str
    branch: str
    commit: str


def rollback(
    repo: Repo,
    branch: str,
    release: str,
    environment: str,
    reason: str,
    evidence: str | None = None,
) -> Requested:
    """Commit `promotions/<release>--<env>--rollback-<n>.yaml` (`rollback: true`) on a new branch
    `promote/<that id>`, for a release `environment` was allowed before and does not run now.

    The evidence branch (`evidence`, default: the ref the reconciler uses) is read only through its
    verified records: the release lock gives the release id, and the environment must have an `allow`
    of that id. `n` is one more than the rollbacks of that release to that environment on `branch`,
    past any id already decided. The work tree is not touched. Raises `InvalidInput` when refused.
    """
    base = repo.resolve_ref(f"refs/heads/{branch}")
    if base is None:
        raise InvalidInput(f"branch {branch!r} does not exist")
    source = repo.tree(base)
    repository = load_repository(source)
    if release not in repository.releases:
        raise InvalidInput(f"no release {release!r} on {branch} (releases/{release}.yaml)")
    if environment not in repository.environments:
        raise InvalidInput(f"no environment {environment!r} on {branch} (environments/{environment}.yaml)")
    ref = evidence or evidence_ref(repo, repository.settings)
    head = repo.resolve_ref(ref)
    tree = repo.tree(head) if head else None
    lock = read_lock(tree, release) if tree is not None else None
    never = InvalidInput(
        f"{release} was never allowed in {environment}: a rollback goes back to a release "
        f"{environment} ran before"
    )
    if lock is None:
        raise never
    index = open_index(repo, ref, head, keyring=keyring_of(tree, source))
    try:
        if not any(p.result == "allow" for p in index.priors(environment, lock.id)):
            raise never
        current = index.current(environment)
        if current is not None and current.release_id == lock.id:
            raise InvalidInput(
                f"{release} is what {environment} runs now (evidence {current.evidence}): there is "
                "nothing to roll back; a rollback goes back to an earlier release"
            )
        promotion_id = _rollback_id(repository.promotions, f"{release}--{environment}", index.decided)
    finally:
        index.close()
    path = f"promotions/{promotion_id}.yaml"
    target = f"refs/heads/promote/{promotion_id}"
    if repo.resolve_ref(target) is not None:
        raise InvalidInput(
            f"branch promote/{promotion_id} already exists: a rollback of {release} to {environment} "
            "is already requested there"
        )
    body: dict[str, str | bool] = {"apiVersion": "stella/v1", "kind": "Promotion", "release": release}
    body["environment"] = environment
    body["rollback"] = True
    if reason:
        body["reason"] = reason
    Promotion.model_validate(body)
    message = f"stella: roll {environment} back to {release}\n\nRelease {release} ({lock.id}).\n" + (
        f"\n{reason}\n" if reason else ""
    )
    data = yaml.safe_dump(body, sort_keys=False).encode()
    commit = repo.commit_files(
        target, None, {path: data}, message, author=repo.user(), parent=base, sign=repo.signing_configured()
    )
    return Requested(promotion_id, path, f"promote/{promotion_id}", commit)


def _rollback_id(
    promotions: Mapping[str, Promotion], prefix: str, decided: Callable[[str], str | None]
) -> str:
    """`<prefix>--rollback-<n>`: n is one more than the rollback ids of `prefix` on the branch, and
    past any id that is on the branch or decided on the evidence branch (an id is decided once)."""
    ours = [pid for pid in promotions if (m := ROLLBACK_ID.match(pid)) and m["promotion"] == prefix]
    n = len(ours) + 1
    while f"{prefix}--rollback-{n}" in promotions or decided(f"{prefix}--rollback-{n}") is not None:
        n += 1
    promotion_id = f"{prefix}--rollback-{n}"
    try:
        TypeAdapter(Name).validate_python(promotion_id)
    except ValueError as exc:
        raise InvalidInput(
            f"the rollback id {promotion_id!r} is not a valid promotion id (at most 128 letters, "
            "digits, . _ -): shorten the release or environment name"
        ) from exc
    return promotion_id


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
