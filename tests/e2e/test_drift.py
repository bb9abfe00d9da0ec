"""`stella drift` end to end: the real agent deploys a three-service lock (one service mounting a config
file from its state directory) on a real Docker Engine from the real registry with Compose v2; then a
container is stopped, one is replaced by hand with another digest, one is started by hand beside a
service's own, the mounted config file is edited and a container of a service the lock does not have
joins the project: `stella drift` reports each with its kind and exits 1. An engine that cannot be
reached is exit 3; a target with nothing allowed is not contacted; an unknown environment or target is 2.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from stella_docker import docker as docker_agent

from reconciler.api import CONFIG_FILES_LABEL, CONFIG_LABEL, AgentTarget
from reconciler.drift import compare, config_hash
from tests.e2e.test_agent import Site, make_site
from tests.support.busybox_image import push_busybox
from tests.support.dockerd import DockerDaemon, start_dockerd
from tests.support.registry import RegistryServer
from tests.support.repos import commit_all, write_files

PROJECT = "shopdev"
TEMPLATE = """\
services:
{% for name, c in components.items() %}
  {{ name | tojson }}:
    image: {{ c.pinned }}
    network_mode: none
    command: ["/bin/busybox", "sleep", "3600"]
    stop_grace_period: 1s
    healthcheck: {test: ["CMD", "/bin/busybox", "true"], interval: 1s}
{% if name == "web" %}
    volumes: ["${STELLA_STATE_DIR}/config/web.conf:/etc/web.conf:ro"]
{% endif %}
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


