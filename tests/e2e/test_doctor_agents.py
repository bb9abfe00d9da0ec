"""`stella doctor`'s `agents` check against a real Docker Engine (its own dockerd on a private socket):
the agent plugin installed, each target's agent key in the ratified policy, the engine answering."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.sign import generate_key
from tests.support.cli import Run, stella
from tests.support.dockerd import DockerDaemon, start_dockerd
from tests.support.repos import commit_all, git, write_files


@pytest.fixture(scope="module")
def engine() -> Iterator[DockerDaemon]:
    daemon = start_dockerd()
    try:
        yield daemon
    finally:
        daemon.close()


class Site:
    def __init__(self, root: Path, key: Path) -> None:
        self.root, self.key = root, key

    def stella(self, *args: str, env: dict[str, str] | None = None) -> Run:
        return stella(*args, "--repo", self.root, env={"STELLA_SIGNING_KEY": str(self.key), **(env or {})})

    def agents(self, env: dict[str, str] | None = None) -> dict[str, Any]:
        run = self.stella("doctor", "-o", "json", env=env)
        checks = {c["name"]: c for c in json.loads(run.out)["checks"]}
        assert "agents" in checks, run.out + run.err
        return checks["agents"]


def make_site(tmp_path: Path, endpoint: str, *, agent_key: str = "p256", ratify: bool = True) -> Site:
    """A repository whose environment `dev` has the target `web-1` at `endpoint`; its agent key is a
    P-256 key (`p256`), missing (`none`) or not a key (`junk`); `ratify`: reconciled once (the genesis)."""
    root, keys = tmp_path / "repo", tmp_path / "keys"
    generate_key(keys / "evidence.pem")
    generate_key(keys / "agent.pem")
    files: dict[str, str | bytes | None] = {
        "stella.yaml": "apiVersion: stella/v1\nkind: Settings\ntenant: shop\n",
        "environments/dev.yaml": (
            "apiVersion: stella/v1\nkind: Environment\nname: dev\ntemplate: templates/shop.compose.yml.j2\n"
            f"targets:\n  - {{name: web-1, agent: docker, endpoint: '{endpoint}', project: shopdev}}\n"
        ),
        "templates/shop.compose.yml.j2": "services: {}\n",
        "trust/evidence-keys/ci.pub": (keys / "evidence.pem.pub").read_bytes(),
        "trust/agent-keys/web-1.pub": {
            "p256": (keys / "agent.pem.pub").read_bytes(),
            "none": None,
            "junk": b"-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n",
        }[agent_key],
    }
    write_files(root, files)
    git(root, "init", "-q", "-b", "main")
    commit_all(root, "a shop with one target")
    site = Site(root, keys / "evidence.pem")
    if ratify:
        run = site.stella("reconcile", "--once", "-o", "json")
        assert run.code == 0 and json.loads(run.out)["ratification"], run.out + run.err
    return site


def test_a_reachable_engine_and_a_ratified_key_are_ok(tmp_path: Path, engine: DockerDaemon) -> None:
    site = make_site(tmp_path, engine.endpoint)
    check = site.agents()
    assert check["status"] == "ok", check
    assert check["message"] == (
        "1 target(s): agent plugin(s) docker installed, each agent's key in the ratified policy; "
        "1 engine(s) answered"
    )
    assert (
        f"the engine of dev/web-1 at {engine.endpoint} answers: 0 container(s) of project shopdev"
        in (check["details"])
    )
    assert any(d.startswith("trust/agent-keys/web-1.pub: P-256 key, hint ") for d in check["details"])
    assert any(d.startswith("dev/web-1: compose: Compose 2.") for d in check["details"]), check


def test_a_machine_without_compose_v2_is_a_warning_from_the_agent_plugin(
    tmp_path: Path, engine: DockerDaemon
) -> None:
    site = make_site(tmp_path, engine.endpoint)
    missing = tmp_path / "no-compose"
    missing.write_text("#!/bin/sh\necho 'Docker Compose version 1.29.2'\n")
    missing.chmod(0o755)
    check = site.agents(env={"STELLA_COMPOSE": str(missing)})
    assert check["status"] == "warn", check
    assert "dev/web-1: compose: no Docker Compose v2 on this machine" in check["message"], check


def test_an_engine_that_is_stopped_is_a_warning_naming_its_endpoint(tmp_path: Path) -> None:
    stopped = start_dockerd()
    stopped.close()
    site = make_site(tmp_path, stopped.endpoint)
    forced = site.agents(env={"STELLA_DOCTOR_ENGINE": "1"})
    assert forced["status"] == "warn", forced
    assert forced["message"].startswith(
        f"1 problem(s) with 1 target(s), first: the engine of dev/web-1 at {stopped.endpoint} does not answer"
    ), forced
    assert "cannot reach the Docker Engine" in forced["message"]
    # without being asked, a socket that is not on this machine is not tried (agents run elsewhere)
    quiet = site.agents()
    assert quiet["status"] == "ok", quiet
    assert f"engine of dev/web-1 not checked: {stopped.socket} is no socket on this machine" in " ".join(
        quiet["details"]
    )
    run = site.stella("doctor", env={"STELLA_DOCTOR_ENGINE": "1"})
    assert run.code == 0 and "! agents" in run.out and stopped.endpoint in run.out, run.out + run.err


@pytest.mark.parametrize(
    ("agent_key", "ratify", "status", "message"),
    [
        (
            "none",
            True,
            "warn",
            "the agent of web-1 cannot record deployments until trust/agent-keys/web-1.pub (its public key, "
            "from `stella keys generate`) is in the ratified policy",
        ),
        (
            "none",
            False,
            "warn",
            "the agent of web-1 cannot record deployments until trust/agent-keys/web-1.pub (its public key, "
            "from `stella keys generate`) is committed for the genesis",
        ),
        (
            "junk",
            True,
            "fail",
            "trust/agent-keys/web-1.pub: not a PEM public key",
        ),
    ],
    ids=["missing", "missing-before-genesis", "not-a-key"],
)
def test_the_agent_key_of_each_target(
    tmp_path: Path, engine: DockerDaemon, agent_key: str, ratify: bool, status: str, message: str
) -> None:
    site = make_site(tmp_path, engine.endpoint, agent_key=agent_key, ratify=ratify)
    check = site.agents()
    assert check["status"] == status, check
    assert check["message"].startswith(f"1 problem(s) with 1 target(s), first: {message}"), check
    run = site.stella("doctor", "-o", "json")
    assert run.code == (1 if status == "fail" else 0), run.out


def test_a_key_only_on_the_branch_waits_for_the_policy_change(tmp_path: Path, engine: DockerDaemon) -> None:
    site = make_site(tmp_path, engine.endpoint, agent_key="none")
    generate_key(tmp_path / "later.pem")
    write_files(site.root, {"trust/agent-keys/web-1.pub": (tmp_path / "later.pem.pub").read_bytes()})
    commit_all(site.root, "the agent key of web-1")
    check = site.agents()
    assert check["status"] == "warn", check
    assert (
        "the agent of web-1 cannot record deployments until the policy change adding "
        "trust/agent-keys/web-1.pub is ratified (`stella policy status`)"
    ) in check["message"]


def test_no_targets_no_agents_check(tmp_path: Path) -> None:
    site = make_site(tmp_path, "unix:///nowhere.sock", ratify=False)
    write_files(
        site.root,
        {
            "environments/dev.yaml": (
                "apiVersion: stella/v1\nkind: Environment\nname: dev\n"
                "template: templates/shop.compose.yml.j2\n"
            )
        },
    )
    commit_all(site.root, "no targets")
    run = site.stella("doctor", "-o", "json")
    assert "agents" not in {c["name"] for c in json.loads(run.out)["checks"]}, run.out
