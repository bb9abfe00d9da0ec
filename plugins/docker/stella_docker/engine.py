"""`DockerEngine`: one target's Docker Engine, driven through the Engine API (docker SDK) and Compose v2.

- `pull(image)`: `image` is `repo@sha256:<hex>`. The low-level streaming pull (`POST /images/create`,
  which the SDK's `images.pull` wraps but whose stream errors it swallows) is read to the end, and an
  `error` item fails the step with the engine's words ("manifest verification failed for digest …":
  the engine checks the bytes it got against the digest). Then the image `repo@digest` is inspected
  and its `RepoDigests` must hold exactly `repo@digest` (Docker Hub names compared in their familiar
  form, `nginx` for `docker.io/library/nginx`); a mismatch fails, naming the expected digest and what
  was found. Registry credentials are the agent user's Docker config, as for `docker pull`.
- `up(project, lock, environ, timeout, labels)`: Compose v2 `up -d --wait --remove-orphans --pull never`
  (see `compose.py`, which also finds Compose: once per engine, at the first `up`); `labels` (service
  -> {label: value}) go on the services' containers through a second Compose file.
- `running(project)`: one `GET /containers/json?all=1` filtered on the label
  `com.docker.compose.project=<project>`, then one image inspect per distinct image id whose
  container reference carries no digest. A container's `image` is its reference as the engine reports
  it (`repo@sha256:…` as written in a Stella lock; the image id when that reference no longer names the
  image the container runs); its `digest` is the reference's digest, else the single digest of the
  image's `RepoDigests` for that repository (None when there is none, or several); its `labels` are
  its labels starting with `io.stella.`, from the same list call.

An engine that cannot be reached at all (socket missing, nothing listening, daemon stopped, connection
dropped mid-call) raises `Transient("cannot reach the Docker Engine at <endpoint>: …")`, from every
method: the agent tries again later, and records nothing about the release. For `up`, the engine is
pinged before Compose runs, and again when Compose fails: a failure with the engine gone is that
`Transient` (carrying Compose's last line), not a failed step, because it says nothing about the
release. Everything the engine answers (a refused pull, an unhealthy service) is a failed `DeployStep`.
No Compose v2 on the machine, or unusable TLS settings for a `tcp://` endpoint, is a `PluginError`.

What it must not do: pull by tag, or accept an image whose digest it did not check; write or log
`environ`; touch containers of other projects; print or exit. The SDK client is made at the first call
(with the engine's API version), so `open()` never blocks on an engine that is down.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.utils
import urllib3.exceptions

from reconciler.api import DeployStep, PluginError, ReferenceError, RunningContainer, Transient, parse

from .compose import Clock, Compose, find_compose, run_up, utcnow

log = logging.getLogger(__name__)

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
STELLA_LABELS = "io.stella."
"""The prefix of the labels `running()` keeps on each container (`CONFIG_LABEL`, `CONFIG_FILES_LABEL`)."""
_CONNECTION_ERRORS = (OSError, urllib3.exceptions.HTTPError)
"""What a dropped or refused connection raises (requests' errors are OSErrors; a stream read raw is
urllib3's)."""
PROBE_TIMEOUT = 5.0
REQUEST_TIMEOUT = 120
"""Seconds the SDK waits for any one read from the engine (a pull streams progress well within it)."""


def familiar(name: str) -> str:
    """A repository name as the engine reports it: Docker Hub's `docker.io/library/x` is `x`."""
    first, _, rest = name.partition("/")
    if first in ("docker.io", "index.docker.io"):
        name = rest
    elif rest and ("." in first or ":" in first or first == "localhost"):
        return name  # another registry: names are kept as written
    return name.removeprefix("library/") if name.count("/") == 1 else name


def _split_digest(reference: str) -> tuple[str, str | None]:
    """`repo@sha256:…` -> (`repo`, `sha256:…`); a reference without a digest -> (it, None)."""
    if "@" in reference:
        name, _, digest = reference.partition("@")
        return name, digest
    return reference, None


def _repo_of(reference: str) -> str | None:
    """The repository of a tag or digest reference, None for an image id."""
    if reference.startswith("sha256:"):
        return None
    name, _ = _split_digest(reference)
    slash, colon = name.rfind("/"), name.rfind(":")
    return familiar(name[:colon] if colon > slash else name)


def _pull_line(item: Mapping[str, Any]) -> str | None:
    """One line of pull output, None for progress noise (byte counts)."""
    if item.get("progressDetail"):
        return None
    status = item.get("status")
    if not isinstance(status, str):
        return None
    ident = item.get("id")
    return f"{ident}: {status}" if isinstance(ident, str) and ident else status


def _tail(lines: Iterable[str], limit: int = 4096) -> str:
    text = "\n".join(lines)
    return text[-limit:] + ("\n" if text else "")


class DockerEngine:
    """The Docker Engine at `endpoint` (`unix:///…` or `tcp://…`); `environ` is the agent's process
    environment (PATH and `STELLA_COMPOSE` to find Compose; `DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH` for a
    `tcp://` endpoint; the base of Compose's environment)."""

    def __init__(
        self,
        endpoint: str,
        environ: Mapping[str, str],
        *,
        now: Clock = utcnow,
        compose: Compose | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._environ = dict(environ)
        self._now = now
        self._compose = compose
        self._client: docker.DockerClient | None = None

    # -- the engine -------------------------------------------------------------------------------

    def _unreachable(self, exc: BaseException | str) -> Transient:
        return Transient(f"cannot reach the Docker Engine at {self.endpoint}: {exc}")

    def _connect(self) -> docker.DockerClient:
        """The SDK client, made at the first call; a `unix://` socket is tried first, each time."""
        if self.endpoint.startswith("unix://"):
            self._check_socket(self.endpoint[len("unix://") :])
        if self._client is None:
            tls: Any = False
            try:
                if self.endpoint.startswith("tcp://"):
                    tls = docker.utils.kwargs_from_env(environment=self._environ).get("tls", False)
            except docker.errors.DockerException as exc:
                raise PluginError(f"the TLS settings for {self.endpoint} are not usable: {exc}") from exc
            try:
                self._client = docker.DockerClient(base_url=self.endpoint, tls=tls, timeout=REQUEST_TIMEOUT)
            except docker.errors.DockerException as exc:  # the API version could not be fetched
                raise self._unreachable(exc) from exc
        return self._client

    def _check_socket(self, path: str) -> None:
        """Raise the `Transient` of an unreachable engine unless something accepts on `path`. (The SDK
        would say the same, but leaks the socket of a failed connect.)"""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(PROBE_TIMEOUT)
            probe.connect(path)
        except OSError as exc:
            raise self._unreachable(exc) from exc
        finally:
            probe.close()

    def _ping(self) -> None:
        """Raise the `Transient` of an unreachable engine unless `GET /_ping` answers."""
        try:
            self._connect().api.ping()
        except (docker.errors.APIError, *_CONNECTION_ERRORS) as exc:
            raise self._unreachable(exc) from exc

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- pull -------------------------------------------------------------------------------------

    def pull(self, image: str) -> DeployStep:
        started = self._now()
        command = f"docker -H {self.endpoint} pull {image}"

        def failed(*lines: str) -> DeployStep:
            return DeployStep("pull", command, 1, _tail(lines), started, self._now())

        try:
            ref = parse(image)
        except ReferenceError as exc:
            return failed(f"not an image reference: {exc}")
        if ref.digest is None:
            return failed(f"{image} is not pinned by digest: Stella pulls repo@sha256:<hex> only")
        expected = f"{ref.repo}@{ref.digest}"
        api = self._connect().api
        log.info("pulling %s on %s", expected, self.endpoint)
        lines: list[str] = []
        errors: list[str] = []
        try:
            for item in api.pull(ref.repo, tag=ref.digest, stream=True, decode=True):
                if not isinstance(item, Mapping):
                    continue
                if item.get("error"):  # read on to the end of the stream, which closes it
                    errors.append(str(item["error"]))
                    continue
                line = _pull_line(item)
                if line is not None:
                    lines.append(line)
        except docker.errors.APIError as exc:
            return failed(*lines, f"pull of {expected} failed: {exc.explanation or exc}")
        except _CONNECTION_ERRORS as exc:
            raise self._unreachable(exc) from exc
        if errors:  # the last line says why, for a record's reason
            return failed(*lines, *errors[:-1], f"pull of {expected} failed: {errors[-1]}")
        try:
            found = self._connect().images.get(expected).attrs.get("RepoDigests") or []
        except docker.errors.NotFound:
            return failed(*lines, f"after the pull the engine holds no image {expected}")
        except docker.errors.APIError as exc:
            return failed(*lines, f"inspecting {expected} failed: {exc.explanation or exc}")
        except _CONNECTION_ERRORS as exc:
            raise self._unreachable(exc) from exc
        wanted = (familiar(ref.repo), ref.digest)
        held = [str(d) for d in found]
        if not any((familiar(_split_digest(d)[0]), _split_digest(d)[1]) == wanted for d in held):
            return failed(
                *lines,
                f"digest mismatch: expected {ref.digest} for {ref.repo}, "
                f"the image's RepoDigests hold {', '.join(held) or 'nothing'}",
            )
        lines.append(f"verified: RepoDigests holds {expected}")
        return DeployStep("pull", command, 0, _tail(lines), started, self._now())

    # -- up ---------------------------------------------------------------------------------------

    def up(
        self,
        project: str,
        lock: Path,
        environ: Mapping[str, str],
        timeout: float,
        labels: Mapping[str, Mapping[str, str]] | None = None,
    ) -> DeployStep:
        self._ping()
        if self._compose is None:
            self._compose = find_compose(self._environ)
            log.info("using Docker Compose %s (%s)", self._compose.version, " ".join(self._compose.argv))
        step = run_up(
            self._compose,
            endpoint=self.endpoint,
            project=project,
            lock=lock,
            base=self._environ,
            environ=environ,
            timeout=timeout,
            labels=labels,
            now=self._now,
        )
        if not step.ok:
            try:
                self._ping()
            except Transient as exc:
                last = step.output.strip().splitlines()[-1:] or ["(no output)"]
                stopped = f"compose up stopped with exit code {step.exit_code}: {last[0]}"
                raise Transient(f"{exc}; {stopped}") from exc
        return step

    # -- running ----------------------------------------------------------------------------------

    def running(self, project: str) -> list[RunningContainer]:
        api = self._connect().api
        try:
            listed = api.containers(all=True, filters={"label": f"{PROJECT_LABEL}={project}"})
            repo_digests: dict[str, list[str]] = {}
            found = []
            for entry in listed:
                reference = str(entry.get("Image") or "")
                _, digest = _split_digest(reference)
                if digest is None:
                    image_id = str(entry.get("ImageID") or "")
                    if image_id not in repo_digests:
                        repo_digests[image_id] = self._repo_digests(image_id)
                    digest = self._digest_from(reference, repo_digests[image_id])
                labels = entry.get("Labels") or {}
                found.append(
                    RunningContainer(
                        service=str(labels.get(SERVICE_LABEL, "")),
                        container=str(entry.get("Id", "")),
                        image=reference,
                        digest=digest,
                        state=str(entry.get("State", "")),
                        labels={
                            str(k): str(v) for k, v in labels.items() if str(k).startswith(STELLA_LABELS)
                        },
                    )
                )
        except docker.errors.APIError as exc:
            raise Transient(
                f"the Docker Engine at {self.endpoint} failed to list {project}: {exc.explanation or exc}"
            ) from exc
        except _CONNECTION_ERRORS as exc:
            raise self._unreachable(exc) from exc
        return sorted(found, key=lambda c: (c.service, c.container))

    def _repo_digests(self, image_id: str) -> list[str]:
        """The `RepoDigests` of an image (empty when it is gone or has none)."""
        if not image_id:
            return []
        try:
            found = self._connect().images.get(image_id).attrs.get("RepoDigests") or []
        except docker.errors.NotFound:
            return []
        return [str(d) for d in found]

    @staticmethod
    def _digest_from(reference: str, repo_digests: list[str]) -> str | None:
        """The one digest the image has for the reference's repository (any repository for an id)."""
        repo = _repo_of(reference)
        digests = {
            digest
            for name, digest in map(_split_digest, repo_digests)
            if digest is not None and (repo is None or familiar(name) == repo)
        }
        return digests.pop() if len(digests) == 1 else None