@pytest.fixture(autouse=True)
def _clean_engine(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "engine" in request.fixturenames:
        request.getfixturevalue("engine").remove_containers()


class _Nowhere:
    """An engine address where nothing listens (the stand-in for a host that is down)."""

    def __init__(self, path: Path) -> None:
        self.endpoint = f"unix://{path}"


def shop(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon, more: tuple[tuple[str, Any], ...] = ()
) -> tuple[Site, dict[str, str]]:
    """`make_site`'s shop with release shop-1.0 of three components (web, api, worker), web mounting
    `${STELLA_STATE_DIR}/config/web.conf`, whose first version is written into the agent's state dir."""
    site, web = make_site(tmp_path, registry, engine, more=more)
    images = {"web": web}
    for name in ("api", "worker"):
        images[name] = push_busybox(registry.host, tmp_path / f"image-{name}", f"shop/{name}", "1.0", name)
    write_files(
        site.root,
        {
            "templates/shop.compose.yml.j2": TEMPLATE,
            "releases/shop-1.0.yaml": (
                "apiVersion: stella/v1\nkind: Release\nname: shop-1.0\ncomponents:\n"
                + "".join(f"  {n}: {{image: '{registry.host}/shop/{n}:1.0'}}\n" for n in images)
            ),
        },
    )
    commit_all(site.root, "three components; web reads its config from the agent's state directory")
    (site.state / "config").mkdir(parents=True)
    (site.state / "config" / "web.conf").write_text("listen 80\n")
    return site, images


def drift(site: Site, *args: str) -> tuple[int, Any]:
    run = site.stella("drift", *args, "-o", "json")
    assert run.code in (0, 1, 3), run.out + run.err
    return run.code, json.loads(run.out)


def _digest(image: str) -> str:
    return image.partition("@")[2]


@pytest.mark.registry
def test_drift_reports_each_change_with_its_kind(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    site, images = shop(tmp_path, registry, engine)
    genesis = str(site.reconcile()["ratification"])
    run = site.agent(genesis)
    assert run.code == 0, run.out + run.err
    assert json.loads(run.out)["action"] == "deployed"

    # what the agent labelled: the hash of web.conf for web, the empty set for the others
    conf = site.state / "config" / "web.conf"
    client = engine.client()
    try:
        containers = {
            c.labels["com.docker.compose.service"]: c
            for c in client.containers.list(filters={"label": f"com.docker.compose.project={PROJECT}"})
        }
        assert sorted(containers) == ["api", "web", "worker"]
        assert containers["web"].labels[CONFIG_FILES_LABEL] == json.dumps([str(conf)])
        assert containers["web"].labels[CONFIG_LABEL] == config_hash([str(conf)])
        assert containers["api"].labels[CONFIG_FILES_LABEL] == "[]"
        assert containers["web"].exec_run(["/bin/busybox", "cat", "/etc/web.conf"]).output == b"listen 80\n"
    finally:
        client.close()

    code, clean = drift(site, "dev")
    assert code == 0, clean
    assert clean == {
        "items": [],
        "targets": [
            {
                "name": "web-1",
                "environment": "dev",
                "state": "in-sync",
                "reason": "runs shop-1.0 as it should",
            }
        ],
    }
    text = site.stella("drift")
    assert (text.code, text.out) == (0, "dev/web-1: in-sync (runs shop-1.0 as it should)\n"), text.err

    # now change what runs, the way people do
    other = push_busybox(registry.host, tmp_path / "image-other", "shop/api", "6.6.6", "by-hand")
    labels = {"com.docker.compose.project": PROJECT, "com.docker.compose.oneoff": "False"}
    client = engine.client()
    try:
        client.api.pull(other.partition("@")[0], tag=_digest(other))
        containers["worker"].kill()  # busybox as PID 1 ignores SIGTERM
        containers["api"].remove(force=True)

        def by_hand(service: str) -> str:
            started = client.containers.run(
                other,
                ["/bin/busybox", "sleep", "3600"],
                labels={**labels, "com.docker.compose.service": service},
                network_mode="none",
                detach=True,
            )
            return str(started.id)

        api, second_web, intruder = by_hand("api"), by_hand("web"), by_hand("intruder")
    finally:
        client.close()
    old_hash = config_hash([str(conf)])
    conf.write_text("listen 8080\n")
    new_hash = config_hash([str(conf)])

    code, found = drift(site, "dev")
    assert code == 1, found
    assert found["items"] == [
        _item("api", "digest", _digest(images["api"]), _digest(other), api),
        _item("api", "config", f"a {CONFIG_LABEL} label", None, api),
        _item("intruder", "extra", None, f"{_digest(other)} (running)", intruder),
        _item("web", "extra", None, f"{_digest(other)} (running)", second_web),
        _item("web", "config", new_hash, old_hash, containers["web"].id),
        _item("worker", "stopped", "running", "exited", containers["worker"].id),
    ]
    assert found["targets"] == [
        {"name": "web-1", "environment": "dev", "state": "drifted", "reason": "6 difference(s) from shop-1.0"}
    ]
    text = site.stella("drift", "--target", "web-1")
    assert text.code == 1, text.out + text.err
    assert text.out.splitlines()[-1] == (
        f"dev/web-1 worker stopped: expected running, actual exited (container {containers['worker'].id[:12]})"
    )


def _item(service: str, kind: str, expected: str | None, actual: str | None, container: str | None) -> Any:
    return {
        "target": "web-1",
        "service": service,
        "kind": kind,
        "expected": expected,
        "actual": actual,
        "container": container,
    }


@pytest.mark.registry
def test_an_unreachable_engine_is_exit_3_and_nothing_allowed_is_not_contacted(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    nowhere = cast(DockerDaemon, _Nowhere(tmp_path / "down.sock"))
    site, _ = shop(tmp_path, registry, engine, more=(("web-2", nowhere),))

    code, before = drift(site)  # no decision yet: no engine is asked
    assert code == 0, before
    nothing = "nothing allowed in dev yet"
    assert before == {
        "items": [],
        "targets": [
            {"name": "web-1", "environment": "dev", "state": "nothing-to-run", "reason": nothing},
            {"name": "web-2", "environment": "dev", "state": "nothing-to-run", "reason": nothing},
        ],
    }

    genesis = str(site.reconcile()["ratification"])
    assert site.agent(genesis).code == 0
    code, found = drift(site, "dev")
    assert code == 3, found
    assert found["items"] == []
    [web1, web2] = found["targets"]
    assert web1 == {
        "name": "web-1",
        "environment": "dev",
        "state": "in-sync",
        "reason": "runs shop-1.0 as it should",
    }
    assert (web2["name"], web2["state"]) == ("web-2", "unreachable")
    assert web2["reason"].startswith(f"cannot reach the Docker Engine at unix://{tmp_path}/down.sock"), web2
    text = site.stella("drift", "--target", "web-2")
    assert text.code == 3 and text.out.startswith("dev/web-2: unreachable (cannot reach"), text.out + text.err


@pytest.mark.registry
def test_an_unknown_environment_or_target_is_invalid(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    site, _ = shop(tmp_path, registry, engine)
    site.reconcile()
    for args, message in (
        (("prod",), "no environment 'prod'"),
        (("dev", "--target", "web-9"), "no target 'web-9' in environment 'dev'; targets: web-1"),
        (("--target", "web-9"), "no target 'web-9' in the ratified policy"),
    ):
        run = site.stella("drift", *args)
        assert run.code == 2 and message in run.err, (args, run.out, run.err)


@pytest.mark.registry
def test_one_engine_call_lists_the_project_and_compare_is_fast(
    tmp_path: Path, registry: RegistryServer, engine: DockerDaemon
) -> None:
    """The plugin's `running()` and `compare()` of a deployed target, timed (a loose bound here; the
    benchmark holds the tight one)."""
    site, _ = shop(tmp_path, registry, engine)
    genesis = str(site.reconcile()["ratification"])
    assert site.agent(genesis).code == 0
    lock = next((site.state / "artifacts").glob("*/compose.stella.lock.yml")).read_bytes()
    opened = docker_agent.open(AgentTarget("dev", "web-1", engine.endpoint, PROJECT), {})
    try:
        opened.running(PROJECT)  # the SDK's first call negotiates the API version
        started = time.perf_counter()
        containers = opened.running(PROJECT)
        items = compare("web-1", lock, containers)
        elapsed = time.perf_counter() - started
    finally:
        opened.close()
    assert items == [] and len(containers) == 3
    assert all(c.labels.keys() == {CONFIG_LABEL, CONFIG_FILES_LABEL} for c in containers)
    assert elapsed < 1.0, elapsed
