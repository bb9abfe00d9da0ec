"""`stella rollback prod --to shop-1.3.0` through approvals, deployed on every target; the records chain.

Real Git with real SSH-signed commits (requester, approvers), the real registry, a real Docker Engine
and Docker Compose v2. `prod` has two targets (two Compose projects on one engine, rolled out one batch
at a time), needs one release-manager's approval for an ordinary promotion and, for a rollback, two
approvals from release-managers or on-call (`rollbackApprovals`). shop-1.3.0 then shop-1.4.0 are
promoted, approved, merged with merge commits, decided and deployed by each target's `stella agent`;
then `stella rollback` requests 1.3.0 again: pending (and nothing moves) with one approval, allowed
with the second, and deployed everywhere, each target's deployment records chained
1.3.0 → 1.4.0 → the rollback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.sign import generate_key
from tests.support.busybox_image import push_busybox
from tests.support.cli import stella
from tests.support.dockerd import DockerDaemon, start_dockerd
from tests.support.pipeline import Workspace
from tests.support.registry import RegistryServer
from tests.support.repos import commit_all, git, write_files
from tests.support.ssh import Person, allowed_signers, person

OLD, NEW = "shop-1.3.0", "shop-1.4.0"
ROLLBACK = f"{OLD}--prod--rollback-1"
TARGETS = ("web-1", "web-2")

PROD = """\
apiVersion: stella/v1
kind: Environment
name: prod
approvals: {required: 1, groups: [release-managers]}
rollbackApprovals: {required: 2, groups: [release-managers, oncall]}
template: templates/shop.compose.yml.j2
rollout: {strategy: rolling, batchSize: 1, healthTimeout: 20s}
targets:
"""

GROUPS = """\
apiVersion: stella/v1
kind: Groups
groups:
  release-managers: [release-manager@example.com]
  oncall: [oncall@example.com]
