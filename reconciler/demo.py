"""`stella demo`: the whole flow on a temporary copy of example-repo/, offline.

`steps()` runs each step for real (Git, the offline mirror, gates, rendering, signing, audit) and
yields a `Step` saying what it did and why it matters; the CLI prints them. The story's clock is fixed
(`DEMO_NOW`, a Tuesday morning), so the freeze windows and every decision are the same on any day;
Git commits keep their real dates. It runs in a temporary directory, or in one the user keeps
(`stella demo --keep DIR`: `keep_directory()`) to look at the evidence branch afterwards (`kept()` says
how). Nothing here prints, and nothing outside that directory is touched.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from . import audit
from .discover import Plugins, discover
from .errors import InvalidInput, StellaError
from .ledger import artifact_path, evidence_path
from .loop import reconcile
from .manifests import load_repository
from .passes import dry_run
from .render import LOCK_FILE
from .repo import Repo, WorkTree
from .results import PassResult
from .sign import KeySigner, generate_key, load_private_key
from .workflow import approve, approve_policy, promote

DEMO_NOW: Final = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
"""The demo's clock: Tuesday 1 December 2026, 09:30 UTC. Outside staging's weekend freeze (Friday 18:00
to Monday 08:00 UTC) and before prod's holiday freeze (from 20 December), after the example's images and
scan reports were made; every pass of the story is decided at this instant."""

TAMPERED_REF: Final = "refs/heads/demo/tampered"
"""Where the tamper step forges a statement: a copy of the evidence branch, which stays intact."""

DEMO_TARGET: Final = "dev-1"
DEMO_PROJECT: Final = "stella-demo"
"""The Compose project of the demo's deployment: its own, whatever the example's target says."""

DEMO_IDENTITY = {
    "GIT_AUTHOR_NAME": "Requester",
    "GIT_AUTHOR_EMAIL": "requester@example.com",
    "GIT_COMMITTER_NAME": "Requester",
    "GIT_COMMITTER_EMAIL": "requester@example.com",
}


@dataclass
class Step:
    title: str
    detail: str
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    ok: bool = True


def _git(cwd: Path, *argv: str) -> str:
    env = {**os.environ, **DEMO_IDENTITY, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd.parent)}
    done = subprocess.run(["git", *argv], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def _summary(result: PassResult) -> list[str]:
    lines = []
    for lock in result.locked:
        lines.append(f"locked release {lock.name} as {lock.id}")
        lines += [f"  {name}: {c.pinned}" for name, c in lock.components.items()]
    for outcome in result.outcomes:
        if outcome.decision is None:
            lines.append(f"{outcome.promotion_id}: error: {outcome.problem}")
            continue
        verdict = outcome.decision.result
        lines.append(
            f"{outcome.promotion_id}: {verdict}"
            + (f" -> evidence {outcome.evidence}" if outcome.evidence else "")
        )
        for gate in outcome.decision.gates:
            lines.append(f"  {gate.status:<7} {gate.gate}: {gate.reason}: {gate.message}")
    if result.evidence_commit:
        lines.append(f"one evidence commit: {result.evidence_commit[:12]}")
    return lines


def _ssh_key(directory: Path, identity: str) -> tuple[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / identity.split("@")[0]
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", identity, "-f", str(key)],
        check=True,
        capture_output=True,
    )
    return identity, key


def _public(key: Path) -> str:
    return " ".join(key.with_name(key.name + ".pub").read_text().split()[:2])


def _identity_env(identity: str) -> dict[str, str]:
    name = identity.split("@")[0]
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": identity,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": identity,
    }


def _policy_change(
    work: Path,
    repo: Repo,
    plugins: Plugins,
    clock: Callable[[], datetime],
    signer: KeySigner,
    requester: tuple[str, Path],
    admin: tuple[str, Path],
) -> Iterator[Step]:
    """A contributor adds themselves as an approver: nothing changes until a policy admin approves."""
    groups = work / "trust" / "groups.yaml"
    groups.write_text(
        groups.read_text().replace(
            "[release-manager@example.com, platform-lead@example.com]",
            "[release-manager@example.com, platform-lead@example.com, requester@example.com]",
        )
    )
    _git(work, "add", "-A")
    _git(
        work,
        "-c",
        "gpg.format=ssh",
        "-c",
        f"user.signingkey={requester[1]}",
        "commit",
        "-q",
        "-S",
        "-m",
        "make the requester a release manager",
    )
    pending = reconcile(repo, plugins, now=clock, signer=lambda: signer, offline=True)
    change = pending.policy_change
    yield Step(
        "Change the policy: a contributor makes themselves an approver",
        "The requester adds their own identity to release-managers on main. The change is a policy change "
        "(trust/ is governed): decisions go on under the ratified policy, where the requester approves "
        "nothing, until a policy admin who did not write the change approves it.",
        [
            f"policy change {change.proposed}: {change.state}: {change.message}",
            *(f"  changed: {path}" for path in change.changed),
        ]
        if change
        else ["no policy change seen"],
        ok=change is not None and change.state == "pending" and pending.ratification is None,
    )
    approve_policy(
        repo,
        reject=False,
        comment="reviewed: the requester joins the release managers",
        key=admin[1],
        identity=admin[0],
        environ={**os.environ, **_identity_env(admin[0])},
    )
    ratified = reconcile(repo, plugins, now=clock, signer=lambda: signer, offline=True)
    yield Step(
        "A policy admin approves the change, and the next pass ratifies it",
        "`stella approve --policy` writes approvals/policy-<hex>/platform-lead@example.com.yaml in a commit "
        "signed with the admin's key. The pass sees enough approvals under the ratified policy's "
        "governance, writes the ratification record first (signed with a key of the previous policy), "
        "and decides under the new policy from then on.",
        [f"policy {ratified.policy} ratified by {ratified.ratification}"]
        if ratified.ratification
        else [f"not ratified: {ratified.policy_change.message if ratified.policy_change else '?'}"],
        ok=ratified.ratification is not None,
    )


def _demo_target(environment: Path, docker_host: str | None) -> None:
    """Point dev's target at `docker_host` (when given) and give it the demo's own Compose project, so
    that the agent never touches containers of a project `shop` the machine may run."""
    text = environment.read_text()
    line = "{name: dev-1, agent: docker, endpoint: unix:///var/run/docker.sock, project: shop}"
    if line not in text:
        raise InvalidInput(f"{environment}: the demo expects the example's target line {line}")
    endpoint = docker_host or "unix:///var/run/docker.sock"
    environment.write_text(
        text.replace(
            line, f"{{name: {DEMO_TARGET}, agent: docker, endpoint: {endpoint}, project: {DEMO_PROJECT}}}"
        )
    )


def _deploy(work: Path, workdir: Path, key: Path, genesis: str, docker_host: str | None) -> Step:
    """The agent of dev-1 deploys what the evidence says, when a Docker Engine answers at `docker_host`."""
    from .agent import AgentOptions, run_once
    from .protocols import AgentTarget

    title = f"The agent of {DEMO_TARGET} deploys what the evidence says"
    how = (
        f"`stella agent --target {DEMO_TARGET} --repo REPO --key KEY --state-dir DIR --root {genesis[:19]}…` "
        "fetches the evidence branch, verifies the policy chain from the pinned genesis, takes dev's newest "
        "allowed decision and its lock (hashes checked), pulls every image by digest, runs Docker Compose "
        "v2 `up --wait`, writes the version sticker atomically and records a deployment signed with the "
        f"target's own key (trust/agent-keys/{DEMO_TARGET}.pub), pushed by compare-and-swap."
    )
    agents = discover(kinds=("agents",))
    environ = {**os.environ, "DB_PASSWORD": "demo-only-secret"}
    if docker_host is None:
        return Step(f"{title} (skipped)", how, ["no Docker Engine given: no deployment step"])
    try:
        engine = agents.agent("docker").open(
            AgentTarget("dev", DEMO_TARGET, docker_host, DEMO_PROJECT), environ
        )
        try:
            engine.running(DEMO_PROJECT)
        finally:
            engine.close()
    except StellaError as exc:
        return Step(
            f"{title} (skipped: no Docker Engine)",
            how + " Start a Docker Engine (or set DOCKER_HOST) to see this step run.",
            [f"skipped: {exc}"],
        )
    state = workdir / f"agent-{DEMO_TARGET}"
    options = AgentOptions(target=DEMO_TARGET, url=str(work), state_dir=state, root=genesis, timeout=60)
    signer = KeySigner(load_private_key(key))
    try:
        run = run_once(options, agents.agent, signer, signer.hint, environ)
    except StellaError as exc:
        return Step(title, how, [f"error: {exc}"], ok=False)
    lines = [f"{run.target} ({run.environment}): {run.action} {run.decision or ''}".rstrip()]
    if run.reason:
        lines.append(f"  {run.reason}")
    if run.deployment:
        lines.append(f"deployment record {run.deployment} ({run.result}), state directory {state}")
    offline = (
        " The example's images exist only in its offline mirror (mirror/oci/), which an Engine cannot pull "
        "from: here the pull fails, and the record says so: nothing is started and the sticker is not "
        "written. Point a release at images your registry holds to see it run."
    )
    return Step(
        title,
        how + ("" if run.action == "deployed" else offline),
        lines,
        data={"deployment": run.deployment, "result": run.result},
        ok=run.deployment is not None or run.action == "none",
    )


def clock_line(now: datetime = DEMO_NOW) -> str:
    """The first line of the demo's output: its clock is fixed, and why."""
    utc = now.astimezone(UTC)
    return (
        f"The demo's clock is fixed at {utc:%Y-%m-%dT%H:%M:%SZ} ({utc:%A}) so that every step is the same "
        "on any day."
    )


