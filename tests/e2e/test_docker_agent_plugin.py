"""The `docker` agent plugin against a real Docker Engine, a real registry and real Compose v2.

A private dockerd (`tests.support.dockerd`) serves the module; two busybox images (`marker` one and
two, `tests.support.busybox_image`) are pushed to the session's registry with skopeo. Behaviours:
pulls by digest and the RepoDigests check; a registry that serves another manifest's bytes for the
pinned digest (`tests.support.tamper_proxy`) is refused with the digest named and no image left;
`up --wait` of a two-service lock and `running()` with the pinned digests; an unhealthy service fails
the step; an engine that cannot be reached (no socket, stopped, stopped during `up`) is a `Transient`
from every method; Compose discovery and its refusals. The tests skip only when dockerd is not
installed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from stella_docker import DockerEngine, check_endpoint, docker, find_compose
from stella_docker.compose import COMPOSE_ENV, package_binary

from reconciler.api import (
    AgentPlugin,
    AgentTarget,
    DeployStep,
    Engine,
    InvalidInput,
    PluginError,
    RunningContainer,
    Transient,
)
from tests.support.busybox_image import push_busybox
from tests.support.dockerd import DockerDaemon, find_dockerd, start_dockerd
from tests.support.registry import RegistryServer, ToolMissing
from tests.support.tamper_proxy import TamperProxy

HEALTHY = '{test: ["CMD", "/bin/busybox", "true"], interval: 250ms}'
FAILING = '{test: ["CMD", "/bin/busybox", "false"], interval: 250ms, retries: 2}'


@pytest.fixture(scope="module")
def daemon() -> Iterator[DockerDaemon]:
    try:
        find_dockerd()
    except ToolMissing as exc:
        pytest.skip(str(exc))
    with start_dockerd() as running:
        yield running


@pytest.fixture(scope="module")
def images(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Two pinned busybox references, `bb@D1` (marker one) and `bb@D2` (marker two)."""
    workdir = tmp_path_factory.mktemp("busybox")
    return (
        push_busybox(registry.host, workdir, "bb", "v1", "one"),
        push_busybox(registry.host, workdir, "bb", "v2", "two"),
    )


def open_engine(endpoint: str, project: str = "demo", **environ: str) -> Engine:
    return docker.open(AgentTarget("prod", "t1", endpoint, project), {**os.environ, **environ})


@pytest.fixture
def engine(daemon: DockerDaemon) -> Iterator[Engine]:
    opened = open_engine(daemon.endpoint)
    yield opened
    opened.close()


def service(
    name: str, image: str, healthcheck: str, command: str = '["/bin/busybox", "sleep", "3600"]'
) -> str:
    return (
        f"  {name}:\n    image: {image}\n    network_mode: none\n"
        f"    command: {command}\n    healthcheck: {healthcheck}\n"
    )


def write_lock(path: Path, *services: str) -> Path:
    path.write_text("services:\n" + "".join(services))
    return path


def assert_times(step: DeployStep) -> None:
    assert step.started_at.tzinfo is UTC and step.started_at <= step.completed_at


# -- the plugin ------------------------------------------------------------------------------------


def test_entry_point_loads_and_satisfies_the_protocols(tmp_path: Path) -> None:
    (found,) = [e for e in entry_points(group="stella.agents") if e.name == "docker"]
    plugin = found.load()
    assert plugin is docker and isinstance(plugin, AgentPlugin)
    assert (plugin.manifest.name, plugin.manifest.kinds, plugin.manifest.network) == (
        "docker",
        ("agent",),
        False,
    )
    opened = open_engine(f"unix://{tmp_path}/nothing.sock")  # does not contact the engine
    assert isinstance(opened, Engine) and isinstance(opened, DockerEngine)
    opened.close()


