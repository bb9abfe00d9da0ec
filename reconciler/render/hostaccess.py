"""What a lock may run and take from the host (DESIGN §8): only what was approved.

Every service's image is a release component's pinned image or exactly one of the environment's
`allowedImages`; and what a container may take from the host is refused unless the environment's
`hostAccess` allows it, each for a reason:

    privileged: true          (also in post_start/pre_stop hooks) every capability and device: root on
                              the host; needs `privileged`
    network_mode/pid/ipc/uts/userns_mode/cgroup: host
                              the host's own namespaces (its network stack, processes, shared memory,
                              hostname, root user, cgroups); needs `hostNamespaces`. `container:`/`service:`
                              forms join another container's namespaces, not the host's: allowed
    networks: {driver|name: host}
                              the same host network by another name; needs `hostNamespaces`
    cgroup_parent             puts the container in a host cgroup of the template's choosing (escapes the
                              project's limits); needs `hostNamespaces`
    cap_add                   each capability widens what root in the container can do to the host;
                              only those in `capabilities` (`ALL` only if listed itself). cap_drop: allowed
    devices, device_cgroup_rules, gpus, deploy.resources.reservations.devices
                              raw host devices; needs `devices`
    security_opt              unconfined seccomp/AppArmor/SELinux, custom profiles read from host files;
                              needs `securityOptions`. `no-new-privileges` only tightens: allowed
    volumes (bind)            short `SRC:DST[:MODE]` with SRC starting `/`, `.`, `~` (or a Windows path), or
                              long `type: bind`: the normalised source must lie under a `hostPaths` prefix
                              (`..` cannot escape it); relative and `~` sources depend on the agent's
                              directory or user: never. Named volumes, anonymous volumes, tmpfs: allowed;
                              other mount types (image, npipe, cluster): refused
    volumes (agent's own)     a bind source `${STELLA_STATE_DIR}/<path>` is inside the agent's state
                              directory (the agent hands Compose that variable), not a host path the
                              environment must list: always allowed, the one interpolation a lock may use
                              besides its secrets. `${STELLA_STATE_DIR}` alone, with `..`, with another
                              interpolation after it, or anywhere but a bind source: refused
    the engine socket         /var/run/docker.sock, /run/docker.sock, containerd's, any */docker.sock, or a
                              directory holding one (/var/run, /run, /var, /): control of the engine is root
                              on the host; needs `dockerSocket`, even under an allowed `hostPaths` prefix
    use_api_socket            hands the container the engine's API socket; needs `dockerSocket`
    volumes: {driver_opts}    a `local` volume with `o: bind` or a host `device` is a bind mount (or a host
                              disk) under another name: held to the same `hostPaths`/socket rules; nfs, cifs
                              and tmpfs devices are not host paths. Options of other volume drivers cannot
                              be checked: refused
    volumes_from              `container:NAME` takes every mount of a container outside the lock: refused;
                              a service of the lock: allowed (its own mounts are checked here)
    configs/secrets: {file}, env_file, label_file
                              read a host file: inside the lock's directory, or absolute under `hostPaths`;
                              `..` out of it or `~`: refused
    provider                  runs a program on the host instead of a container: refused
    develop                   watch mode syncs host files into containers: refused (a lock is not a dev setup)
    models (top level)        pulls an artifact by tag outside the release and runs it on the host: refused
    sysctls                   allowed: Docker accepts only namespaced sysctls and runc refuses them when the
                              namespace is the host's, so they change the container only
    extra_hosts, ulimits, tmpfs, cap_drop, dns, labels

A value those rules read may not be a Compose interpolation (a secret could hide `host` or `../..`),
but for the leading `${STELLA_STATE_DIR}` of a bind source (`_state_dir_sources` lists those scalars for
`lockfile`'s interpolation check).
This module only judges a lock's node tree; it must not change it, nor import jinja2.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Collection

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..models import HostAccess, ReleaseLock
from .compose import _service_images
from .problems import _YamlProblem
from .yamlnodes import _YAML, _get

_ENGINE_SOCKETS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/run/containerd/containerd.sock",
    "/run/containerd/containerd.sock",
)
_NAMESPACE_KEYS = ("network_mode", "pid", "ipc", "uts", "userns_mode", "cgroup")
_DEVICE_KEYS = ("devices", "device_cgroup_rules", "gpus")
_HOOK_KEYS = ("post_start", "pre_stop")
_REFUSED_SERVICE_KEYS = {
    "provider": "runs a program on the host instead of a container",
    "develop": "syncs host files into containers; a lock has no development mode",
}
_MOUNT_TYPES = ("bind", "volume", "tmpfs")
_NOT_HOST_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "tmpfs"})
_FALSE = frozenset({"", "false", "no", "n", "off", "0"})
_VOLUME_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_WINDOWS_PATH_RE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")
_NO_NEW_PRIVILEGES_RE = re.compile(r"^no-new-privileges(?:[:=]true)?$")
STATE_DIR_VAR = "STELLA_STATE_DIR"
"""The variable the agent hands Compose: the absolute path of its state directory on the host."""
STATE_DIR_REF = "${" + STATE_DIR_VAR + "}"


def _set(node: Node) -> bool:
    """Whether a flag is on: anything but null or a false spelling counts (unknown values fail closed)."""
    if isinstance(node, ScalarNode):
        return node.tag != _YAML + "null" and node.value.strip().lower() not in _FALSE
    return True


def _empty(node: Node) -> bool:
    if isinstance(node, ScalarNode):
        return node.tag == _YAML + "null" or node.value == ""
    return not node.value


def _items(node: Node, what: str) -> list[Node]:
    """A Compose list (null: empty); anything else is refused rather than guessed at."""
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, ScalarNode) and node.tag == _YAML + "null":
        return []
    raise _YamlProblem(f"{what} must be a list", node.start_mark)


def _literal(node: Node, what: str) -> str:
    """A scalar's value as Compose will use it; refused when Compose would interpolate into it."""
    if not isinstance(node, ScalarNode):
        raise _YamlProblem(f"{what} must be a string", node.start_mark)
    if "$" in node.value.replace("$$", ""):
        raise _YamlProblem(
            f"{what} {node.value!r} uses Compose interpolation; write the value out", node.start_mark
        )
    value: str = node.value
    return value.replace("$$", "$")


