"""Render a release for an environment into the bytes of `compose.stella.lock.yml`.

PURE: takes a `ReleaseLock`, an `Environment` and a template's text, returns bytes. It must not touch the
disk, the network, the clock or Git, and must not see a secret's value: the caller reads the template from
the repository at the decision's commit and passes its text in; templates get secret NAMES only, and a
secret is written as the literal `${NAME}` that Docker Compose interpolates on the host.

Templates are Jinja2, run in an immutable sandbox with `StrictUndefined`, no autoescape, no loader (no
`include`/`import`/`extends`), `trim_blocks` and `lstrip_blocks` (a line holding only a `{% ... %}` tag
leaves nothing behind), and without Jinja's non-deterministic `random` filter and `lipsum` global. The
context is:

    release       {name, id}
    environment   {name}
    components    {name: {image, tag, digest, pinned}}, sorted by name (`pinned` = `image@digest`)
    variables     {NAME: value}, sorted; every `$` already doubled (`$$`) so Compose keeps it literal
    secrets       [NAME, ...], sorted: the names only
    secret(NAME)  -> "${NAME}"; an error for a name the environment does not declare
    | tojson      JSON text that is also a safe YAML scalar (quotes, `:`/`#`/`{`, line breaks, control chars)

Whatever the template wrote, the output is then normalised (at the YAML node level, so every scalar keeps
the text the template gave it): one YAML document, no anchors or aliases, no duplicate keys, block style;
`services` must be a mapping whose every service has an image pinned by digest (`repo@sha256:<64 hex>`);
each service running a component gets the labels `stella.component`, `stella.release.id` and
`stella.digest` (labels become a mapping, whether the template wrote a mapping or a `key=value` list; the
template's labels stay, except `stella.*` ones, which only Stella writes, on any service); a top-level
`x-stella` block names the release, its id and the environment; each component image line carries its
original tag as a comment; a one-line header says the file is generated. Refused: `include`, `build` and
`extends` (a lock runs digest-pinned images only), YAML tags beyond the core ones, and any Compose
interpolation other than `${NAME}` of a declared secret (a literal `$` is `$$`). `check()` then validates
the final bytes, and `render()` returns them only if they pass. Same inputs, same bytes.

A lock contains only what was approved (DESIGN §8). Every service's image is a release component's pinned
image or exactly one of the environment's `allowedImages`; and what a container may take from the host
is refused unless the environment's `hostAccess` allows it, each for a reason:

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
                              allowed: they change the container only

A value those rules read may not be a Compose interpolation (a secret could hide `host` or `../..`).
`lock_images()` lists every image of a lock, so that each becomes a subject of the evidence statement.
"""

from __future__ import annotations

import functools
import json
import posixpath
import re
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import yaml
from jinja2 import StrictUndefined, Template, TemplateSyntaxError
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from . import reference
from .errors import InvalidInput
from .models import Environment, HostAccess, ReleaseLock

__all__ = ["DEFAULT_TEMPLATE", "LOCK_FILE", "RenderError", "check", "lock_images", "render"]

LOCK_FILE = "compose.stella.lock.yml"

DEFAULT_TEMPLATE = """\
{#- Stella's built-in template: one service per component, digest-pinned; secrets stay ${NAME} references. #}
services:
{% for name, c in components.items() %}
  {{ name | tojson }}:
    image: {{ c.pinned }}
{% if variables or secrets %}
    environment:
{% for key, value in variables.items() %}
      {{ key }}: {{ value | tojson }}
{% endfor %}
{% for key in secrets %}
      {{ key }}: {{ secret(key) | tojson }}
{% endfor %}
{% endif %}
    restart: unless-stopped
{% endfor %}
"""

HEADER = "# Generated by Stella from a release lock. Do not edit: it is immutable and content-addressed.\n"

_BUILTIN = "<built-in template>"
_JINJA_FILENAME = "<template>"
_MAX_OUTPUT = 1 << 20
_MAX_REPEAT = 1 << 20
_MAX_EXPONENT = 256
_WIDTH = 1 << 30

_YAML = "tag:yaml.org,2002:"
_STR = _YAML + "str"
_MAP = _YAML + "map"
_ALLOWED_TAGS = frozenset(
    _YAML + t for t in ("str", "int", "float", "bool", "null", "timestamp", "value", "map", "seq")
)