@pytest.mark.parametrize(
    ("endpoint", "ok"),
    [
        ("unix:///var/run/docker.sock", True),
        ("tcp://10.0.0.5:2376", True),
        ("unix://relative.sock", False),
        ("tcp://10.0.0.5", False),
        ("ssh://deploy@host", False),
        ("/var/run/docker.sock", False),
    ],
    ids=["unix", "tcp", "unix-relative", "tcp-no-port", "ssh", "bare-path"],
)
def test_endpoints(endpoint: str, ok: bool) -> None:
    if ok:
        assert check_endpoint(endpoint) == endpoint
    else:
        with pytest.raises(InvalidInput, match=r"use unix:///path/to/docker\.sock or tcp://host:port"):
            docker.open(AgentTarget("prod", "t1", endpoint, "demo"), {})


# -- pull ------------------------------------------------------------------------------------------


@pytest.mark.registry
def test_pull_by_digest_checks_repo_digests(
    engine: Engine, daemon: DockerDaemon, images: tuple[str, str]
) -> None:
    image = images[0]
    step = engine.pull(image)
    assert (step.stage, step.command, step.exit_code) == (
        "pull",
        f"docker -H {daemon.endpoint} pull {image}",
        0,
    )
    assert f"Digest: {image.split('@')[1]}" in step.output
    assert step.output.strip().endswith(f"verified: RepoDigests holds {image}")
    assert_times(step)
    client = daemon.client()
    try:
        assert client.images.get(image).attrs["RepoDigests"] == [image]
    finally:
        client.close()


@pytest.mark.registry
@pytest.mark.parametrize("header", ["pinned", "true"], ids=["lying-digest-header", "true-digest-header"])
def test_tampered_manifest_is_refused(
    engine: Engine, daemon: DockerDaemon, images: tuple[str, str], registry: RegistryServer, header: str
) -> None:
    pinned, substitute = (ref.split("@")[1] for ref in images)
    with TamperProxy(registry.host, pinned, substitute, header=header) as proxy:  # type: ignore[arg-type]
        image = f"{proxy.host}/bb@{pinned}"
        step = engine.pull(image)
        assert proxy.tampered >= 1
    assert (step.stage, step.exit_code) == ("pull", 1)
    last = step.output.strip().splitlines()[-1]
    assert last == f"pull of {image} failed: manifest verification failed for digest {pinned}", last
    client = daemon.client()
    try:
        held = [n for i in client.images.list() for n in i.attrs["RepoDigests"] + i.attrs["RepoTags"]]
    finally:
        client.close()
    assert not [n for n in held if n.startswith(proxy.host)]


def test_pull_refuses_an_unpinned_reference(engine: Engine) -> None:
    step = engine.pull("127.0.0.1:5000/bb:v1")
    assert (step.exit_code, step.output) == (
        1,
        "127.0.0.1:5000/bb:v1 is not pinned by digest: Stella pulls repo@sha256:<hex> only\n",
    )


# -- up and running --------------------------------------------------------------------------------


@pytest.mark.registry
def test_up_two_services_and_running(
    engine: Engine, daemon: DockerDaemon, images: tuple[str, str], tmp_path: Path
) -> None:
    for image in images:
        assert engine.pull(image).ok
    secret = "3600"  # the lock interpolates it from `environ`, which never appears in the command
    lock = write_lock(
        tmp_path / "compose.stella.lock.yml",
        service("web", images[0], HEALTHY, '["/bin/busybox", "sleep", "${SLEEP_SECONDS}"]'),
        service("worker", images[1], HEALTHY),
    )
    step = engine.up("pair", lock, {"SLEEP_SECONDS": secret}, 30)
    assert (step.stage, step.exit_code) == ("up", 0), step.output
    assert step.command.endswith(
        f" -H {daemon.endpoint} --ansi never -p pair -f {lock} up -d --wait --wait-timeout 30"
        " --remove-orphans --pull never"
    )
    assert "SLEEP_SECONDS" not in step.command and "Container pair-web-1  Healthy" in step.output
    assert_times(step)
    found = engine.running("pair")
    assert [(c.service, c.image, c.digest, c.state) for c in found] == [
        ("web", images[0], images[0].split("@")[1], "running"),
        ("worker", images[1], images[1].split("@")[1], "running"),
    ]
    client = daemon.client()
    try:
        configs = {c.service: client.containers.get(c.container).attrs["Config"] for c in found}
    finally:
        client.close()
    assert [(name, config["Image"]) for name, config in configs.items()] == [
        ("web", images[0]),
        ("worker", images[1]),
    ]
    assert configs["web"]["Cmd"] == ["/bin/busybox", "sleep", secret]
    assert engine.running("nothing-here") == []