def _state_dir_sources(services: MappingNode) -> set[int]:
    """The ids of the scalars that are bind sources starting with `${STELLA_STATE_DIR}` (short syntax:
    the whole `SRC:DST[:MODE]` item; long syntax: its `source`), whose leading variable `lockfile`'s
    interpolation check lets through; `_check_mount` judges the rest of them."""
    found: set[int] = set()
    for _, service in services.value:
        volumes = _get(service, "volumes") if isinstance(service, MappingNode) else None
        if not isinstance(volumes, SequenceNode):
            continue
        for item in volumes.value:
            node = _get(item, "source") if isinstance(item, MappingNode) else item
            if isinstance(node, ScalarNode) and node.value.startswith(STATE_DIR_REF):
                found.add(id(node))
    return found


def _state_dir_problem(source: str) -> str | None:
    """Why bind source `source` (which starts with `${STELLA_STATE_DIR}`) is not a path inside the
    agent's state directory, or None."""
    rest = source[len(STATE_DIR_REF) :]
    if "$" in rest.replace("$$", ""):
        return f"binds {source!r}: after {STATE_DIR_REF} the path must be written out (no interpolation)"
    if rest and not rest.startswith("/"):
        return f"binds {source!r}: write {STATE_DIR_REF}/<path inside the agent's state directory>"
    if ".." in rest.split("/"):
        return f"binds {source!r}: '..' may not step out of the agent's state directory ({STATE_DIR_REF})"
    if posixpath.normpath("/" + rest.lstrip("/")) == "/":
        return (
            f"binds {source!r}, the agent's whole state directory: only a path inside it may be bound "
            f"({STATE_DIR_REF}/config/…)"
        )
    return None