"""

# healthy at once (Compose `up --wait` returns after the first health check)
TEMPLATE = """\
services:
{% for name, c in components.items() %}
  {{ name | tojson }}:
    image: {{ c.pinned }}
    network_mode: none
    command: ["/bin/busybox", "sleep", "3600"]
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD", "/bin/busybox", "true"]
      interval: 250ms
      retries: 2
{% endfor %}
"""


@pytest.fixture(scope="module")
def engine() -> Iterator[DockerDaemon]:
    daemon = start_dockerd()
    try:
        yield daemon
    finally:
        daemon.close()


@pytest.fixture(autouse=True)
def _clean(engine: DockerDaemon) -> Iterator[None]:
    yield
    engine.remove_containers()


class Site:
    """The repository, its people and the agents of prod's targets."""

    def __init__(self, tmp: Path, registry: RegistryServer, engine: DockerDaemon) -> None:
        self.tmp, self.registry, self.engine = tmp, registry, engine
        keys = tmp / "keys"
        self.team = {
            role: person(tmp / "ssh", f"{role}@example.com")
            for role in ("requester", "release-manager", "oncall")
        }
        generate_key(keys / "evidence.pem")
        root = tmp / "repo"
        files: dict[str, str | bytes | None] = {
            "stella.yaml": "apiVersion: stella/v1\nkind: Settings\ntenant: shop\n",
            "environments/prod.yaml": PROD
            + "".join(
                f"  - {{name: {t}, agent: docker, endpoint: '{engine.endpoint}', project: prod-{t}}}\n"
                for t in TARGETS
            ),
            "templates/shop.compose.yml.j2": TEMPLATE,
            "trust/evidence-keys/ci.pub": (keys / "evidence.pem.pub").read_bytes(),
            "trust/allowed_signers": allowed_signers(*self.team.values()),
            "trust/groups.yaml": GROUPS,
        }
        self.agent_keys = {t: keys / f"{t}.pem" for t in TARGETS}
        for target, key in self.agent_keys.items():
            generate_key(key)
            files[f"trust/agent-keys/{target}.pub"] = key.with_name(key.name + ".pub").read_bytes()
        write_files(root, files)
        git(root, "init", "-q", "-b", "main")
        requester = self.team["requester"]
        git(root, "config", "user.name", "requester")
        git(root, "config", "user.email", requester.identity)
        git(root, "config", "gpg.format", "ssh")
        git(root, "config", "user.signingkey", str(requester.key))
        commit_all(root, "prod: two targets, approvals, rollback approvals, agent keys")
        self.ws = Workspace(root, keys / "evidence.pem")
        genesis = self.reconcile()
        self.genesis = str(genesis["ratification"])
        assert self.genesis.startswith("sha256:"), genesis

    def as_(self, role: str, *args: str) -> Any:
        who: Person = self.team[role]
        return self.ws.stella(*args, env=who.git_env())

    def reconcile(self) -> dict[str, Any]:
        run = self.ws.stella("reconcile", "--once", "-o", "json")
        assert run.code == 0, run.out + run.err
        passed: dict[str, Any] = run.json()
        return passed

    def decisions(self) -> dict[str, dict[str, Any]]:
        return {d["promotion"]: d for d in self.reconcile()["decisions"]}

    def approve(self, role: str, promotion: str) -> None:
        """`stella approve` on the promotion's branch, in a commit signed with the approver's key."""
        who = self.team[role]
        self.ws.git("checkout", "-q", f"promote/{promotion}")
        run = self.as_(role, "approve", promotion, "--key", str(who.key), "--identity", who.identity)
        assert run.code == 0, run.out + run.err
        assert "BEGIN SSH SIGNATURE" in self.ws.git("cat-file", "-p", "HEAD")
        self.ws.git("checkout", "-q", "main")

    def merge(self, promotion: str) -> None:
        """Merge the pull request's branch with a merge commit (it keeps the signed commits)."""
        self.ws.git("merge", "-q", "--no-ff", "-m", f"Merge promote/{promotion}", f"promote/{promotion}")

    def release(self, name: str) -> str:
        """Push an image, `stella release create` it, commit; the pinned reference."""
        image = push_busybox(self.registry.host, self.tmp / "images", "shop/web", name, marker=name)
        created = self.ws.stella("release", "create", name, f"web={self.registry.host}/shop/web:{name}")
        assert created.code == 0, created.out + created.err
        commit_all(self.ws.root, f"release {name}")
        return image

    def promote(self, name: str) -> dict[str, Any]:
        """Request `name` in prod (a signed commit), one approval, merge, reconcile: the decision."""
        promotion = f"{name}--prod"
        run = self.as_("requester", "promote", name, "--to", "prod", "--reason", f"ship {name}")
        assert run.code == 0, run.out + run.err
        self.approve("release-manager", promotion)
        self.merge(promotion)
        decision = self.decisions()[promotion]
        assert decision["decision"] == "allow", decision
        return decision

    def agent(self, target: str) -> dict[str, Any]:
        run = stella(
            "agent",
            "--target", target,
            "--repo", self.ws.root,
            "--key", self.agent_keys[target],
            "--state-dir", self.state(target),
            "--root", self.genesis,
            "--timeout", "20",
            "-o", "json",
        )  # fmt: skip
        assert run.code in (0, 1), run.out + run.err
        done: dict[str, Any] = run.json()
        return done

    def deploy_everywhere(self, decision: str) -> dict[str, str]:
        """Each target's agent, in rollout order, deploys `decision`; the deployment record per target."""
        records = {}
        for target in TARGETS:
            done = self.agent(target)
            assert (done["action"], done["result"], done["decision"]) == (
                "deployed",
                "succeeded",
                decision,
            ), done
            records[target] = str(done["deployment"])
        return records

    def state(self, target: str) -> Path:
        return self.tmp / f"state-{target}"

    def sticker(self, target: str) -> dict[str, Any]:
        sticker: dict[str, Any] = json.loads((self.state(target) / "stella.version.json").read_bytes())
        return sticker

    def predicate(self, evidence: str) -> dict[str, Any]:
        statement = json.loads(self.ws.show(f"evidence/{evidence.removeprefix('sha256:')}.json"))
        predicate: dict[str, Any] = statement["predicate"]
        return predicate

    def running(self, target: str) -> list[tuple[str, str, str, list[str]]]:
        """`docker inspect` of the target's project: (service, state, reference, image RepoDigests)."""
        client = self.engine.client()
        try:
            found = client.containers.list(
                all=True, filters={"label": f"com.docker.compose.project=prod-{target}"}
            )
            seen = []
            for container in found:
                attrs = container.attrs
                image = client.images.get(attrs["Image"]).attrs
                seen.append(
                    (
                        attrs["Config"]["Labels"]["com.docker.compose.service"],
                        attrs["State"]["Status"],
                        attrs["Config"]["Image"],
                        sorted(image["RepoDigests"]),
                    )
                )
            return seen
        finally:
            client.close()

    def status(self) -> tuple[int, dict[str, Any]]:
        run = self.ws.stella("status", "prod", "-o", "json")
        assert run.code in (0, 1), run.out + run.err
        (prod,) = run.json()["environments"]
        return run.code, prod