@pytest.mark.registry
def test_unhealthy_service_fails_up(engine: Engine, images: tuple[str, str], tmp_path: Path) -> None:
    assert engine.pull(images[0]).ok
    lock = write_lock(tmp_path / "lock.yml", service("bad", images[0], FAILING))
    step = engine.up("sick", lock, {}, 20)
    assert step.exit_code != 0 and "container sick-bad-1 is unhealthy" in step.output, step.output
    (container,) = engine.running("sick")
    assert isinstance(container, RunningContainer) and container.state == "running"


@pytest.mark.registry
def test_running_reports_the_digest_a_container_runs_when_its_tag_moves(
    engine: Engine, daemon: DockerDaemon, images: tuple[str, str], registry: RegistryServer, tmp_path: Path
) -> None:
    for image in images:
        assert engine.pull(image).ok
    repo, tagged = f"{registry.host}/bb", f"{registry.host}/bb:moving"
    client = daemon.client()
    try:
        first, second = (client.images.get(image) for image in images)
        assert first.tag(repo, "moving")
        lock = write_lock(tmp_path / "lock.yml", service("app", tagged, HEALTHY))
        assert engine.up("tags", lock, {}, 20).ok
        (running,) = engine.running("tags")
        assert (running.image, running.digest) == (tagged, images[0].split("@")[1])
        assert second.tag(repo, "moving", force=True)  # the tag moves; the container still runs D1
        (running,) = engine.running("tags")
        assert (running.image, running.digest) == (first.id, images[0].split("@")[1])
    finally:
        client.close()


# -- an engine that cannot be reached --------------------------------------------------------------


def _calls(engine: Engine, lock: Path) -> dict[str, object]:
    """Each Engine method, called; what it returned or raised."""
    results: dict[str, object] = {}
    calls: dict[str, Callable[[], object]] = {
        "pull": lambda: engine.pull(f"127.0.0.1:5000/bb@sha256:{'0' * 64}"),
        "up": lambda: engine.up("gone", lock, {}, 5),
        "running": lambda: engine.running("gone"),
    }
    for name, call in calls.items():
        try:
            results[name] = call()
        except Transient as exc:
            results[name] = exc
    return results


def test_missing_socket_is_transient_everywhere(tmp_path: Path) -> None:
    endpoint = f"unix://{tmp_path}/no.sock"
    engine = open_engine(endpoint)
    results = _calls(engine, write_lock(tmp_path / "lock.yml"))
    engine.close()
    for name, result in results.items():
        assert isinstance(result, Transient), name
        assert str(result).startswith(f"cannot reach the Docker Engine at {endpoint}: "), name


def fake_compose(path: Path, flag: Path, done: Path) -> Path:
    """A Compose v2 stand-in for `up`: says it started, waits until the test stopped the engine, fails."""
    path.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = version ]; then echo 2.40.3; exit 0; fi\n'
        f"touch {flag}\n"
        f"while [ ! -e {done} ]; do sleep 0.05; done\n"
        "echo 'Cannot connect to the Docker daemon. Is the docker daemon running?'\n"
        "exit 1\n"
    )
    path.chmod(0o755)
    return path