def _prefixes(access: HostAccess) -> str:
    return ", ".join(access.hostPaths) or "none"


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _host_path_problem(source: str, access: HostAccess) -> str | None:
    """Why a bind of host path `source` is not allowed, or None."""
    if not source.startswith("/"):
        return (
            f"binds host path {source!r}: only absolute paths under hostAccess.hostPaths may be bound "
            f"({_prefixes(access)})"
        )
    path = posixpath.normpath("/" + source.lstrip("/"))
    shown = repr(source) if path == source else f"{source!r} (= {path})"
    if not access.dockerSocket:
        exposed = [s for s in _ENGINE_SOCKETS if _under(s, path)]
        if path.endswith("/docker.sock"):
            exposed.append(path)
        if exposed:
            return (
                f"binds host path {shown}, which exposes the container engine socket {exposed[0]}: "
                "needs hostAccess.dockerSocket"
            )
    if not any(_under(path, prefix) for prefix in access.hostPaths):
        return f"binds host path {shown}, which is outside hostAccess.hostPaths ({_prefixes(access)})"
    return None


def _file_problem(source: str, access: HostAccess) -> str | None:
    """Why reading host file `source` is not allowed: inside the lock's directory, or under hostPaths."""
    if source.startswith("/"):
        problem = _host_path_problem(source, access)
        return None if problem is None else problem.replace("binds host path", "reads host file", 1)
    if source.startswith("~") or _WINDOWS_PATH_RE.match(source):
        return f"reads host file {source!r}, which is outside the lock's directory"
    if posixpath.normpath(source).split("/")[0] == "..":
        return f"reads host file {source!r}, which is outside the lock's directory"
    return None


def _short_mount_source(spec: str) -> str | None:
    """The source of a short-syntax mount `SRC:DST[:MODE]` (None: an anonymous volume `DST`)."""
    if _WINDOWS_PATH_RE.match(spec):
        return spec  # a Windows host path, whatever follows it
    parts = spec.split(":")
    return parts[0] if len(parts) > 1 else None


def _is_path(source: str) -> bool:
    """What Compose reads as a host path rather than a volume name."""
    return source[:1] in (".", "/", "~", "\\") or bool(_WINDOWS_PATH_RE.match(source))


def _check_state_dir_mount(what: str, item: Node) -> bool:
    """Judge a mount whose source starts with `${STELLA_STATE_DIR}` (True), or say it is not one."""
    if isinstance(item, MappingNode):
        node = _get(item, "source")
        if not isinstance(node, ScalarNode) or not node.value.startswith(STATE_DIR_REF):
            return False
        kind = _get(item, "type")
        kind_value = None if kind is None else _literal(kind, f"{what} type")
        if kind_value != "bind":
            raise _YamlProblem(
                f"{what}: only a bind mount may take its source from {STATE_DIR_REF} (type: bind)",
                node.start_mark,
            )
        problem = _state_dir_problem(node.value)
        if problem is not None:
            raise _YamlProblem(f"{what} {problem}", node.start_mark)
        return True
    if not isinstance(item, ScalarNode) or not item.value.startswith(STATE_DIR_REF):
        return False
    source, colon, rest = item.value.partition(":")
    problem = _state_dir_problem(source)
    if problem is None and not colon:
        problem = f"binds {source!r} to no path in the container (write SRC:DST)"
    if problem is not None:
        raise _YamlProblem(f"{what} {problem}", item.start_mark)
    if "$" in rest.replace("$$", ""):
        raise _YamlProblem(
            f"{what} {item.value!r}: the container path and mode must be written out (no interpolation)",
            item.start_mark,
        )
    return True


def _check_mount(what: str, item: Node, access: HostAccess) -> None:
    if _check_state_dir_mount(what, item):
        return
    if isinstance(item, MappingNode):
        kind = _get(item, "type")
        kind_value = None if kind is None else _literal(kind, f"{what} type")
        if kind_value not in _MOUNT_TYPES:
            raise _YamlProblem(
                f"{what}: mount type {kind_value!r} is not allowed (bind, volume or tmpfs)", item.start_mark
            )
        node = _get(item, "source")
        source = "" if node is None or _empty(node) else _literal(node, f"{what} source")
        mark = (node or item).start_mark
        if kind_value == "bind":
            problem = _host_path_problem(source, access)
            if problem is not None:
                raise _YamlProblem(f"{what} {problem}", mark)
        elif kind_value == "volume" and source and not _VOLUME_NAME_RE.match(source):
            raise _YamlProblem(f"{what}: volume source {source!r} is not a volume name", mark)
        return
    short = _short_mount_source(_literal(item, what))
    if short is None:
        return
    if _is_path(short):
        problem = _host_path_problem(short, access)
        if problem is not None:
            raise _YamlProblem(f"{what} {problem}", item.start_mark)
    elif not _VOLUME_NAME_RE.match(short):
        raise _YamlProblem(
            f"{what}: source {short!r} is neither a volume name nor a host path", item.start_mark
        )


