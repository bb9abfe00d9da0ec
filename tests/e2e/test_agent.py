"""`stella agent` end to end: promote -> reconcile -> the agent deploys exactly the lock's digests on a
real Docker Engine (its own dockerd on a private socket) from the real registry, writes its sticker and a
deployment record signed with its key, and `audit verify` accepts it; attacks on the way are refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.evidence import canonical, sha256_hex
from reconciler.sign import KeySigner, generate_key, load_private_key
from tests.support.busybox_image import push_busybox
from tests.support.cli import STELLA, Run, stella
from tests.support.dockerd import DockerDaemon, start_dockerd
from tests.support.gitdaemon import start_git_daemon
from tests.support.registry import RegistryServer
from tests.support.repos import commit_all, git, write_files
from tests.support.tamper_proxy import TamperProxy

SECRET = "s3cr3t-value-never-written"
TEMPLATE = """\
services:
{% for name, c in components.items() %}
  {{ name | tojson }}:
    image: {{ c.pinned }}
    network_mode: none
    command: ["/bin/busybox", "sleep", "3600"]
    stop_grace_period: 1s
    healthcheck: {test: ["CMD", "/bin/busybox", "true"], interval: 1s}
    environment:
{% for key in secrets %}
      {{ key }}: {{ secret(key) }}
{% endfor %}
{% endfor %}
"""


@pytest.fixture(scope="module")
def engine() -> Iterator[DockerDaemon]:
    daemon = start_dockerd()
    try:
        yield daemon
    finally:
        daemon.close()


class Site:
    """A repository with one environment whose target is `engine`, and the keys of its evidence and agent."""

    def __init__(self, root: Path, evidence_key: Path, agent_key: Path, state: Path) -> None:
        self.root, self.evidence_key, self.agent_key, self.state = root, evidence_key, agent_key, state

    def stella(self, *args: str | Path, env: dict[str, str] | None = None) -> Run:
        return stella(
            *args, "--repo", self.root, env={"STELLA_SIGNING_KEY": str(self.evidence_key), **(env or {})}
        )

    def reconcile(self) -> dict[str, object]:
        run = self.stella("reconcile", "--once", "-o", "json")
        assert run.code == 0, run.out + run.err
        result: dict[str, object] = json.loads(run.out)
        return result

    def agent_argv(self, root: str, target: str = "web-1") -> list[str | Path]:
        key = self.agent_key if target == "web-1" else self.agent_key.with_name(f"{target}.pem")
        state = self.state if target == "web-1" else self.state.with_name(f"state-{target}")
        return ["agent", "--target", target, "--repo", self.root, "--key", key, "--state-dir", state]

    def agent(self, root: str, *extra: str, env: dict[str, str] | None = None, target: str = "web-1") -> Run:
        return stella(
            *self.agent_argv(root, target),
            "--root",
            root,
            "-o",
            "json",
            *extra,
            env={"DB_PASSWORD": SECRET, **(env or {})},
        )

    def show(self, path: str) -> bytes:
        return subprocess.run(
            ["git", "cat-file", "blob", f"refs/heads/stella/evidence:{path}"],
            cwd=self.root,
            check=True,
            capture_output=True,
        ).stdout


def _agent_key(keys: Path, name: str) -> bytes:
    generate_key(keys / f"{name}.pem")
    return keys.joinpath(f"{name}.pem.pub").read_bytes()


def make_site(
    tmp_path: Path,
    registry: RegistryServer,
    engine: DockerDaemon,
    host: str | None = None,
    more: tuple[tuple[str, DockerDaemon], ...] = (),
    marker: str = "one",
) -> tuple[Site, str]:
    """A site whose release `shop-1.0` runs `shop/web:1.0` (an image made unique by `marker`), as served
    by `host` (default: the registry), on target web-1 of `engine`, and on each (target, engine) of
    `more` (project `shop<target>`)."""
    image = push_busybox(registry.host, tmp_path / "images", "shop/web", "1.0", marker=marker)
    host = host or registry.host
    root = tmp_path / "repo"
    keys = tmp_path / "keys"
    evidence_key, agent_key = keys / "evidence.pem", keys / "agent.pem"
    generate_key(evidence_key)
    generate_key(agent_key)
    write_files(
        root,
        {
            "stella.yaml": "apiVersion: stella/v1\nkind: Settings\ntenant: shop\n",
            "environments/dev.yaml": (
                "apiVersion: stella/v1\nkind: Environment\nname: dev\n"
                "template: templates/shop.compose.yml.j2\n"
                "secrets: {DB_PASSWORD: env:DB_PASSWORD}\n"
                f"targets:\n  - {{name: web-1, agent: docker, endpoint: '{engine.endpoint}', project: shopdev}}\n"
                + "".join(
                    f"  - {{name: {name}, agent: docker, endpoint: '{other.endpoint}', project: shop{name}}}\n"
                    for name, other in more
                )
            ),
            "templates/shop.compose.yml.j2": TEMPLATE,
            "releases/shop-1.0.yaml": (
                "apiVersion: stella/v1\nkind: Release\nname: shop-1.0\n"
                f"components:\n  web: {{image: '{host}/shop/web:1.0'}}\n"
            ),
            "promotions/shop-1.0--dev.yaml": (
                "apiVersion: stella/v1\nkind: Promotion\nrelease: shop-1.0\nenvironment: dev\n"
            ),
            "trust/evidence-keys/ci.pub": keys.joinpath("evidence.pem.pub").read_bytes(),
            "trust/agent-keys/web-1.pub": keys.joinpath("agent.pem.pub").read_bytes(),
            **{f"trust/agent-keys/{name}.pub": _agent_key(keys, name) for name, _ in more},
        },
    )
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Requester")
    git(root, "config", "user.email", "requester@example.com")
    commit_all(root, "a shop with one target")
    return Site(root, evidence_key, agent_key, tmp_path / "state"), image


@pytest.mark.registry
def test_the_agent_deploys_exactly_the_lock_and_records_it(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    site, image = make_site(tmp_path, registry, engine)
    passed = site.reconcile()
    genesis = str(passed["ratification"])
    [outcome] = passed["decisions"]  # type: ignore[misc]
    assert outcome["decision"] == "allow", outcome

    run = site.agent(genesis)
    assert run.code == 0, run.out + run.err
    done = json.loads(run.out)
    assert done["action"] == "deployed" and done["result"] == "succeeded", done

    # the container runs exactly the pinned digest
    client = engine.client()
    try:
        [container] = client.containers.list(filters={"label": "com.docker.compose.project=shopdev"})
        assert container.attrs["Config"]["Image"] == image
        assert image in client.images.get(container.attrs["Image"]).attrs["RepoDigests"]
    finally:
        client.close()

    # the sticker, and its mirror on the evidence branch, name the decision and the deployment record
    sticker = json.loads((site.state / "stella.version.json").read_bytes())
    assert sticker["decision"] == outcome["evidence"] and sticker["deployment"] == done["deployment"]
    assert sticker["release"]["components"]["web"]["digest"] == image.partition("@")[2]
    assert (
        site.show("targets/dev/web-1/stella.version.json")
        == (site.state / "stella.version.json").read_bytes()
    )
    record = json.loads(site.show(f"evidence/{done['deployment'].removeprefix('sha256:')}.json"))
    assert record["predicate"]["type"] == "deployment" and record["predicate"]["result"] == "succeeded"
    assert [c["digest"] for c in record["predicate"]["containers"]] == [image.partition("@")[2]]

    verify = site.stella("audit", "verify", "--root", genesis, "-o", "json")
    assert verify.code == 0, verify.out
    verified = json.loads(verify.out)
    assert verified["verifiedBy"][done["deployment"]].endswith("trust/agent-keys/web-1.pub")

    # an independent verifier (sigstore-js, tests/js) accepts the record's bundle given the agent's key
    bundle = tmp_path / "deployment.sigstore.json"
    bundle.write_bytes(site.show(f"evidence/{done['deployment'].removeprefix('sha256:')}.sigstore.json"))
    js = Path(__file__).resolve().parents[1] / "js" / "verify-bundle.js"
    node = shutil.which("node")
    assert node is not None, "node is not installed: run `make setup`"
    independent = subprocess.run(
        [node, str(js), str(bundle), str(site.agent_key.with_name("agent.pem.pub"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert independent.returncode == 0, independent.stdout + independent.stderr

    # an offline packet of the branch verifies the deployment record too (its policy holds the agent key)
    packet = tmp_path / "packet.tar.gz"
    assert site.stella("audit", "export", packet).code == 0
    offline = stella("audit", "verify", "--packet", packet, "--root", genesis, "-o", "json", cwd=tmp_path)
    assert offline.code == 0, offline.out + offline.err
    assert json.loads(offline.out)["verifiedBy"][done["deployment"]].endswith("trust/agent-keys/web-1.pub")

    replay = site.stella("replay", "--all", "-o", "json")
    assert replay.code == 0, replay.out + replay.err  # the deployment record is checked against its decision

    again = site.agent(genesis)
    assert again.code == 0 and json.loads(again.out)["action"] == "none", again.out + again.err

    # no secret value anywhere: state dir, evidence branch objects, outputs
    assert SECRET not in run.out + run.err
    for path in site.state.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    objects = subprocess.run(
        ["git", "log", "-p", "--all"], cwd=site.root, capture_output=True, check=True
    ).stdout
    assert SECRET.encode() not in objects


@pytest.mark.registry
def test_a_registry_serving_other_bytes_for_the_digest_fails_the_deployment_and_starts_nothing(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    pinned = push_busybox(registry.host, tmp_path / "one", "shop/web", "1.0", marker="one").partition("@")[2]
    other = push_busybox(registry.host, tmp_path / "two", "shop/web", "2.0", marker="two").partition("@")[2]
    with TamperProxy(registry.host, pinned, other) as proxy:
        site, _ = make_site(tmp_path, registry, engine, host=proxy.host)
        genesis = str(site.reconcile()["ratification"])
        run = site.agent(genesis)
        assert run.code == 1, run.out + run.err
        done = json.loads(run.out)
        assert done["action"] == "failed" and pinned in done["reason"], done
        assert f"manifest verification failed for digest {pinned}" in done["reason"], done
        assert proxy.tampered >= 1
    assert not (site.state / "stella.version.json").exists()  # the sticker did not move
    client = engine.client()
    try:
        assert client.containers.list(all=True, filters={"label": "com.docker.compose.project=shopdev"}) == []
    finally:
        client.close()
    record = json.loads(site.show(f"evidence/{done['deployment'].removeprefix('sha256:')}.json"))
    assert record["predicate"]["result"] == "failed"
    assert [s["stage"] for s in record["predicate"]["steps"]] == ["pull"]
    verify = site.stella("audit", "verify", "--root", genesis)
    assert verify.code == 0, verify.out
    skipped = site.agent(genesis)
    assert skipped.code == 1 and json.loads(skipped.out)["action"] == "skipped", skipped.out


@pytest.mark.registry
def test_an_agent_refuses_a_chain_that_does_not_start_at_its_root(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    site, _ = make_site(tmp_path, registry, engine)
    site.reconcile()
    run = site.agent("sha256:" + "0" * 64)
    assert run.code == 2 and "not at the pinned root" in run.err, run.out + run.err
    assert not (site.state / "stella.version.json").exists()


@pytest.mark.registry
def test_a_key_the_policy_does_not_hold_for_the_target_deploys_nothing(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    site, _ = make_site(tmp_path, registry, engine)
    genesis = str(site.reconcile()["ratification"])
    stranger = tmp_path / "stranger.pem"
    generate_key(stranger)
    shutil.copy(stranger, site.agent_key)
    run = site.agent(genesis)
    assert run.code == 2 and "trust/agent-keys/web-1.pub" in run.err, run.out + run.err
    assert not (site.state / "stella.version.json").exists()
    client = engine.client()
    try:
        assert client.containers.list(all=True, filters={"label": "com.docker.compose.project=shopdev"}) == []
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _clean_engine(engine: DockerDaemon) -> Iterator[None]:
    yield
    client = engine.client()
    try:
        for container in client.containers.list(all=True):
            container.remove(force=True)
    finally:
        client.close()


def test_the_agent_command_says_what_it_needs() -> None:
    run = stella("agent", "--target", "web-1")
    assert run.code == 2 and "--key" in run.err


@pytest.mark.registry
def test_over_git_daemon_the_hook_takes_the_agents_record_and_refuses_a_forged_one(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    site, _ = make_site(tmp_path, registry, engine)
    genesis = str(site.reconcile()["ratification"])
    served = start_git_daemon(tmp_path / "served")
    try:
        bare = served.base / "origin.git"
        git(served.base, "init", "-q", "--bare", "-b", "main", str(bare))
        assert stella("hook", "install", bare).code == 0
        push = subprocess.run(
            ["git", "push", "-q", served.url("origin.git"), "main", "refs/heads/stella/evidence"],
            cwd=site.root,
            capture_output=True,
            text=True,
        )
        assert push.returncode == 0, push.stderr
        run = stella(
            "agent", "--target", "web-1", "--repo", served.url("origin.git"), "--key", site.agent_key,
            "--state-dir", site.state, "--root", genesis, "-o", "json", env={"DB_PASSWORD": SECRET},
        )  # fmt: skip
        assert run.code == 0, run.out + run.err
        deployment = json.loads(run.out)["deployment"]
        landed = git(bare, "ls-tree", "-r", "--name-only", "refs/heads/stella/evidence")
        assert f"evidence/{deployment.removeprefix('sha256:')}.json" in landed.splitlines()

        # someone with push access forges a deployment record signed with their own key: refused
        clone = tmp_path / "attacker"
        git(tmp_path, "clone", "-q", str(bare), str(clone))
        git(clone, "fetch", "-q", "origin", "refs/heads/stella/evidence:refs/heads/stella/evidence")
        forged = json.loads(
            git(bare, "cat-file", "blob", f"refs/heads/stella/evidence:evidence/{deployment[7:]}.json")
        )
        forged["predicate"]["result"] = "succeeded"
        forged["predicate"]["reason"] = "forged"
        stranger = tmp_path / "stranger.pem"
        generate_key(stranger)
        body = canonical(forged)
        hex_id = sha256_hex(body)
        git(clone, "checkout", "-q", "refs/heads/stella/evidence")
        write_files(
            clone,
            {
                f"evidence/{hex_id}.json": body,
                f"evidence/{hex_id}.sigstore.json": KeySigner(load_private_key(stranger)).sign(body),
            },
        )
        git(clone, "add", "-A")
        git(
            clone,
            "-c",
            "user.name=Attacker",
            "-c",
            "user.email=attacker@example.com",
            "commit",
            "-qm",
            "forge",
        )
        attempt = subprocess.run(
            ["git", "push", "origin", "HEAD:refs/heads/stella/evidence"],
            cwd=clone,
            capture_output=True,
            text=True,
        )
        assert attempt.returncode != 0 and "unknown key" in attempt.stderr, attempt.stderr
        assert git(bare, "rev-parse", "refs/heads/stella/evidence") != git(clone, "rev-parse", "HEAD")
    finally:
        served.stop()


@pytest.mark.registry
def test_a_record_the_source_refuses_is_kept_aside_and_does_not_block_the_agent(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    site, _ = make_site(tmp_path, registry, engine)
    genesis = str(site.reconcile()["ratification"])
    hook = site.root / ".git" / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'stella: rejected: refs/heads/stella/evidence: not today' >&2\nexit 1\n")
    hook.chmod(0o755)
    run = site.agent(genesis)
    assert run.code == 1, run.out + run.err
    done = json.loads(run.out)
    assert done["action"] == "deployed" and done["refused"] == [done["deployment"]], done
    kept = site.state / "refused" / done["deployment"].removeprefix("sha256:")
    assert "not today" in (kept / "refused.txt").read_text()
    assert not list((site.state / "pending").iterdir())
    hook.unlink()
    again = site.agent(genesis)  # the sticker says it runs that decision: nothing more to do
    assert again.code == 0 and json.loads(again.out)["action"] == "none", again.out + again.err


@pytest.mark.registry
def test_the_agent_on_an_interval_deploys_and_stops_cleanly_on_sigterm(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    site, image = make_site(tmp_path, registry, engine)
    genesis = str(site.reconcile()["ratification"])
    argv = [STELLA, *map(str, site.agent_argv(genesis)), "--root", genesis, "--interval", "1"]
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DB_PASSWORD": SECRET},
    )
    try:
        sticker = site.state / "stella.version.json"
        deadline = time.monotonic() + 60
        while not sticker.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert sticker.exists(), process.stderr.read() if process.poll() is not None else "no sticker in 60 s"
        time.sleep(1.5)  # at least one more run, with nothing to do
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, out + err
    assert "deployed" in out and "none" in out, out
    assert (
        json.loads(sticker.read_bytes())["release"]["components"]["web"]["digest"] == image.partition("@")[2]
    )


@pytest.mark.registry
def test_a_decision_signed_by_a_key_outside_the_policy_is_not_deployed(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    """Someone with push access adds a newer `allow` for another image, signed with their own key, and
    moves the environment's pointer to it: the agent deploys the verified decision, never the forged."""
    site, image = make_site(tmp_path, registry, engine)
    passed = site.reconcile()
    genesis = str(passed["ratification"])
    [valid] = passed["decisions"]  # type: ignore[misc]
    other = push_busybox(registry.host, tmp_path / "other", "shop/web", "6.6.6", marker="forged")
    statement = json.loads(site.show(f"evidence/{valid['evidence'].removeprefix('sha256:')}.json"))
    [artifact] = statement["predicate"]["artifacts"]
    lock = site.show(f"artifacts/{artifact['sha256']}/{artifact['name']}").replace(
        image.encode(), other.encode()
    )
    lock_hex = sha256_hex(lock)
    statement["predicate"]["artifacts"] = [{"name": artifact["name"], "sha256": lock_hex}]
    statement["predicate"]["previous"] = valid["evidence"]
    body = canonical(statement)
    hex_id = sha256_hex(body)
    stranger = tmp_path / "stranger.pem"
    generate_key(stranger)
    pointer = json.loads(site.show("environments/dev/stella.version.json"))
    pointer["head"] = f"sha256:{hex_id}"
    pointer["current"]["evidence"] = f"sha256:{hex_id}"
    pointer["current"]["artifacts"] = {artifact["name"]: lock_hex}
    worktree = tmp_path / "forge"
    git(site.root, "worktree", "add", "-q", str(worktree), "stella/evidence")
    write_files(
        worktree,
        {
            f"evidence/{hex_id}.json": body,
            f"evidence/{hex_id}.sigstore.json": KeySigner(load_private_key(stranger)).sign(body),
            f"artifacts/{lock_hex}/{artifact['name']}": lock,
            "environments/dev/stella.version.json": canonical(pointer),
        },
    )
    git(worktree, "add", "-A")
    git(
        worktree,
        "-c",
        "user.name=Attacker",
        "-c",
        "user.email=attacker@example.com",
        "commit",
        "-qm",
        "forge",
    )
    git(site.root, "worktree", "remove", "--force", str(worktree))

    run = site.agent(genesis)
    assert run.code == 0, run.out + run.err
    done = json.loads(run.out)
    assert done["decision"] == valid["evidence"], done  # the verified decision, not the forged one
    client = engine.client()
    try:
        [container] = client.containers.list(filters={"label": "com.docker.compose.project=shopdev"})
        assert container.attrs["Config"]["Image"] == image != other
    finally:
        client.close()
    assert site.stella("audit", "verify", "--root", genesis).code == 1  # and the audit names the forgery