_LABEL_PREFIX = "stella."
_LABEL_COMPONENT = "stella.component"
_LABEL_RELEASE_ID = "stella.release.id"
_LABEL_DIGEST = "stella.digest"

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DOLLAR_RE = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)|)")
# Characters that cannot stand literally inside a double-quoted YAML scalar without changing its value:
# non-printables (YAML 1.1), NEL and the Unicode line/paragraph separators (line breaks to YAML), the BOM.
_UNSAFE_IN_YAML_RE = re.compile(
    "[^\t\n\r\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)


class RenderError(InvalidInput):
    """A template or its output is unusable; `file` names the template, the message says what is wrong."""


# --- YAML: one reader and one writer that agree on what a plain scalar means -----------------------


class _YamlProblem(Exception):
    def __init__(self, message: str, mark: Any) -> None:  # a yaml Mark (pure or libyaml) or None
        super().__init__(message)
        self.message = message
        self.line = None if mark is None else mark.line + 1


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases (a lock spells everything out)."""

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            raise _YamlProblem(f"YAML aliases (*{event.anchor}) are not allowed", event.start_mark)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _YamlProblem(f"YAML anchors (&{anchor}) are not allowed", event.start_mark)
        return super().compose_node(parent, index)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that also quotes strings YAML 1.2 (Docker Compose) would read as numbers."""


# PyYAML resolves plain scalars by YAML 1.1; Compose reads YAML 1.2, where `0o17` and `1e3` are numbers.
# Both sides know these forms, so a string that looks like one is quoted, and a number stays as written.
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(_YAML + "int", re.compile(r"^[-+]?0o[0-7]+$"), list("-+0"))
    _cls.add_implicit_resolver(
        _YAML + "float",
        re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
        list("-+.0123456789"),
    )
del _cls


_FastLoader: type[Any] = getattr(yaml, "CSafeLoader", None) or _Loader
if _FastLoader is not _Loader:

    class _CLoader(_FastLoader):  # type: ignore[misc]
        """libyaml's parser with the same YAML 1.2 number resolvers as `_Loader` (speed only)."""

    _CLoader.yaml_implicit_resolvers = _Loader.yaml_implicit_resolvers
    _FastLoader = _CLoader


def _parse(text: str) -> Node | None:
    """One YAML document as a node tree; raises _YamlProblem (never a PyYAML error).

    libyaml does the work when present: a first scan of its events refuses anchors and aliases
    exactly as `_Loader` would, then it composes the tree.
    """
    if _FastLoader is not _Loader:
        try:
            for event in yaml.parse(text, Loader=_FastLoader):
                if isinstance(event, yaml.AliasEvent):
                    raise _YamlProblem(f"YAML aliases (*{event.anchor}) are not allowed", event.start_mark)
                anchor = getattr(event, "anchor", None)
                if anchor is not None:
                    raise _YamlProblem(f"YAML anchors (&{anchor}) are not allowed", event.start_mark)
        except yaml.YAMLError:
            pass  # reported with its line by the full parse below
        else:
            loader = _FastLoader(text)
            try:
                root = loader.get_single_node()
            except yaml.YAMLError:
                root = None
                loader = None
            finally:
                if loader is not None:
                    loader.dispose()
            if loader is not None:
                if root is not None:
                    _validate_tree(root)
                parsed: Node | None = root
                return parsed
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise _YamlProblem(f"not valid YAML: {problem}", mark) from exc
    except yaml.YAMLError as exc:
        raise _YamlProblem(f"not valid YAML: {exc}", None) from exc
    except RecursionError as exc:
        raise _YamlProblem("YAML nested too deeply", None) from exc
    finally:
        loader.dispose()
    if root is not None:
        _validate_tree(root)
    return root


def _validate_tree(node: Node) -> None:
    if node.tag not in _ALLOWED_TAGS:
        what = "merge keys (<<) are" if node.tag == _YAML + "merge" else f"the YAML tag {node.tag} is"
        raise _YamlProblem(f"{what} not allowed", node.start_mark)
    if isinstance(node, MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if not isinstance(key, ScalarNode):
                raise _YamlProblem("mapping keys must be plain scalars", key.start_mark)
            if key.value in seen:
                raise _YamlProblem(f"duplicate key {key.value!r}", key.start_mark)
            seen.add(key.value)
            _validate_tree(key)
            _validate_tree(value)
    elif isinstance(node, SequenceNode):
        for item in node.value:
            _validate_tree(item)


def _scalars(node: Node) -> Iterator[ScalarNode]:
    if isinstance(node, ScalarNode):
        yield node
    elif isinstance(node, MappingNode):
        for key, value in node.value:
            yield from _scalars(key)
            yield from _scalars(value)
    elif isinstance(node, SequenceNode):
        for item in node.value:
            yield from _scalars(item)


def _get(mapping: MappingNode, key: str) -> Node | None:
    for k, v in mapping.value:
        if k.value == key:
            return v  # type: ignore[no-any-return]
    return None


def _without(mapping: MappingNode, keys: Collection[str]) -> list[tuple[Node, Node]]:
    return [(k, v) for k, v in mapping.value if k.value not in keys]


def _str(value: str) -> ScalarNode:
    # A fresh node every time: a node used twice would be written with an anchor and an alias.
    return ScalarNode(_STR, value, None, None)


def _map(pairs: Sequence[tuple[str, str]]) -> MappingNode:
    return MappingNode(_MAP, [(_str(k), _str(v)) for k, v in pairs], None, None, flow_style=False)


def _canonical_style(node: Node) -> None:
    """Block collections; strings in the style the emitter picks (quoted only where plain would mislead)."""
    if isinstance(node, ScalarNode):
        if node.tag == _STR and node.style in (None, "'", '"'):
            # PyYAML's emitter would write NEL/LS/PS raw (read back as line breaks): escape them in "...".
            node.style = '"' if _UNSAFE_IN_YAML_RE.search(node.value) else None
    elif isinstance(node, MappingNode | SequenceNode):
        node.flow_style = False
        for child in node.value:
            for n in child if isinstance(child, tuple) else (child,):
                _canonical_style(n)


def _serialize(root: Node) -> str:
    return yaml.serialize(root, Dumper=_Dumper, width=_WIDTH, allow_unicode=True, line_break="\n")


# --- the template ---------------------------------------------------------------------------------


class _TemplateProblem(Exception):
    """Raised from inside a template (e.g. `secret()` of an undeclared name)."""


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, which also refuses to build huge values with `*` and `**`."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and right > _MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is too large (at most {_MAX_EXPONENT})")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > _MAX_REPEAT:
                    raise SecurityError(f"repetition would build a value longer than {_MAX_REPEAT}")
        return super().call_binop(context, operator, left, right)


def _yaml_safe_json(value: Any) -> str:
    """`tojson` for YAML: JSON text whose every string is also a double-quoted YAML scalar of that value."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return _UNSAFE_IN_YAML_RE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


def _sandbox() -> _Sandbox:
    env = _Sandbox(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        loader=None,
    )
    env.filters["tojson"] = _yaml_safe_json
    del env.filters["random"]
    del env.globals["lipsum"]
    return env


def _context(release: ReleaseLock, environment: Environment) -> dict[str, Any]:
    declared = sorted(environment.secrets)

    def secret(name: str) -> str:
        if name not in environment.secrets:
            names = ", ".join(declared) or "none"
            raise _TemplateProblem(
                f"secret({name!r}): environment {environment.name} has no such secret (declared: {names})"
            )
        return "${" + name + "}"

    components = {
        name: {"image": c.image, "tag": c.tag, "digest": c.digest, "pinned": c.pinned}
        for name, c in sorted(release.components.items())
    }
    return {
        "release": {"name": release.name, "id": release.id},
        "environment": {"name": environment.name},
        "components": components,
        "variables": {k: v.replace("$", "$$") for k, v in sorted(environment.variables.items())},
        "secrets": declared,
        "secret": secret,
    }


def _template_line(exc: BaseException) -> int | None:
    """The template line Jinja maps the failing frame to, if the traceback reaches the template."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _JINJA_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


@functools.lru_cache(maxsize=64)
def _compile(source: str) -> Template:
    """Compiled templates by their text (a pass renders the same template for many promotions)."""
    return _sandbox().from_string(source)


def _run_template(source: str, context: dict[str, Any], where: str) -> str:
    try:
        compiled = _compile(source)
    except TemplateSyntaxError as exc:
        raise RenderError(f"template syntax error: {exc.message}", file=where, line=exc.lineno) from exc
    parts: list[str] = []
    size = 0
    try:
        for chunk in compiled.generate(context):
            size += len(chunk)
            if size > _MAX_OUTPUT:
                raise RenderError(f"template output is larger than {_MAX_OUTPUT} characters", file=where)
            parts.append(chunk)
    except RenderError:
        raise
    except SecurityError as exc:
        raise RenderError(
            f"refused by the template sandbox: {exc}", file=where, line=_template_line(exc)
        ) from exc
    except Exception as exc:  # anything a template raises is a problem of that template
        raise RenderError(f"template error: {exc}", file=where, line=_template_line(exc)) from exc
    return "".join(parts)


# --- normalising the output ------------------------------------------------------------------------


def _output_error(where: str, what: str, problem: _YamlProblem) -> RenderError:
    at = f" (line {problem.line})" if problem.line is not None else ""
    return RenderError(f"{what}{at}: {problem.message}", file=where)


def _services(root: Node | None) -> MappingNode:
    if root is None:
        raise _YamlProblem("is empty", None)
    if not isinstance(root, MappingNode):
        raise _YamlProblem("must be a YAML mapping with a top-level 'services'", root.start_mark)
    if _get(root, "include") is not None:
        raise _YamlProblem("'include' is not allowed: a lock file must be complete", root.start_mark)
    services = _get(root, "services")
    if services is None:
        raise _YamlProblem("has no top-level 'services'", root.start_mark)
    if not isinstance(services, MappingNode):
        raise _YamlProblem("'services' must be a mapping of service names to services", services.start_mark)
    if not services.value:
        raise _YamlProblem("'services' is empty", services.start_mark)
    for key, service in services.value:
        name = key.value
        if not isinstance(service, MappingNode):
            raise _YamlProblem(f"service {name!r} must be a mapping", service.start_mark)
        for forbidden in ("build", "extends"):
            if _get(service, forbidden) is not None:
                raise _YamlProblem(
                    f"service {name!r} uses {forbidden!r}: a lock runs digest-pinned images only",
                    service.start_mark,
                )
        image = _get(service, "image")
        if image is None:
            raise _YamlProblem(f"service {name!r} has no image", service.start_mark)
        if not isinstance(image, ScalarNode) or image.tag != _STR:
            raise _YamlProblem(f"service {name!r}: image must be a string", image.start_mark)
        try:
            ref = reference.parse(image.value)
        except reference.ReferenceError as exc:
            raise _YamlProblem(f"service {name!r}: {exc}", image.start_mark) from None
        if ref.digest is None or ref.tag is not None:
            raise _YamlProblem(
                f"service {name!r}: image {image.value!r} is not pinned by digest alone "
                "(write repo@sha256:<64 hex>; the tag goes in a comment)",
                image.start_mark,
            )
    return services


def _service_images(services: MappingNode) -> Iterator[tuple[str, MappingNode, ScalarNode]]:
    for key, service in services.value:
        image = _get(service, "image")
        assert isinstance(image, ScalarNode)  # _services() checked it
        yield key.value, service, image


def _component_of(service: str, image: str, release: ReleaseLock) -> str | None:
    names = sorted(n for n, c in release.components.items() if c.pinned == image)
    if not names:
        return None
    return service if service in names else names[0]


def _labels_as_pairs(service: str, labels: Node) -> list[tuple[Node, Node]]:
    """A service's labels as mapping pairs (Compose also allows a list of `key=value`)."""
    if isinstance(labels, MappingNode):
        return list(labels.value)
    if isinstance(labels, ScalarNode) and labels.tag == _YAML + "null":
        return []
    if isinstance(labels, SequenceNode):
        pairs: list[tuple[Node, Node]] = []
        seen: set[str] = set()
        for item in labels.value:
            if not isinstance(item, ScalarNode):
                raise _YamlProblem(f"service {service!r}: each label must be 'key=value'", item.start_mark)
            key, _, value = item.value.partition("=")
            if key in seen:
                raise _YamlProblem(f"service {service!r}: label {key!r} is listed twice", item.start_mark)
            seen.add(key)
            pairs.append((_str(key), _str(value)))
        return pairs
    raise _YamlProblem(f"service {service!r}: labels must be a mapping or a list", labels.start_mark)


def _set_labels(service_name: str, service: MappingNode, ours: Sequence[tuple[str, str]]) -> None:
    """Give the service a mapping of labels: the template's, minus any `stella.*`, then `ours`."""
    existing = _get(service, "labels")
    if existing is None and not ours:
        return
    kept = [] if existing is None else _labels_as_pairs(service_name, existing)
    pairs = [(k, v) for k, v in kept if not k.value.startswith(_LABEL_PREFIX)]
    node = MappingNode(_MAP, [*pairs, *((_str(k), _str(v)) for k, v in ours)], None, None)
    if existing is None:
        service.value.append((_str("labels"), node))
    else:
        service.value = [(k, node if k.value == "labels" else v) for k, v in service.value]


def _normalise(text: str, release: ReleaseLock, environment: Environment, where: str) -> str:
    try:
        root = _parse(text)
        services = _services(root)
        assert isinstance(root, MappingNode)  # _services() checked it
        for service_name, service, image in _service_images(services):
            image.style = None  # a valid reference has no blanks: plain, so its line can carry the tag
            component = _component_of(service_name, image.value, release)
            ours: list[tuple[str, str]] = []
            if component is not None:
                digest = release.components[component].digest
                ours = [
                    (_LABEL_COMPONENT, component),
                    (_LABEL_RELEASE_ID, release.id),
                    (_LABEL_DIGEST, digest),
                ]
            _set_labels(service_name, service, ours)
        stella = _map(
            [("release", release.name), ("releaseId", release.id), ("environment", environment.name)]
        )
        root.value = [(_str("x-stella"), stella), *_without(root, {"x-stella"})]
        _canonical_style(root)
        body = _serialize(root)
        return HEADER + _with_tag_comments(body, _services(_parse(body)), release, where)
    except _YamlProblem as problem:
        raise _output_error(where, "rendered template output", problem) from None


def _with_tag_comments(body: str, services: MappingNode, release: ReleaseLock, where: str) -> str:
    """Append `  # <tag>` to each service's image line that runs a component with a known tag."""
    tags: dict[str, str] = {}
    for name, c in sorted(release.components.items()):
        if c.tag is None:
            continue
        if not _TAG_RE.match(c.tag):
            raise RenderError(f"component {name} has an invalid tag {c.tag!r}", file=where)
        tags.setdefault(c.pinned, c.tag)
    lines = body.split("\n")
    for _, _, image in _service_images(services):
        tag = tags.get(image.value)
        if tag is not None and image.start_mark is not None:
            index = image.start_mark.line
            if lines[index].endswith(f"image: {image.value}"):  # a plain one-line scalar: always, here
                lines[index] += f"  # {tag}"
    return "\n".join(lines)


# --- what a lock may take from the host (DESIGN §8) -----------------------------------------------

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


def _check_mount(what: str, item: Node, access: HostAccess) -> None:
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


# --- checking the final bytes ---------------------------------------------------------------------


def _interpolation_problem(text: str, secrets: Collection[str] | None) -> str | None:
    """Why `text` would make Compose interpolate something other than a declared secret, or None."""
    for match in _DOLLAR_RE.finditer(text):
        if match.group(0) == "$$":
            continue
        braced = match.group("braced")
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
        for scalar in _scalars(root):
            for candidate in {scalar.value, scalar.value.replace("$$", "$")}:
                if any(value in candidate for value in values):
                    raise _YamlProblem(
                        "contains the value of a secret; secrets must appear only as ${NAME} references",
                        scalar.start_mark,
                    )
            problem = _interpolation_problem(scalar.value, secrets)
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
    other than `${NAME}` (a literal `$` is written `$$`). Every image is a component's or one of
    `environment`'s `allowedImages`, and the lock takes from the host only what its `hostAccess` allows
    (see the module's docstring); with `environment` given, interpolations may name only its secrets.
    Without it: no extra image, no host access.
    """
    secrets = None if environment is None else frozenset(environment.secrets)
    _check(data, release, forbidden, secrets, LOCK_FILE, environment)


def render(
    release: ReleaseLock,
    environment: Environment,
    template: str | None,
    *,
    template_path: str | None = None,
    forbidden: Sequence[str] = (),
) -> bytes:
    """The bytes of `compose.stella.lock.yml` for `release` in `environment`.

    `template` is the template's text (None: `DEFAULT_TEMPLATE`); `template_path` is the name errors
    use for it (default: the environment's `template`). `forbidden` are secret values the caller knows;
    the output must not contain any of them. Raises RenderError for a bad template or a bad output; the
    output is also held to `check()` with `environment`: only its secrets, its `allowedImages` besides
    the release's, and only the host access its `hostAccess` allows.
    """
    source = DEFAULT_TEMPLATE if template is None else template
    where = template_path or (_BUILTIN if template is None else environment.template or _JINJA_FILENAME)
    text = _run_template(source, _context(release, environment), where)
    try:
        data = _normalise(text, release, environment, where).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RenderError(f"rendered output cannot be encoded as UTF-8: {exc.reason}", file=where) from None
    _check(data, release, forbidden, frozenset(environment.secrets), where, environment)
    return data
