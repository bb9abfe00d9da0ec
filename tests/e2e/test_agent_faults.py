"""Faults around `stella agent`, each ending with nothing half-done and a record that says what happened:
two targets on two real Engines racing to push their records, one Engine stopped while the other works,
and the agent killed (SIGKILL) at any instant of a deployment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_agent import SECRET, Site, make_site
from tests.support.cli import STELLA
from tests.support.dockerd import DockerDaemon, start_dockerd
from tests.support.registry import RegistryServer


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[DockerDaemon, DockerDaemon]]:
    first = start_dockerd()
    try:
        second = start_dockerd()
        try:
            yield first, second
        finally:
            second.close()
    finally:
        first.close()


@pytest.fixture(autouse=True)
def _clean(engines: tuple[DockerDaemon, DockerDaemon]) -> Iterator[None]:
    yield
    for engine in engines:
        if not engine.running:
            engine.start()
        client = engine.client()
        try:
            for container in client.containers.list(all=True):
                container.remove(force=True)
        finally:
            client.close()


def _running_digests(engine: DockerDaemon, project: str) -> list[str]:
    client = engine.client()
    try:
        found = client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
        return [c.attrs["Config"]["Image"].partition("@")[2] for c in found]
    finally:
        client.close()


def _record(site: Site, evidence: str) -> dict[str, object]:
    value: dict[str, object] = json.loads(site.show(f"evidence/{evidence.removeprefix('sha256:')}.json"))
    return value


def _popen(site: Site, root: str, target: str) -> subprocess.Popen[str]:
    argv = [STELLA, *map(str, site.agent_argv(root, target)), "--root", root, "-o", "json"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def _env() -> dict[str, str]:
    return {**os.environ, "DB_PASSWORD": SECRET}


@pytest.mark.registry
def test_two_agents_on_two_engines_race_to_push_and_both_records_land(
    tmp_path: Path, registry: RegistryServer, engines: tuple[DockerDaemon, DockerDaemon]
) -> None:
    first, second = engines
    site, image = make_site(tmp_path, registry, first, more=(("web-2", second),))
    genesis = str(site.reconcile()["ratification"])
    runs = [_popen(site, genesis, "web-1"), _popen(site, genesis, "web-2")]
    outputs = [run.communicate(timeout=180) for run in runs]
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, out + err
    done = [json.loads(out) for out, _ in outputs]
    assert [d["action"] for d in done] == ["deployed", "deployed"], done
    digest = image.partition("@")[2]
    assert _running_digests(first, "shopdev") == [digest]
    assert _running_digests(second, "shopweb-2") == [digest]
    for d in done:  # both records are on the branch, each on its own target's chain
        assert _record(site, d["deployment"])["predicate"]["result"] == "succeeded"  # type: ignore[index]
    verify = site.stella("audit", "verify", "--root", genesis)
    assert verify.code == 0, verify.out


@pytest.mark.registry
def test_one_engine_stopped_fails_that_target_only_with_a_record(
    tmp_path: Path, registry: RegistryServer, engines: tuple[DockerDaemon, DockerDaemon]
) -> None:
    first, second = engines
    site, image = make_site(tmp_path, registry, first, more=(("web-2", second),))
    genesis = str(site.reconcile()["ratification"])
    second.stop()
    down = site.agent(genesis, target="web-2")
    assert down.code == 3, down.out + down.err
    failed = json.loads(down.out)
    assert failed["action"] == "failed" and failed["unreachable"] and second.endpoint in failed["reason"]
    record = _record(site, failed["deployment"])
    assert record["predicate"]["result"] == "failed"  # type: ignore[index]
    up = site.agent(genesis, target="web-1")
    assert up.code == 0 and json.loads(up.out)["action"] == "deployed", up.out + up.err
    assert _running_digests(first, "shopdev") == [image.partition("@")[2]]
    second.start()
    retried = site.agent(genesis, target="web-2")  # an unreachable engine is tried again, not given up on
    assert retried.code == 0 and json.loads(retried.out)["action"] == "deployed", retried.out + retried.err
    assert site.stella("audit", "verify", "--root", genesis).code == 0


@pytest.mark.registry
@pytest.mark.parametrize("delay", [0.3, 0.8, 1.3, 1.8, 2.4])
def test_the_agent_killed_at_any_instant_leaves_the_old_or_new_sticker_and_the_next_run_completes(
    tmp_path: Path, registry: RegistryServer, engines: tuple[DockerDaemon, DockerDaemon], delay: float
) -> None:
    first, _ = engines
    site, image = make_site(tmp_path, registry, first)
    genesis = str(site.reconcile()["ratification"])
    run = _popen(site, genesis, "web-1")
    time.sleep(delay)
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=30)
    sticker = site.state / "stella.version.json"
    if sticker.exists():  # whole, or absent: never a torn file
        assert json.loads(sticker.read_bytes())["decision"]
    after = site.agent(genesis)
    assert after.code == 0, after.out + after.err
    assert json.loads(after.out)["action"] in ("deployed", "none")
    assert json.loads(sticker.read_bytes())["decision"] == json.loads(after.out)["decision"]
    assert _running_digests(first, "shopdev") == [image.partition("@")[2]]
    verify = site.stella("audit", "verify", "--root", genesis)
    assert verify.code == 0, verify.out
