"""The `docker` deployment agent plugin: the entry point object of group `stella.agents`.

`docker.open(target, environ)` checks the target's endpoint (`unix:///absolute/path` or
`tcp://host:port`) and returns a `DockerEngine` for it without contacting the engine (an engine that is
down is the `Transient` of the engine's first call, see `engine.py`). A malformed or unsupported
endpoint (`ssh://`, `npipe://`, a relative socket path) is `InvalidInput`.

The manifest says `network=False`: the engine is local infrastructure the agent drives through a
socket, and the registry traffic of a pull is the engine's own (offline sites pull from a local
mirror). So offline mode does not refuse this plugin. A `tcp://` endpoint does cross the network:
its TLS settings come from `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH` in the agent's environment.

What it must not do: connect anywhere at import or in `open()`; print or exit.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from urllib.parse import urlsplit

from reconciler.api import AgentTarget, DoctorCheck, InvalidInput, PluginManifest, StellaError

from .compose import find_compose
from .engine import DockerEngine


def package_version() -> str:
    """The installed version of `stella-docker` (`0+unknown` when it is not installed)."""
    try:
        return importlib.metadata.version("stella-docker")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def check_endpoint(endpoint: str, *, where: str = "endpoint") -> str:
    """`endpoint` when it is `unix:///absolute/path` or `tcp://host:port`; `InvalidInput` otherwise."""
    parts = urlsplit(endpoint)
    if parts.scheme == "unix" and not parts.netloc and parts.path.startswith("/") and len(parts.path) > 1:
        return endpoint
    if parts.scheme == "tcp" and parts.hostname and not parts.path.strip("/"):
        try:
            port = parts.port
        except ValueError:
            port = None
        if port is not None:
            return endpoint
    raise InvalidInput(
        f"{where} {endpoint!r} is not a Docker Engine address the docker agent supports: "
        "use unix:///path/to/docker.sock or tcp://host:port"
    )


class DockerAgentPlugin:
    """The `docker` entry point: opens the Docker Engine of one deployment target."""

    manifest: PluginManifest = PluginManifest(
        name="docker",
        version=package_version(),
        kinds=("agent",),
        network=False,
        description="Docker Engine (pull by digest, RepoDigests checked) and Docker Compose v2 `up --wait`",
    )

    def open(self, target: AgentTarget, environ: Mapping[str, str]) -> DockerEngine:
        """The engine at `target.endpoint`; `environ` is the agent's process environment."""
        endpoint = check_endpoint(
            target.endpoint, where=f"target {target.environment}/{target.name}: endpoint"
        )
        return DockerEngine(endpoint, environ)

    def diagnose(self, target: AgentTarget, environ: Mapping[str, str]) -> list[DoctorCheck]:
        """For `stella doctor`: whether this machine has a Compose v2 (and which), and a usable endpoint."""
        checks = []
        try:
            check_endpoint(target.endpoint, where="endpoint")
        except InvalidInput as exc:
            checks.append(DoctorCheck("endpoint", "fail", str(exc)))
        try:
            compose = find_compose(environ)
        except StellaError as exc:
            checks.append(DoctorCheck("compose", "warn", f"no Docker Compose v2 on this machine: {exc}"))
        else:
            checks.append(
                DoctorCheck("compose", "ok", f"Compose {compose.version}: {' '.join(compose.argv)}")
            )
        return checks


docker = DockerAgentPlugin()
"""The object the `stella.agents` entry point `docker` names."""