def keep_directory(directory: Path) -> Path:
    """`directory` made ready to keep the demo's work (`stella demo --keep DIR`), as an absolute path.

    It must not exist (it is made) or be an empty directory; anything else is `InvalidInput`, raised
    before anything is written."""
    if directory.is_dir():
        if any(directory.iterdir()):
            raise InvalidInput(f"{directory}: --keep needs a directory that does not exist or is empty")
    elif directory.exists() or directory.is_symlink():
        raise InvalidInput(f"{directory}: --keep needs a directory, and this is not one")
    else:
        try:
            directory.mkdir(parents=True)
        except OSError as exc:
            raise InvalidInput(f"{directory}: cannot make the directory: {exc.strerror or exc}") from exc
    return directory.resolve()


def kept(directory: Path) -> list[str]:
    """The last lines of `stella demo --keep DIR`: where the work is, and what to look at."""
    root = directory.resolve()
    repo = shlex.quote(str(root / "repo"))
    return [
        f"The demo's work is kept in {root}: the repository is {root / 'repo'}.",
        f"To look at the evidence branch:  git -C {repo} log --stat stella/evidence",
        f"To verify it offline:            stella audit verify --repo {repo}",
    ]


def steps(
    example: Path, workdir: Path, now: datetime = DEMO_NOW, docker_host: str | None = None
) -> Iterator[Step]:
    """Run the demo in `workdir` (empty), yielding each step as it completes; every pass is decided at
    `now` (default: the demo's fixed clock, `DEMO_NOW`). `docker_host` is the Docker Engine the
    deployment step's agent drives (None: no deployment step, and the step says so)."""

    def clock() -> datetime:
        return now

    work = workdir / "repo"
    shutil.copytree(example, work)
    key = workdir / "evidence-key.pem"
    hint = generate_key(key)
    (work / "trust" / "evidence-keys" / "demo.pub").write_bytes(key.with_name(key.name + ".pub").read_bytes())
    agent_key = workdir / "agent-dev-1.pem"
    generate_key(agent_key)
    agent_keys = work / "trust" / "agent-keys"
    agent_keys.mkdir(parents=True, exist_ok=True)
    (agent_keys / f"{DEMO_TARGET}.pub").write_bytes(agent_key.with_name(agent_key.name + ".pub").read_bytes())
    _demo_target(work / "environments" / "dev.yaml", docker_host)
    keys = workdir / "ssh"
    requester = _ssh_key(keys, "requester@example.com")
    manager = _ssh_key(keys, "release-manager@example.com")
    admin = _ssh_key(keys, "platform-lead@example.com")
    people = (requester, manager, admin)
    (work / "trust" / "allowed_signers").write_text(
        "".join(f'{who} namespaces="git" {_public(key)}\n' for who, key in people)
    )
    _git(work, "init", "-q", "-b", "main")
    _git(work, "config", "user.name", "Requester")
    _git(work, "config", "user.email", "requester@example.com")
    _git(work, "add", "-A")
    _git(work, "commit", "-q", "-m", "demo: example repository")
    yield Step(
        "A Git repository like yours",
        "example-repo/ copied and committed: environments dev -> staging -> prod, release shop-1.4.0 "
        "(tags only), a promotion to dev, templates, trust material and an offline OCI mirror. "
        f"A fresh P-256 evidence key (hint {hint}) is trusted in trust/evidence-keys/demo.pub; its "
        "private half stays outside Git. trust/allowed_signers maps identities to SSH keys: Stella takes "
        "who requested and who approved from commit signatures, never from what a file says.",
        [f"repository: {work}"] + [f"{who}: {_public(key).split()[0]} key {key.name}" for who, key in people],
    )

    repository = load_repository(WorkTree(work))
    yield Step(
        "Validate every manifest",
        "Strict models, unknown fields rejected, every problem reported at once as file:line.",
        [
            f"{len(repository.environments)} environments, {len(repository.releases)} release(s), "
            f"{len(repository.promotions)} promotion(s): valid"
        ],
    )

    repo = Repo(work)
    plugins = discover(offline=True)
    signer = KeySigner(load_private_key(key))
    first = reconcile(repo, plugins, now=clock, signer=lambda: signer, offline=True)
    genesis = first.ratification
    yield Step(
        "Reconcile: ratify the policy, lock the release, decide the promotion, sign the evidence",
        "The first pass ratifies the policy (stella.yaml, environments/, templates/, trust/) as the "
        "genesis: from now on every decision is made under the ratified policy, and changing it needs "
        "the policy admins' approval. Tags resolve once, from mirror/oci/, to digests (the release id is "
        "their hash). The dev promotion passes every gate, so the compose lock is rendered with "
        "digest-pinned images, and the statements, inputs, DSSE bundles and the lock land in ONE commit "
        "on refs/heads/stella/evidence.",
        [f"genesis: policy {first.policy} ratified by {genesis}", *_summary(first)],
        data={"genesis": genesis},
        ok=not first.problems and not first.transient and genesis is not None,
    )

    tree = repo.tree(first.evidence_commit) if first.evidence_commit else None
    recorded = next((o for o in first.recorded), None)
    if tree is not None and recorded is not None and recorded.evidence:
        hex_id = recorded.evidence.removeprefix("sha256:")
        lock_name = next(p for p in tree.listdir("artifacts"))
        lock = (tree.read(artifact_path(lock_name, LOCK_FILE)) or b"").decode()
        yield Step(
            "What an auditor finds on the evidence branch",
            "Every file is named by the sha256 of its bytes; the statement is RFC 8785 canonical JSON.",
            [
                f"evidence/{hex_id}.json             (in-toto Statement v1)",
                f"evidence/{hex_id}.sigstore.json    (Sigstore bundle v0.3, DSSE)",
                f"artifacts/{lock_name}/compose.stella.lock.yml:",
                *("    " + line for line in lock.splitlines()),
            ],
        )

    _git(work, "config", "gpg.format", "ssh")
    _git(work, "config", "user.signingkey", str(requester[1]))
    commit = promote(repo, "main", "shop-1.4.0", "staging", "ready for staging")
    _git(work, "config", "--unset", "user.signingkey")
    plan = dry_run(repo, plugins, now=clock(), commit=commit, only={"shop-1.4.0--staging"}, offline=True)
    yield Step(
        "Request staging through a pull request, and plan it",
        "`stella promote` commits the promotion, signed by the requester, on branch "
        "promote/shop-1.4.0--staging; CI runs `stella plan` on it and shows, per gate, why it would pass, "
        "wait or be blocked. Nothing is written.",
        _summary(plan),
    )

    branch = "promote/shop-1.4.0--staging"
    _git(work, "checkout", "-q", branch)
    approve(
        repo,
        plugins,
        "shop-1.4.0--staging",
        reject=False,
        comment="checked in dev",
        key=manager[1],
        identity=manager[0],
        offline=True,
        environ={**os.environ, **_identity_env(manager[0])},
    )
    head = repo.resolve_ref("HEAD")
    approved = dry_run(repo, plugins, now=clock(), commit=head, only={"shop-1.4.0--staging"}, offline=True)
    yield Step(
        "A release manager approves on the branch",
        "`stella approve` writes approvals/shop-1.4.0--staging/release-manager@example.com.yaml, bound to "
        "the release id, in a commit signed with the release manager's key.",
        _summary(approved),
    )

    _git(work, "checkout", "-q", "main")
    _git(work, "merge", "-q", "--no-ff", "-m", f"Merge {branch}", branch)
    second = reconcile(repo, plugins, now=clock, signer=lambda: signer, offline=True)
    yield Step(
        "Merge (a merge commit keeps the signatures) and reconcile",
        "staging promotes from dev, needs one release manager who is not the requester, and is frozen at "
        "weekends (Friday 18:00 to Monday 08:00 UTC; the demo's clock says Tuesday morning): the decision is "
        "recorded when every gate passes, with the requester and the approver in the evidence. A pending "
        "decision leaves no record.",
        _summary(second) or ["nothing new"],
        ok=not second.problems,
    )

    yield from _policy_change(work, repo, plugins, clock, signer, requester, admin)

    if genesis is not None:
        yield _deploy(work, workdir, agent_key, genesis, docker_host)

    report = audit.verify(repo, "refs/heads/stella/evidence", audit.load_keys(repo, "main"), root=genesis)
    yield Step(
        "Verify the evidence branch offline, from the pinned genesis",
        "Hashes, each signature against the evidence keys of the policy its record names, the policy "
        "chain from the genesis (--root), the requesters' and approvers' SSH signatures again, chain "
        "links and history (no file ever changed or deleted, the ref only fast-forwarded).",
        [
            f"OK: {report.records} record(s), {report.bundles} bundle(s), {report.commits} commit(s), "
            f"{len(report.policies)} ratified polic(ies), {report.identities} signed commit(s) re-verified"
        ]
        if report.ok
        else [str(f) for f in report.findings],
        ok=report.ok,
    )

    if recorded is not None and recorded.evidence:
        path = evidence_path(recorded.evidence.removeprefix("sha256:"))
        head = repo.resolve_ref("refs/heads/stella/evidence")
        forged = (repo.tree(head or "").read(path) or b"").replace(b'"result":"allow"', b'"result":"deny"')
        # on a copy of the branch: the real one stays as the passes wrote it, for `--keep` to show
        repo.commit_files(TAMPERED_REF, None, {path: forged}, "tamper with a statement", parent=head)
        tampered = audit.verify(repo, TAMPERED_REF, audit.load_keys(repo, "main"), root=genesis)
        yield Step(
            "Tamper with a statement, and verify again",
            "Someone with push access edits a recorded decision (here on a copy of the evidence branch, "
            f"{TAMPERED_REF.removeprefix('refs/heads/')}): every check that touches it fails.",
            [f"FAIL {finding}" for finding in tampered.findings],
            data={"findings": len(tampered.findings)},
            ok=not tampered.ok,
        )