def _check_files(what: str, node: Node, access: HostAccess) -> None:
    """`env_file`/`label_file`: a path, or a list of paths or of `{path, ...}`."""
    items = [node] if isinstance(node, ScalarNode) and node.tag != _YAML + "null" else _items(node, what)
    for item in items:
        path = _get(item, "path") if isinstance(item, MappingNode) else item
        if path is None:
            raise _YamlProblem(f"{what} entries must name a path", item.start_mark)
        problem = _file_problem(_literal(path, what), access)
        if problem is not None:
            raise _YamlProblem(f"{what} {problem}", path.start_mark)


def _check_service(name: str, service: MappingNode, services: Collection[str], access: HostAccess) -> None:
    for key, value in service.value:
        what = f"service {name!r}: {key.value!r}"
        if key.value == "privileged" and _set(value) and not access.privileged:
            raise _YamlProblem(
                f"service {name!r}: 'privileged: true' needs hostAccess.privileged", value.start_mark
            )
        elif key.value in _HOOK_KEYS:
            for hook in _items(value, what):
                flag = _get(hook, "privileged") if isinstance(hook, MappingNode) else None
                if flag is not None and _set(flag) and not access.privileged:
                    raise _YamlProblem(
                        f"{what} hook 'privileged: true' needs hostAccess.privileged", flag.start_mark
                    )
        elif key.value in _NAMESPACE_KEYS and not access.hostNamespaces:
            if _literal(value, what).strip().lower() == "host":
                raise _YamlProblem(
                    f"service {name!r}: '{key.value}: host' needs hostAccess.hostNamespaces", value.start_mark
                )
        elif key.value == "cgroup_parent" and not _empty(value) and not access.hostNamespaces:
            raise _YamlProblem(f"{what} needs hostAccess.hostNamespaces", value.start_mark)
        elif key.value == "cap_add":
            allowed = {c.removeprefix("CAP_") for c in access.capabilities}
            for item in _items(value, what):
                cap = _literal(item, what).strip().upper().removeprefix("CAP_")
                if "ALL" not in allowed and cap not in allowed:
                    listed = ", ".join(access.capabilities) or "none"
                    raise _YamlProblem(
                        f"{what} {item.value} needs hostAccess.capabilities to list it (listed: {listed})",
                        item.start_mark,
                    )
        elif key.value in _DEVICE_KEYS and not _empty(value) and not access.devices:
            raise _YamlProblem(f"{what} needs hostAccess.devices", value.start_mark)
        elif key.value == "deploy" and isinstance(value, MappingNode) and not access.devices:
            resources = _get(value, "resources")
            reservations = _get(resources, "reservations") if isinstance(resources, MappingNode) else None
            devices = _get(reservations, "devices") if isinstance(reservations, MappingNode) else None
            if devices is not None and not _empty(devices):
                raise _YamlProblem(
                    f"service {name!r}: 'deploy.resources.reservations.devices' needs hostAccess.devices",
                    devices.start_mark,
                )
        elif key.value == "security_opt" and not access.securityOptions:
            for item in _items(value, what):
                option = _literal(item, what).strip()
                if not _NO_NEW_PRIVILEGES_RE.match(option):
                    raise _YamlProblem(f"{what} {option} needs hostAccess.securityOptions", item.start_mark)
        elif key.value == "volumes":
            for item in _items(value, what):
                _check_mount(what, item, access)
        elif key.value == "volumes_from":
            for item in _items(value, what):
                source = _literal(item, what)
                other = source.removeprefix("service:").split(":")[0]
                if source.startswith("container:") or other not in services:
                    raise _YamlProblem(
                        f"{what} {source}: only services of the lock may lend their volumes "
                        "(a container outside it has mounts no check has seen)",
                        item.start_mark,
                    )
        elif key.value == "use_api_socket" and _set(value) and not access.dockerSocket:
            raise _YamlProblem(f"{what} needs hostAccess.dockerSocket", value.start_mark)
        elif key.value in ("env_file", "label_file"):
            _check_files(what, value, access)
        elif key.value in _REFUSED_SERVICE_KEYS:
            raise _YamlProblem(f"{what} {_REFUSED_SERVICE_KEYS[key.value]}", key.start_mark)


