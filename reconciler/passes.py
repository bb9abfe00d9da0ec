"""The pass as named steps: read, govern, load, lock, decide -- what `reconcile`, `plan` and `why` share.

A pass is a list of steps with one signature, `step(state: PassState) -> None`, run in order on one
`PassState` (as a Flux reconciler runs its sub-reconcilers on one object): each step reads what earlier
steps left on the state and adds its own part, so each can be run and tested alone on a state built by
hand. `EVALUATE` decides without writing; `loop.reconcile` appends the steps that sign and commit.

    read_source        the branch commit (or the commit a plan asks for), and its tree
    open_evidence      the evidence ref, its head, the keyring of its policies, its index
    govern             the ratified policy to decide under (a genesis or a ratification to write)
    load_manifests     the repository under that policy (only what changed, when incremental)
    lock_releases      new releases resolved and locked, within `limits.newDigestsPerDay`
    decide_promotions  every open promotion decided, in environment order
    note_rechecks      what the next incremental pass must look at again

No printing and no writing to Git here; the evidence index is kept or discarded by the caller.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .chain import evidence_ref, keyring_of
from .decider import Decider
from .discover import Plugins
from .errors import InvalidInput, Problem, StellaError
from .gates.quota import day_start
from .governance import Keyring, PolicyView
from .history import EvidenceIndex
from .indexing import open_index
from .locking import DigestBudget, digests_locked_since, lock_releases
from .manifests import held_promotion, load_repository, load_settings, manifest_of
from .models import Environment, ReleaseLock, Repository
from .ratify import Governed, Ratification, govern
from .repo import GitTree, Repo
from .resolve import Resolver
from .results import Outcome, PassResult


@dataclass(frozen=True)
class PassOptions:
    """What the caller asked of the pass."""

    now: datetime
    branch: str | None = None
    commit: str | None = None
    """Decide this commit instead of the branch head (plans of a pull request)."""
    only: set[str] | None = None
    """Decide only these promotions."""
    incremental: bool = False
    """Read only what changed since the last pass (reconcile)."""
    offline: bool = False
    progress: Callable[[str], None] | None = None


@dataclass
class PassState:
    """Everything one attempt of a pass has read and decided so far; each step fills its part."""

    repo: Repo
    plugins: Plugins
    options: PassOptions
    branch: str = ""
    commit: str = ""
    source: GitTree | None = None
    ref: str = ""
    evidence_head: str | None = None
    evidence: GitTree | None = None
    keyring: Keyring | None = None
    index: EvidenceIndex | None = None
    governed: Governed | None = None
    ratification: Ratification | None = None
    view: PolicyView | None = None
    repository: Repository | None = None
    offline: bool = False
    result: PassResult | None = None
    budget: DigestBudget | None = None
    locks: dict[str, ReleaseLock] = field(default_factory=dict)
    new_locks: dict[str, ReleaseLock] = field(default_factory=dict)
    decider: Decider | None = None
    recheck: dict[str, list[str]] = field(default_factory=dict)
    resolver: Resolver | None = None
    """The registries opened from `stella.yaml` (resolving tags, and the gates that read registries)."""
    resources: ExitStack = field(default_factory=ExitStack)
    """What the steps opened; closed when the steps end (`run_steps`)."""

    @property
    def now(self) -> datetime:
        """The pass's instant: UTC, whole seconds (as every time in evidence)."""
        return self.options.now.astimezone(UTC).replace(microsecond=0)

    def progress(self, message: str) -> None:
        if self.options.progress:
            self.options.progress(message)


Step = Callable[[PassState], None]


def source_commit(repo: Repo, branch: str | None = None) -> tuple[str, str]:
    """(branch, commit) the reconciler reads: `branch` or the one `stella.yaml` at HEAD names."""
    if branch is None:
        head = repo.resolve_ref("HEAD")
        branch = load_settings(repo.tree(head)).branch if head else "main"
    commit = repo.resolve_ref(f"refs/heads/{branch}")
    if commit is None:
        raise InvalidInput(f"{repo.path}: branch {branch!r} does not exist (stella.yaml `branch:`)")
    return branch, commit


def read_source(state: PassState) -> None:
    """The commit to decide: the branch head, or the commit the caller named."""
    options = state.options
    if options.commit is None:
        state.branch, state.commit = source_commit(state.repo, options.branch)
    else:
        state.branch, state.commit = options.branch or options.commit[:12], options.commit
    state.source = state.repo.tree(state.commit)


