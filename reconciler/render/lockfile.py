"""The final bytes of a lock: `check()` says whether Stella may store them; `lock_images()` reads them.

A lock is valid UTF-8 YAML with a non-empty `services` mapping of digest-pinned images (`compose`);
every component of the release run by a service labelled with it; `x-stella` naming the release; no
secret's value anywhere, raw or once Compose's `$$` escapes are undone; no Compose interpolation other
than `${NAME}` of a declared secret (a literal `$` is `$$`) or the `${STELLA_STATE_DIR}` that begins a
bind source; and only approved images and host access (`hostaccess`). This module reads bytes and
raises; it must not change them, nor import jinja2.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from yaml.nodes import MappingNode, ScalarNode

from ..models import Environment, HostAccess, ReleaseLock
from .compose import _LABEL_COMPONENT, _LABEL_DIGEST, _LABEL_RELEASE_ID, _service_images, _services
from .hostaccess import STATE_DIR_REF, STATE_DIR_VAR, _check_approved, _state_dir_sources
from .problems import RenderError, _output_error, _YamlProblem
from .yamlnodes import _get, _parse, _scalars

LOCK_FILE = "compose.stella.lock.yml"

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DOLLAR_RE = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)|)")


def lock_images(data: bytes) -> list[str]:
    """Every image the services of a rendered lock run (`repo@sha256:...`), sorted and unique.

    The caller makes each a subject of the evidence statement. Raises RenderError when `data` is not a
    lock (see `check()`); it does not check that the images are approved, which `render()` did.
    """
    try:
        services = _services(_parse(data.decode("utf-8")))
    except UnicodeDecodeError as exc:
        raise RenderError(
            f"{LOCK_FILE} is not UTF-8: {exc.reason} at byte {exc.start}", file=LOCK_FILE
        ) from None
    except _YamlProblem as problem:
        raise _output_error(LOCK_FILE, LOCK_FILE, problem) from None
    return sorted({image.value for _, _, image in _service_images(services)})


def _interpolation_problem(text: str, secrets: Collection[str] | None, state_dir: bool = False) -> str | None:
    """Why `text` would make Compose interpolate something other than a declared secret, or None.
    `state_dir`: `text` is a bind source, which may begin with `${STELLA_STATE_DIR}` (and only there)."""
    for match in _DOLLAR_RE.finditer(text):
        if match.group(0) == "$$":
            continue
        braced = match.group("braced")
        if braced == STATE_DIR_VAR:
            if state_dir and match.start() == 0:
                continue
            return (
                f"{STATE_DIR_REF} may only begin the source of a bind mount "
                f"({STATE_DIR_REF}/<path>:<container path>)"
            )
        if braced is not None and _NAME_RE.match(braced):
            if secrets is None or braced in secrets:
                continue
            names = ", ".join(sorted(secrets)) or "none"
            return f"${{{braced}}} is not a secret of the environment (declared: {names})"
        return (
            f"{match.group(0)!r} is not a plain ${{NAME}} secret reference "
            "(write $$ for a literal $; defaults and $NAME are not allowed)"
        )
    return None


def _check_labels(name: str, service: MappingNode, image: ScalarNode, release: ReleaseLock) -> None:
    components = sorted(n for n, c in release.components.items() if c.pinned == image.value)
    if not components:
        return
    labels = _get(service, "labels")
    got = {}
    if isinstance(labels, MappingNode):
        got = {k.value: v.value for k, v in labels.value if isinstance(v, ScalarNode)}
    digest = release.components[components[0]].digest
    if (
        got.get(_LABEL_COMPONENT) not in components
        or got.get(_LABEL_RELEASE_ID) != release.id
        or got.get(_LABEL_DIGEST) != digest
    ):
        raise _YamlProblem(
            f"service {name!r} runs component {' or '.join(components)} but its labels do not say so "
            f"({_LABEL_COMPONENT}, {_LABEL_RELEASE_ID}: {release.id}, {_LABEL_DIGEST}: {digest})",
            service.start_mark,
        )


def _check(
    data: bytes,
    release: ReleaseLock,
    forbidden: Sequence[str],
    secrets: Collection[str] | None,
    where: str,
    environment: Environment | None,
) -> None:
    values = [v for v in forbidden if v]
    for value in values:
        at = data.find(value.encode("utf-8"))
        if at >= 0:
            line = data.count(b"\n", 0, at) + 1
            raise RenderError(
                f"{LOCK_FILE} (line {line}): contains the value of a secret; "
                "secrets must appear only as ${NAME} references",
                file=where,
            )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RenderError(f"{LOCK_FILE} is not UTF-8: {exc.reason} at byte {exc.start}", file=where) from None
    try:
        root = _parse(text)
        services = _services(root)
        assert isinstance(root, MappingNode)
        stella = _get(root, "x-stella")
        expected = {"release": release.name, "releaseId": release.id}
        if not isinstance(stella, MappingNode) or any(
            not isinstance(_get(stella, k), ScalarNode) or _get(stella, k).value != v  # type: ignore[union-attr]
            for k, v in expected.items()
        ):
            raise _YamlProblem(
                f"'x-stella' must name release {release.name} and its id {release.id}", root.start_mark
            )
        for service_name, service, image in _service_images(services):
            _check_labels(service_name, service, image, release)
        state_dir_sources = _state_dir_sources(services)
        for scalar in _scalars(root):
            for candidate in {scalar.value, scalar.value.replace("$$", "$")}:
                if any(value in candidate for value in values):
                    raise _YamlProblem(
                        "contains the value of a secret; secrets must appear only as ${NAME} references",
                        scalar.start_mark,
                    )
            problem = _interpolation_problem(scalar.value, secrets, id(scalar) in state_dir_sources)
            if problem is not None:
                raise _YamlProblem(problem, scalar.start_mark)
        if environment is None:
            _check_approved(root, services, release, (), HostAccess())
        else:
            _check_approved(root, services, release, environment.allowedImages, environment.hostAccess)
    except _YamlProblem as problem:
        raise _output_error(where, LOCK_FILE, problem) from None
    images = {image.value for _, _, image in _service_images(services)}
    missing = [f"{n} ({c.pinned})" for n, c in sorted(release.components.items()) if c.pinned not in images]
    if missing:
        raise RenderError(
            f"{LOCK_FILE}: no service runs component(s) {', '.join(missing)} of release {release.name}",
            file=where,
        )


def check(
    data: bytes,
    release: ReleaseLock,
    forbidden: Sequence[str] = (),
    *,
    environment: Environment | None = None,
) -> None:
    """Raise RenderError unless `data` is a lock file Stella may store for `release`.

    Valid UTF-8 YAML (one document, no anchors, aliases or duplicate keys); a non-empty `services`
    mapping whose every image is pinned by digest alone; every component of the release run by at least
    one service, each such service labelled with its component, the release id and the digest;
    `x-stella` naming the release; no non-empty string of `forbidden` (secret values the
    caller knows) anywhere, raw or once Compose's `$$` escapes are undone; and no Compose interpolation
    other than `${NAME}` (a literal `$` is written `$$`), where `${STELLA_STATE_DIR}` may only begin a
    bind source (`${STELLA_STATE_DIR}/<path>`, inside the agent's state directory). Every image is a
    component's or one of `environment`'s `allowedImages`, and the lock takes from the host only what
    its `hostAccess` allows (see the module's docstring); with `environment` given, interpolations may
    name only its secrets. Without it: no extra image, no host access.
    """
    secrets = None if environment is None else frozenset(environment.secrets)
    _check(data, release, forbidden, secrets, LOCK_FILE, environment)