def test_engine_stopped_during_and_before_calls_is_transient(tmp_path: Path) -> None:
    try:
        find_dockerd()
    except ToolMissing as exc:
        pytest.skip(str(exc))
    flag, done = tmp_path / "started", tmp_path / "stopped"
    compose = fake_compose(tmp_path / "docker-compose", flag, done)
    lock = write_lock(tmp_path / "lock.yml")
    with start_dockerd() as doomed:
        engine = open_engine(doomed.endpoint, **{COMPOSE_ENV: str(compose)})
        assert engine.running("gone") == []

        def stop_when_compose_runs() -> None:
            deadline = time.monotonic() + 20
            while not flag.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            doomed.stop()
            done.touch()

        stopper = threading.Thread(target=stop_when_compose_runs)
        stopper.start()
        with pytest.raises(Transient) as during:
            engine.up("gone", lock, {}, 5)
        stopper.join()
        message = str(during.value)
        assert message.startswith(f"cannot reach the Docker Engine at {doomed.endpoint}: "), message
        assert message.endswith(
            "; compose up stopped with exit code 1: Cannot connect to the Docker daemon. Is the docker daemon running?"
        )
        flag.unlink()
        results = _calls(engine, lock)
        assert not flag.exists()  # `up` did not run Compose against an engine it cannot reach
        for name, result in results.items():
            assert isinstance(result, Transient), name
            assert str(result).startswith(f"cannot reach the Docker Engine at {doomed.endpoint}: "), name
        engine.close()


def test_engine_killed_is_transient_and_its_mounts_are_cleaned_up(tmp_path: Path) -> None:
    try:
        find_dockerd()
    except ToolMissing as exc:
        pytest.skip(str(exc))
    crashed = start_dockerd()
    try:
        crashed.kill()  # as a crash: the socket file stays, nothing listens on it
        engine = open_engine(crashed.endpoint)
        results = _calls(engine, write_lock(tmp_path / "lock.yml"))
        engine.close()
        for name, result in results.items():
            assert isinstance(result, Transient), name
            assert str(result).startswith(f"cannot reach the Docker Engine at {crashed.endpoint}: "), name
    finally:
        crashed.close()
    assert not crashed.root.exists()
    assert str(crashed.root) not in Path("/proc/mounts").read_text()


# -- finding Compose -------------------------------------------------------------------------------


def script(path: Path, version: str) -> Path:
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


def test_compose_found_by_default_is_v2() -> None:
    compose = find_compose(dict(os.environ))
    assert int(compose.version.split(".")[0]) >= 2


def test_stella_compose_is_used_or_refused(tmp_path: Path) -> None:
    good = script(tmp_path / "c2", "2.40.3")
    assert find_compose({COMPOSE_ENV: str(good), "PATH": ""}).argv == (str(good),)
    old = script(tmp_path / "c1", "1.29.2")
    with pytest.raises(PluginError, match=r"names .*c1, which is not usable: it is Compose v1\.29\.2"):
        find_compose({COMPOSE_ENV: str(old), "PATH": ""})
    with pytest.raises(PluginError, match=r"names .*/missing, which is not an executable file"):
        find_compose({COMPOSE_ENV: str(tmp_path / "missing"), "PATH": ""})


def test_discovery_passes_over_v1_and_the_wrapper(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script(bin_dir / "docker-compose", "1.29.2")
    with pytest.raises(PluginError) as refused:
        find_compose({"PATH": str(bin_dir)}, package=tmp_path / "absent")
    assert str(refused.value).endswith(
        f"Looked at: ${COMPOSE_ENV}: not set; `docker compose`: no `docker` on PATH; "
        f"{bin_dir}/docker-compose: it is Compose v1.29.2; Stella needs Compose v2 or newer; "
        f"{tmp_path}/absent: not an executable file"
    )
    wrapper = bin_dir / "docker-compose"
    wrapper.write_text("#!/usr/bin/python3\nimport sys\nfrom compose import docker_compose\n")
    binary = package_binary()
    assert binary is not None
    assert find_compose({"PATH": str(bin_dir)}).argv == (str(binary),)