def _check_volume_definitions(root: MappingNode, access: HostAccess) -> None:
    volumes = _get(root, "volumes")
    if volumes is None or _empty(volumes):
        return
    if not isinstance(volumes, MappingNode):
        raise _YamlProblem("'volumes' must be a mapping of volume names to volumes", volumes.start_mark)
    for key, volume in volumes.value:
        what = f"volume {key.value!r}: 'driver_opts'"
        opts = _get(volume, "driver_opts") if isinstance(volume, MappingNode) else None
        if opts is None or _empty(opts):
            continue
        assert isinstance(volume, MappingNode)
        driver = _get(volume, "driver")
        if driver is not None and _literal(driver, what) != "local":
            raise _YamlProblem(
                f"{what} of driver {driver.value!r} cannot be checked (only the local driver may have any)",
                opts.start_mark,
            )
        if not isinstance(opts, MappingNode):
            raise _YamlProblem(f"{what} must be a mapping", opts.start_mark)
        values = {k.value: _literal(v, f"{what} {k.value}") for k, v in opts.value}
        bind = any(o.strip().lower() in ("bind", "rbind") for o in values.get("o", "").split(","))
        device = values.get("device")
        if device is None or (not bind and values.get("type", "").strip().lower() in _NOT_HOST_FS):
            continue
        problem = _host_path_problem(device, access)
        if problem is not None:
            raise _YamlProblem(f"{what} {problem}", (_get(opts, "device") or opts).start_mark)


def _check_network_definitions(root: MappingNode, access: HostAccess) -> None:
    networks = _get(root, "networks")
    if access.hostNamespaces or not isinstance(networks, MappingNode):
        return
    for key, network in networks.value:
        if not isinstance(network, MappingNode):
            continue
        external = _get(network, "external")
        for field in ("driver", "name"):
            node = _get(network, field)
            if node is not None and _literal(node, f"network {key.value!r}: {field!r}").strip() == "host":
                raise _YamlProblem(
                    f"network {key.value!r}: '{field}: host' is the host's network and needs "
                    "hostAccess.hostNamespaces",
                    node.start_mark,
                )
        if key.value == "host" and external is not None and _set(external):
            raise _YamlProblem(
                "network 'host': the external network 'host' is the host's network and needs "
                "hostAccess.hostNamespaces",
                key.start_mark,
            )


def _check_file_definitions(root: MappingNode, access: HostAccess) -> None:
    for section, kind in (("configs", "config"), ("secrets", "secret")):
        definitions = _get(root, section)
        if not isinstance(definitions, MappingNode):
            continue
        for key, definition in definitions.value:
            path = _get(definition, "file") if isinstance(definition, MappingNode) else None
            if path is None:
                continue
            what = f"{kind} {key.value!r}: 'file'"
            problem = _file_problem(_literal(path, what), access)
            if problem is not None:
                raise _YamlProblem(f"{what} {problem}", path.start_mark)


def _check_approved(
    root: MappingNode,
    services: MappingNode,
    release: ReleaseLock,
    allowed_images: Collection[str],
    access: HostAccess,
) -> None:
    """Raise _YamlProblem unless the lock runs only approved images and takes only what `access` allows."""
    approved = {c.pinned for c in release.components.values()} | set(allowed_images)
    names = {key.value for key, _ in services.value}
    for name, service, image in _service_images(services):
        if image.value not in approved:
            raise _YamlProblem(
                f"service {name!r}: image {image.value!r} is neither a component of release {release.name} "
                "nor in the environment's allowedImages",
                image.start_mark,
            )
        _check_service(name, service, names, access)
    _check_volume_definitions(root, access)
    _check_network_definitions(root, access)
    _check_file_definitions(root, access)
    models = _get(root, "models")
    if models is not None:
        raise _YamlProblem(
            "'models' pulls an artifact by tag outside the release and runs it on the host: not allowed",
            models.start_mark,
        )