def _runs(site: Site, image: str) -> None:
    """Every target runs exactly `image` (host/repo@sha256:…), as the engine reports it."""
    repository, _, digest = image.partition("@")
    for target in TARGETS:
        assert site.running(target) == [("web", "running", image, [f"{repository}@{digest}"])], target


def _gates(decision: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["gate"]: g for g in decision["gates"]}


@pytest.mark.registry
def test_rollback_through_approvals_is_deployed_on_every_target_and_chains(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    site = Site(tmp_path, registry, engine)

    old_image = site.release(OLD)
    old = site.promote(OLD)
    old_deploys = site.deploy_everywhere(old["evidence"])
    _runs(site, old_image)

    new_image = site.release(NEW)
    assert new_image.partition("@")[2] != old_image.partition("@")[2]
    new = site.promote(NEW)
    new_deploys = site.deploy_everywhere(new["evidence"])
    _runs(site, new_image)

    # the rollback request: a signed commit on a branch of its own
    run = site.as_(
        "requester", "rollback", "prod", "--to", OLD, "--reason", "1.4.0 breaks checkout", "-o", "json"
    )
    assert run.code == 0, run.out + run.err
    assert (run.json()["promotion"], run.json()["branch"]) == (ROLLBACK, f"promote/{ROLLBACK}")
    assert "BEGIN SSH SIGNATURE" in site.ws.git("cat-file", "-p", f"promote/{ROLLBACK}")

    # the pull request's plan before any approval: pending
    site.ws.git("checkout", "-q", f"promote/{ROLLBACK}")
    plan = site.ws.stella("plan", "--base", "main", "-o", "json")
    site.ws.git("checkout", "-q", "main")
    assert plan.code == 1, plan.out + plan.err
    (planned,) = plan.json()["decisions"]
    assert (planned["promotion"], planned["decision"]) == (ROLLBACK, "pending"), planned
    assert _gates(planned)["approvals"]["reason"] == "awaiting-approvals", planned

    # one approval is enough for a promotion to prod, not for a rollback: it stays pending
    site.approve("release-manager", ROLLBACK)
    site.merge(ROLLBACK)
    head = site.ws.git("rev-parse", "refs/heads/stella/evidence")
    pending = site.decisions()[ROLLBACK]
    assert (pending["decision"], pending["evidence"]) == ("pending", None), pending
    approvals = _gates(pending)["approvals"]
    assert (approvals["status"], approvals["reason"]) == ("pending", "awaiting-approvals"), approvals
    assert (approvals["facts"]["policy"], approvals["facts"]["required"]) == ("rollbackApprovals", 2)
    assert (
        approvals["message"]
        == "1 of 2 approval(s) from release-manager@example.com; can approve: oncall@example.com"
    )
    assert site.ws.git("rev-parse", "refs/heads/stella/evidence") == head  # no record of a pending decision
    stickers = {t: site.sticker(t) for t in TARGETS}
    for target in TARGETS:
        done = site.agent(target)
        assert (done["action"], done["decision"], done["deployment"]) == ("none", new["evidence"], None), done
        assert site.sticker(target) == stickers[target]
    _runs(site, new_image)  # nothing changed on the targets
    code, prod = site.status()
    assert code == 0 and prod["shouldRun"]["release"]["name"] == NEW, prod

    # the second approval, from on-call (a group an ordinary promotion to prod does not take)
    site.approve("oncall", ROLLBACK)
    site.merge(ROLLBACK)
    decision = site.decisions()[ROLLBACK]
    assert (decision["decision"], decision["release"], decision["environment"]) == ("allow", OLD, "prod")
    gates = _gates(decision)
    assert gates["approvals"]["message"] == "approved by oncall@example.com, release-manager@example.com"
    assert gates["approvals"]["facts"]["policy"] == "rollbackApprovals"
    assert (gates["environment-order"]["status"], gates["environment-order"]["reason"]) == (
        "pass",
        "allowed-here-before",
    )
    rollback = decision["evidence"]
    predicate = site.predicate(rollback)
    assert predicate["type"] == "release_decision" and predicate["promotion"]["rollback"] is True, predicate
    assert predicate["promotion"]["id"] == ROLLBACK
    assert predicate["release"]["id"] == site.predicate(old["evidence"])["release"]["id"]
    assert predicate["actors"]["requester"]["identity"] == "requester@example.com"
    # prod's chain of decisions: 1.3.0 → 1.4.0 → the rollback
    assert predicate["previous"] == new["evidence"]
    assert site.predicate(new["evidence"])["previous"] == old["evidence"]

    # a rolling rollout like any decision: web-2 waits for web-1
    waiting = site.agent("web-2")
    assert (waiting["action"], waiting["decision"]) == ("waiting", rollback), waiting
    _runs(site, new_image)
    rolled = site.deploy_everywhere(rollback)
    _runs(site, old_image)  # exactly shop-1.3.0's digest, pulled by digest, on every target

    for target in TARGETS:
        sticker = site.sticker(target)
        assert sticker["decision"] == rollback and sticker["deployment"] == rolled[target], sticker
        assert sticker["release"]["name"] == OLD
        assert sticker["release"]["components"]["web"]["digest"] == old_image.partition("@")[2]
        assert sticker["previous"]["decision"] == new["evidence"], sticker
        mirrored = json.loads(site.ws.show(f"targets/prod/{target}/stella.version.json"))
        assert mirrored == sticker
        # the target's chain of deployment records: 1.3.0's → 1.4.0's → the rollback's
        chain = [old_deploys[target], new_deploys[target], rolled[target]]
        carried = [old["evidence"], new["evidence"], rollback]
        for before, record, carried_out in zip([None, *chain[:-1]], chain, carried, strict=True):
            deployed = site.predicate(record)
            assert (deployed["type"], deployed["result"]) == ("deployment", "succeeded"), deployed
            assert deployed["target"]["name"] == target
            assert deployed["decision"] == carried_out
            assert deployed["previous"] == before, (target, record)
        assert [c["digest"] for c in site.predicate(rolled[target])["containers"]] == [
            old_image.partition("@")[2]
        ]

    drift = site.ws.stella("drift", "prod", "-o", "json")
    assert drift.code == 0, drift.out + drift.err
    verify = site.ws.stella("audit", "verify", "--root", site.genesis)
    assert verify.code == 0, verify.out + verify.err
    replay = site.ws.stella("replay", "--all")
    assert replay.code == 0, replay.out + replay.err
    code, prod = site.status()
    assert code == 0, prod
    assert (prod["shouldRun"]["evidence"], prod["shouldRun"]["release"]["name"]) == (rollback, OLD)
    assert prod["rollout"]["state"] == "complete", prod["rollout"]
    for shown in prod["targets"]:
        assert shown["state"] == "in-sync", shown
        assert shown["sticker"]["verified"] and shown["sticker"]["release"]["name"] == OLD, shown
        assert shown["sticker"]["decision"] == rollback
        assert shown["lastDeployment"]["evidence"] == rolled[shown["name"]]