def open_evidence(state: PassState) -> None:
    """The evidence ref (where the policy chain is), its head, its policies' keys and its index."""
    assert state.source is not None
    state.ref = evidence_ref(state.repo, load_settings(state.source))
    state.evidence_head = state.repo.resolve_ref(state.ref)
    state.evidence = state.repo.tree(state.evidence_head) if state.evidence_head else None
    state.keyring = keyring_of(state.evidence, state.source)
    state.index = open_index(state.repo, state.ref, state.evidence_head, keyring=state.keyring)


def govern_step(state: PassState) -> None:
    """The policy to decide under; a genesis or an approved change is ratified first, in this pass."""
    assert state.index is not None and state.keyring is not None and state.source is not None
    state.governed, state.ratification = govern(
        state.repo, state.index, state.keyring, state.source, state.now
    )
    if state.ratification.index_record is not None:
        state.index.add(state.ratification.index_record)
    state.view = PolicyView(state.governed.policy, state.source)


def load_manifests(state: PassState) -> None:
    """The repository under the ratified policy: every manifest, or (incremental) what changed."""
    assert state.governed is not None and state.view is not None and state.index is not None
    governed, options = state.governed, state.options
    scope = None
    if options.incremental and not governed.ratified_now:
        scope = _incremental(state.repo, state.index, state.commit)
    if options.only is not None:
        scope = (options.only, set())
    proposed = governed.proposed.files if governed.proposed else {}
    pending_envs = frozenset(
        name.removeprefix("environments/").removesuffix(".yaml")
        for name in proposed
        if name.startswith("environments/") and name.count("/") == 1
    )
    if scope is None:
        repository = load_repository(state.view, pending_environments=pending_envs, contain=True)
    else:
        repository = load_repository(
            state.view,
            promotions=scope[0],
            releases=scope[1],
            pending_environments=pending_envs,
            contain=True,
        )
    state.repository = repository
    state.offline = options.offline or repository.settings.offline
    result = PassResult(source_commit=state.commit, policy=governed.policy.id, policy_change=governed.change)
    result.problems += repository.problems
    result.ratification = state.ratification.record if state.ratification else None
    result.ignored = [f"{path}: {message}" for path, _, message in state.index.rejected()]
    state.result = result


def lock_step(state: PassState) -> None:
    """Lock new releases (tags resolved once), within the day's budget of new digests."""
    assert state.repository is not None and state.result is not None and state.view is not None
    repository = state.repository
    digest_limit = repository.settings.limits.newDigestsPerDay
    if digest_limit is not None:
        used = digests_locked_since(state.repo, state.evidence_head, day_start(state.now))
        state.budget = DigestBudget(digest_limit.hard, digest_limit.soft, used)
    resolver = Resolver(repository.settings, state.plugins, state.view, offline=state.offline)
    state.resolver = state.resources.enter_context(resolver)
    state.locks, state.new_locks = lock_releases(
        repository, state.evidence, resolver, state.result, state.options.progress, state.budget
    )


def decide_promotions(state: PassState) -> None:
    """Decide every open promotion (none recorded yet), shallow environments first."""
    assert state.repository is not None and state.result is not None and state.index is not None
    assert state.view is not None and state.governed is not None and state.ratification is not None
    repository, index, result = state.repository, state.index, state.result
    decider = Decider(
        state.repo, state.plugins, repository, state.view, state.now, index, state.locks, state.offline
    )
    decider.policy, decider.policy_record = state.governed.policy, state.governed.record
    decider.registries = state.resolver.registry if state.resolver is not None else None
    decider.deferred = state.budget.deferred if state.budget is not None else {}
    ratification = state.ratification
    decider.files.update(ratification.files)
    if ratification.statement is not None and ratification.keys is not None:
        hex_id, raw = ratification.statement
        decider.statements[hex_id] = raw
        decider.signing[hex_id] = ratification.keys
    state.decider = decider
    open_ids = [pid for pid in repository.promotions if index.decided(pid) is None]
    order = sorted(
        open_ids,
        key=lambda pid: (_depth(repository.environments, repository.promotions[pid].environment), pid),
    )
    for pid in order:
        state.progress(f"deciding {pid}")
        try:
            outcome = decider.decide(pid)
        except StellaError as exc:
            promotion = repository.promotions[pid]
            outcome = Outcome(pid, promotion.environment, promotion.release, problem=str(exc))
        result.outcomes.append(outcome)
        if outcome.problem:
            result.problems.append(Problem(f"promotions/{pid}.yaml", None, outcome.problem))


