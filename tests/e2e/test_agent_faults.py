"""Faults around `stella agent`, each ending with nothing half-done and a record that says what happened:
two targets on two real Engines racing to push their records, one Engine stopped while the other works,
and the agent killed (SIGKILL) at any instant of a deployment."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_agent import SECRET, Site, make_site
from tests.support.cli import STELLA
from tests.support.dockerd import DockerDaemon, start_dockerd
from tests.support.registry import RegistryServer
from tests.support.tamper_proxy import TamperProxy


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


def _containers(engine: DockerDaemon, project: str) -> list[object]:
    client = engine.client()
    try:
        return list(
            client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"})
        )
    finally:
        client.close()


def _git_env() -> dict[str, str]:
    who = {"NAME": "Requester", "EMAIL": "requester@example.com"}
    return {
        **os.environ,
        **{f"GIT_{role}_{k}": v for role in ("AUTHOR", "COMMITTER") for k, v in who.items()},
    }


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


@pytest.mark.registry
def test_the_agent_killed_during_the_pull_completes_on_the_next_run(
    tmp_path: Path, registry: RegistryServer, engines: tuple[DockerDaemon, DockerDaemon]
) -> None:
    """Killed while the engine downloads the layers (a loopback proxy holds the blob downloads, so the
    kill lands exactly there): nothing started, no sticker, no record; the next run deploys."""
    first, _ = engines
    with TamperProxy(registry.host, "", "", stall_blobs=True) as proxy:
        site, image = make_site(tmp_path, registry, first, host=proxy.host, marker="pulled-while-killed")
        genesis = str(site.reconcile()["ratification"])
        run = _popen(site, genesis, "web-1")
        assert proxy.blob_requested.wait(timeout=60), "the pull never asked for a layer"
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=30)
        proxy.release.set()
        assert _containers(first, "shopdev") == []
        assert not (site.state / "stella.version.json").exists()
        pending = site.state / "pending"
        assert not pending.exists() or not any(pending.iterdir())  # no record staged
        after = site.agent(genesis)
    assert after.code == 0 and json.loads(after.out)["action"] == "deployed", after.out + after.err
    assert _running_digests(first, "shopdev") == [image.partition("@")[2]]
    assert (
        json.loads((site.state / "stella.version.json").read_bytes())["decision"]
        == json.loads(after.out)["decision"]
    )
    assert site.stella("audit", "verify", "--root", genesis).code == 0


@pytest.mark.registry
def test_the_agent_killed_while_compose_waits_for_health_completes_on_the_next_run(
    tmp_path: Path, registry: RegistryServer, engines: tuple[DockerDaemon, DockerDaemon]
) -> None:
    """Killed during `up --wait`: the project's container exists, healthy or not yet, no sticker."""
    first, _ = engines
    site, image = make_site(tmp_path, registry, first)
    template = site.root / "templates" / "shop.compose.yml.j2"
    template.write_text(template.read_text().replace("interval: 1s}", "interval: 1s, start_period: 3s}"))
    subprocess.run(["git", "commit", "-qam", "slow health"], cwd=site.root, check=True, env=_git_env())
    genesis = str(site.reconcile()["ratification"])
    run = _popen(site, genesis, "web-1")
    deadline = time.monotonic() + 60
    while not _containers(first, "shopdev") and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    assert _containers(first, "shopdev"), "compose never created the container"
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=30)
    assert not (site.state / "stella.version.json").exists()  # killed before the sticker
    after = site.agent(genesis)
    assert after.code == 0 and json.loads(after.out)["action"] == "deployed", after.out + after.err
    assert _running_digests(first, "shopdev") == [image.partition("@")[2]]
    assert site.stella("audit", "verify", "--root", genesis).code == 0


def test_a_sticker_write_killed_at_any_instant_leaves_the_old_or_the_new_file_whole(tmp_path: Path) -> None:
    """SIGKILL of a process rewriting the sticker in a loop, 25 times at random instants: the sticker
    on disk always parses, and is one of the versions written."""
    state = tmp_path / "state"
    state.mkdir()
    writer = (
        "import sys, itertools\n"
        "from pathlib import Path\n"
        "from reconciler.agent.sticker import write_sticker\n"
        "for n in itertools.count():\n"
        "    write_sticker(Path(sys.argv[1]), {'version': '1.0', 'n': n, 'pad': 'x' * 200_000})\n"
    )
    rng = random.Random(12)
    for _ in range(25):
        process = subprocess.Popen([sys.executable, "-c", writer, str(state)], cwd=Path(__file__).parents[2])
        time.sleep(0.15 + rng.random() * 0.3)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        sticker = state / "stella.version.json"
        if sticker.exists():
            value = json.loads(sticker.read_bytes())
            assert value["version"] == "1.0" and len(value["pad"]) == 200_000