def note_rechecks(state: PassState) -> None:
    """What the next incremental pass must read again: pending or broken promotions, unlocked releases."""
    assert state.repository is not None and state.result is not None
    repository, result = state.repository, state.result
    held = {h for p in repository.problems if (h := held_promotion(p.file)) is not None}
    state.recheck = {
        "promotions": sorted(
            {
                o.promotion_id
                for o in result.outcomes
                if o.problem or (o.decision is not None and o.decision.result == "pending")
            }
            | held
        ),
        "releases": sorted(
            {
                p.file.split("/")[-1].removesuffix(".yaml")
                for p in result.problems
                if p.file.startswith("releases/")
            }
            | {name for name in repository.releases if name not in state.locks}
        ),
    }


EVALUATE: tuple[Step, ...] = (
    read_source,
    open_evidence,
    govern_step,
    load_manifests,
    lock_step,
    decide_promotions,
    note_rechecks,
)
"""The steps that decide without writing, in order."""


@dataclass
class Evaluation:
    """A pass's decisions before they are written: what `plan`, `why` and `reconcile` share.

    Holds the evidence index open: `keep()` after the evidence commit landed (the index stores this
    pass's records and where it stopped), `discard()` otherwise (they are forgotten).
    """

    state: PassState

    @property
    def result(self) -> PassResult:
        assert self.state.result is not None
        return self.state.result

    def keep(self, evidence_head: str | None) -> None:
        index = self.state.index
        assert index is not None
        index.keep(
            evidence=evidence_head or "",
            source=self.result.source_commit,
            recheck=json.dumps(self.state.recheck, sort_keys=True),
        )
        index.close()

    def discard(self) -> None:
        discard(self.state)


def discard(state: PassState) -> None:
    """Forget what the attempt added to the evidence index, and close it."""
    if state.index is not None:
        state.index.discard()
        state.index.close()


def run_steps(state: PassState, steps: Sequence[Step]) -> None:
    """Run `steps` in order on `state`; on any failure the index is discarded before re-raising.
    What the steps opened (the registries) is closed when they end."""
    with state.resources:
        try:
            for step in steps:
                step(state)
        except BaseException:
            discard(state)
            raise


def evaluate(
    repo: Repo,
    plugins: Plugins,
    *,
    now: datetime,
    branch: str | None = None,
    commit: str | None = None,
    only: set[str] | None = None,
    incremental: bool = False,
    offline: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Decide what is open, without signing or writing. Used by `reconcile`, `plan` and `why`.

    Decisions are made under the ratified policy (DESIGN §8); the first pass ratifies the genesis, and
    a policy change with enough approvals is ratified before anything is decided.
    """
    options = PassOptions(now, branch, commit, only, incremental, offline, progress)
    state = PassState(repo, plugins, options)
    run_steps(state, EVALUATE)
    return Evaluation(state)


def dry_run(
    repo: Repo,
    plugins: Plugins,
    *,
    now: datetime,
    commit: str | None = None,
    only: set[str] | None = None,
    offline: bool = False,
    progress: Callable[[str], None] | None = None,
) -> PassResult:
    """Decide as a pass would, and write nothing (`plan`, `why`)."""
    ev = evaluate(repo, plugins, now=now, commit=commit, only=only, offline=offline, progress=progress)
    ev.discard()
    for outcome in ev.result.outcomes:
        outcome.evidence = None  # computed, never written
    return ev.result


def _depth(environments: Mapping[str, Environment], name: str) -> int:
    if name not in environments:
        return len(environments)
    depth, current = 0, environments[name].promotesFrom
    while current is not None and current in environments and depth < len(environments):
        depth, current = depth + 1, environments[current].promotesFrom
    return depth


def _incremental(repo: Repo, index: EvidenceIndex, commit: str) -> tuple[set[str], set[str]] | None:
    """(promotions, releases) to look at since the last pass, or None when a full pass is needed.

    Only promotions, approvals and releases changed since the last pass's source commit, plus what that
    pass left to re-check (pending promotions, releases with problems). Any other change (settings,
    environments, trust, templates, mirror data) can change any decision: then everything is read.
    """
    previous = index.meta("source")
    recheck = json.loads(index.meta("recheck") or "{}")
    if not previous or not isinstance(recheck, dict) or not repo.is_ancestor(previous, commit):
        return None
    promotions = set(recheck.get("promotions", []))
    releases = set(recheck.get("releases", []))
    for path in repo.changed_paths(previous, commit) if previous != commit else []:
        kind = manifest_of(path)
        if kind is None:
            return None
        if kind[0] == "policy":
            continue  # judged every pass while a policy change is open
        (promotions if kind[0] in ("promotion", "approval") else releases).add(kind[1])
    return promotions, releases
