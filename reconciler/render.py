"""Render a release for an environment into the bytes of `compose.stella.lock.yml`.

PURE: takes a `ReleaseLock`, an `Environment` and a template's text, returns bytes. It must not touch the
disk, the network, the clock (but for the monotonic one that stops a render, below) or Git, and must not
see a secret's value: the caller reads the template from the repository at the decision's commit and
passes its text in; templates get secret NAMES only, and a secret is written as the literal `${NAME}`
that Docker Compose interpolates on the host.

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

A render has a budget, so that no template can hang or exhaust the reconciler (`reconcile`, `plan`, `why`):

    steps         at most 1,000,000: each loop iteration, each item a filter iterates (`map`, `select`,
                  `sort`, `sum`, `list`...), each call, filter, operator, `~` and list/tuple/dict literal
    time          `RENDER_TIMEOUT` seconds of wall clock (2; `STELLA_RENDER_TIMEOUT`, read at import), the
                  backstop for steps that are slow in themselves
    size          no value it builds spells out more than 1 MiB (a string, a list with its items, a number),
                  refused before it is built where its size can be foreseen (`*`, `**`, `%`, `format`,
                  `str.format`, `join`, `replace`, `center`, `indent`, `wordwrap`, `batch`, `~`...)
                  and checked after every operator, filter, call, literal and `{{ ... }}`
    in all        at most 64 MiB of values built, added up over the render
    output        at most 1 MiB, counted as it streams

The sandbox's hooks check it from inside the render (plain Python: no thread, signal or tracing), and
spending it is a RenderError naming the template and, where Jinja knows it, the line: `rendering took more
than 1000000 steps (the budget of a template)`, `rendering took longer than 2 s (...)`, `builds a value
larger than 1048576 bytes (...)`, `builds more than 67108864 bytes of values in all (...)`. The clock only
ever stops a render; it never changes what a render writes.

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

import contextvars
import functools
import inspect
import json
import os
import posixpath
import re
import string
import time
import types
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any

import yaml
from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, LoopContext, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import Cycler, Namespace
from markupsafe import Markup
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
_MAX_VALUE = _MAX_OUTPUT
"""The most bytes any one value a template builds may spell out (a string, a list, a number...)."""
_MAX_BUILT = 64 * _MAX_OUTPUT
"""The most bytes the values a render builds may add up to (what it allocates, at most)."""
_MAX_STEPS = 1_000_000
"""The most steps a render may take: loop iterations, items a filter iterates, calls, filters, operators."""
_BUDGET_NOTE = "(the budget of a template)"


def _timeout_setting(default: float = 2.0) -> float:
    """`STELLA_RENDER_TIMEOUT` in seconds (read once, at import); `default` when unset or not positive."""
    try:
        value = float(os.environ.get("STELLA_RENDER_TIMEOUT", default))
    except ValueError:
        return default
    return value if 0 < value < float("inf") else default


RENDER_TIMEOUT = _timeout_setting()
"""How long one render may take (wall clock) before it is a RenderError."""
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


# --- the budget of a render: time, steps and size -------------------------------------------------


class _OverBudget(Exception):
    """Raised from inside a template that spent its budget; `_run_template` makes it a RenderError."""


class _Unbudgeted(Exception):
    """A hook ran with no budget set: only `_run_template` compiles and runs templates, with one."""


def _text_size(text: str) -> int:
    """The UTF-8 length of `text` (exact; cheap for ASCII, and at least `len(text)`)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _digits(number: int) -> int:
    """About how many characters `number` takes in decimal (sign included)."""
    return number.bit_length() * 30103 // 100000 + 2


def _weight(value: Any, limit: int = _MAX_VALUE) -> int:
    """About how many bytes `value` spells out (its `str()`, `repr()` or JSON); stops counting past `limit`.

    Containers count their items each time they appear, so that `[a, a, a, a]` nested ten deep weighs what
    printing, comparing or hashing it would walk, not the little memory it shares. Each item adds at least
    one, so a cyclic value is simply too heavy. Objects of no known shape weigh 64 (a repr).
    """
    total = 0
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is list or kind is tuple:  # the common shapes first: isinstance() of an ABC is slow
            total += 2 + 2 * len(item)
            if total <= limit:
                pending.extend(item)
        elif kind is dict:
            total += 2 + 4 * len(item)
            if total <= limit:
                pending.extend(item.keys())
                pending.extend(item.values())
        elif isinstance(item, str):
            total += len(item) if len(item) > limit else _text_size(item)
        elif isinstance(item, bytes | bytearray):
            total += len(item)
        elif isinstance(item, Undefined):  # StrictUndefined refuses len() and iter(): it spells nothing
            total += 1
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += _digits(item)
        elif isinstance(item, float | range):
            total += 24
        elif isinstance(item, Mapping):
            total += 2 + 4 * len(item)
            if total <= limit:
                pending.extend(item.keys())
                pending.extend(item.values())
        elif isinstance(item, Namespace):  # `{% set ns.x = ... %}` stores into it unchecked: weigh it here
            total += 16
            pending.append(object.__getattribute__(item, "_Namespace__attrs"))
        elif isinstance(item, Cycler):
            total += 16
            pending.append(item.items)
        elif isinstance(item, Collection):
            total += 2 + 2 * len(item)
            if total <= limit:
                pending.extend(item)
        else:
            total += 64
        if total > limit:
            return total
    return total


def _fresh_size(value: Any) -> int:
    """What building `value` took at most, beyond what it refers to: text bytes, or 8 per reference."""
    if isinstance(value, str):
        return _text_size(value)
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, Collection) and not isinstance(value, range | Undefined):
        return 8 * len(value)
    return 0


class _Budget:
    """What one render may still spend; the hooks of `_Sandbox` charge it and raise `_OverBudget`.

    Steps are counted (loop iterations, items a filter iterates, calls, filters, operators, literals,
    `~`), so the usual limit does not depend on the machine; the clock is the backstop for a step that is
    slow in itself. Sizes are checked on every value a template builds, before it is built where the size
    can be foreseen (`*`, `%`, `format`, `center`, `replace`, `join`, ...), and added up over the render.
    """

    __slots__ = ("built", "deadline", "steps", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.steps = 0
        self.built = 0

    def tick(self) -> None:
        self.steps += 1
        if self.steps > _MAX_STEPS:
            raise _OverBudget(f"rendering took more than {_MAX_STEPS} steps {_BUDGET_NOTE}")
        if time.monotonic() > self.deadline:
            raise _OverBudget(f"rendering took longer than {self.timeout:g} s {_BUDGET_NOTE}")

    def fits(self, size: int) -> None:
        if size > _MAX_VALUE:
            raise _OverBudget(f"builds a value larger than {_MAX_VALUE} bytes {_BUDGET_NOTE}")

    def spend(self, size: int) -> None:
        self.built += size
        if self.built > _MAX_BUILT:
            raise _OverBudget(f"builds more than {_MAX_BUILT} bytes of values in all {_BUDGET_NOTE}")

    def weigh(self, *values: Any) -> None:
        """Refuse an operand that is too large to print, compare or hash (only a namespace can be)."""
        for value in values:
            if not isinstance(value, int | float | str | Undefined | None):
                self.fits(_weight(value))

    def keep(self, value: Any) -> Any:
        """Check and charge a value a template built; an iterator comes back counting its items."""
        self.fits(_weight(value))
        self.spend(_fresh_size(value))
        if isinstance(value, Iterator) and not isinstance(value, _Counted):
            return _Counted(value, self)
        return value

    def counted(self, iterable: Any) -> _Counted:
        return iterable if isinstance(iterable, _Counted) else _Counted(iterable, self)


_CURRENT: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "stella_render_budget", default=None
)


def _budget() -> _Budget:
    budget = _CURRENT.get()
    if budget is None:
        raise _Unbudgeted("a template value outside a render")
    return budget


class _Counted:
    """Iterates `source`, spending one step of the render's budget per item."""

    __slots__ = ("_budget", "_iterator", "_source")

    def __init__(self, source: Any, budget: _Budget) -> None:
        self._iterator = iter(source)
        self._source = source
        self._budget = budget

    def __iter__(self) -> _Counted:
        return self

    def __next__(self) -> Any:
        self._budget.tick()
        return next(self._iterator)

    def __repr__(self) -> str:
        return repr(self._source)


# printf-style directives: %[(key)][flags][width][.precision][length]type
_PRINTF_RE = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[-#0 +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?(?P<type>.)?", re.S
)
_NUMBER_RE = re.compile(r"\d+")


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= 9 else _MAX_VALUE + 1


def _printf_size(template: Any, values: Any) -> int:
    """An upper bound of the size of `template % values` (each directive: its width, precision and value)."""
    text = template.decode("latin-1") if isinstance(template, bytes | bytearray) else str(template)
    positional = iter(values if isinstance(values, tuple) else (values,))
    mapping = values if isinstance(values, Mapping) else None
    size = len(text)
    for match in _PRINTF_RE.finditer(text):
        if match.group("type") == "%":
            continue
        for number in (match.group("width"), match.group("precision")):
            if number == "*":
                star = next(positional, 0)
                size += star if isinstance(star, int) and star > 0 else 0
            elif number:
                size += _number(number)
        key = match.group("key")
        value = mapping.get(key) if key is not None and mapping is not None else next(positional, None)
        size += _weight(value)
        if size > _MAX_VALUE:
            break
    return size


def _spec_size(spec: str) -> int:
    """The largest number in a format spec (its width or precision): what it can pad a field to."""
    return max((_number(n) for n in _NUMBER_RE.findall(spec)), default=0)


class _FormatterMixin(string.Formatter):
    """`str.format` that refuses a field padded past the budget, and adds up what it wrote."""

    _written = 0

    def vformat(self, format_string: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        self._written = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def format_field(self, value: Any, format_spec: str) -> Any:
        budget = _budget()
        budget.fits(_spec_size(format_spec) + _weight(value))
        text = super().format_field(value, format_spec)
        self._written += len(text)
        budget.fits(self._written)
        return text


class _Formatter(_FormatterMixin, SandboxedFormatter):
    pass


class _EscapeFormatter(_FormatterMixin, SandboxedEscapeFormatter):
    pass


def _foreseen_call(
    obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any], budget: _Budget
) -> tuple[Any, ...]:
    """Refuse a method call on a string, bytes or int that would build a value past the budget.

    Returns the arguments to call with (`join` gets its items as a list, counted as they are read).
    """
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", None)
    if isinstance(owner, str | bytes | bytearray):
        if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
            budget.fits(args[0])
        elif name == "expandtabs":
            tabsize = args[0] if args else kwargs.get("tabsize", 8)
            if isinstance(tabsize, int):
                tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
                budget.fits(len(owner) + tabs * tabsize)
        elif name == "replace" and len(args) >= 2 and all(isinstance(a, type(owner)) for a in args[:2]):
            old, new = args[0], args[1]
            count = args[2] if len(args) > 2 else kwargs.get("count", -1)
            times = owner.count(old) if old else len(owner) + 1
            if isinstance(count, int) and count >= 0:
                times = min(times, count)
            budget.fits(len(owner) + times * (len(new) - len(old)))
        elif name == "join" and args:
            args = (_joined(budget, args[0], len(owner)), *args[1:])
        elif name == "translate" and isinstance(owner, str) and args:
            table = args[0]
            values = (
                table.values()
                if isinstance(table, Mapping)
                else table
                if isinstance(table, list | tuple)
                else ()
            )
            longest = max((len(v) for v in values if isinstance(v, str)), default=1)
            budget.fits(len(owner) * max(longest, 1))
    elif isinstance(owner, int) and name == "to_bytes":
        length = args[0] if args else kwargs.get("length", 1)
        if isinstance(length, int):
            budget.fits(length)
    return args


# Filters that only iterate their value: handed an iterator counting its items, they return the same.
_ITERATING_FILTERS = frozenset(
    {
        "batch",
        "groupby",
        "list",
        "map",
        "max",
        "min",
        "reject",
        "rejectattr",
        "select",
        "selectattr",
        "slice",
        "sort",
        "sum",
        "unique",
    }
)


def _check_center(budget: _Budget, a: dict[str, Any]) -> None:
    if isinstance(a["width"], int):
        budget.fits(a["width"])


def _check_indent(budget: _Budget, a: dict[str, Any]) -> None:
    width = a["width"]
    if isinstance(width, int):
        budget.fits(width)
    prefix = width if isinstance(width, int) else len(str(width))
    text = str(a["s"])
    budget.fits(len(text) + (text.count("\n") + 2) * prefix)


def _check_wordwrap(budget: _Budget, a: dict[str, Any]) -> None:
    width = a["width"]
    if not isinstance(width, int) or width < 1:
        return  # textwrap refuses it
    text = str(a["s"])
    wrap = a["environment"].newline_sequence if a["wrapstring"] is None else str(a["wrapstring"])
    lines = len(text.split()) + len(text) // width + text.count("\n") + 1
    budget.fits(len(text) + lines * len(wrap))


def _check_replace(budget: _Budget, a: dict[str, Any]) -> None:
    text, old, new, count = str(a["s"]), str(a["old"]), str(a["new"]), a["count"]
    times = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    budget.fits(len(text) + times * (len(new) - len(old)))


def _joined(budget: _Budget, items: Any, separator: int) -> list[Any]:
    """`items` as a list (read a step per item) once joining them by `separator` chars fits the budget."""
    if isinstance(items, Collection) and not isinstance(items, Undefined):
        budget.fits(separator * (len(items) - 1))  # before reading a million items of a string
    listed = list(budget.counted(items))
    budget.fits(_weight(listed) + separator * (len(listed) - 1))
    return listed


def _check_join(budget: _Budget, a: dict[str, Any]) -> Any:
    return _joined(budget, a["value"], len(str(a["d"])))


def _check_format(budget: _Budget, a: dict[str, Any]) -> None:
    budget.fits(_printf_size(a["value"], a["kwargs"] or a["args"]))


def _check_batch(budget: _Budget, a: dict[str, Any]) -> None:
    if a["fill_with"] is not None and isinstance(a["linecount"], int):
        budget.fits(a["linecount"] * (_weight(a["fill_with"]) + 2))


def _check_slice(budget: _Budget, a: dict[str, Any]) -> None:
    if isinstance(a["slices"], int):
        budget.fits(4 * a["slices"])  # as many lists, each at least `[], `


def _check_urlize(budget: _Budget, a: dict[str, Any]) -> None:
    text = str(a["value"])
    extra = 64 + len(str(a["target"] or "")) + len(str(a["rel"] or ""))
    links = sum(1 for word in text.split() if any(c in word for c in ".@:"))
    budget.fits(2 * len(text) + links * extra)


_FILTER_CHECKS: dict[str, Callable[[_Budget, dict[str, Any]], Any]] = {
    "center": _check_center,
    "indent": _check_indent,
    "wordwrap": _check_wordwrap,
    "replace": _check_replace,
    "join": _check_join,
    "format": _check_format,
    "batch": _check_batch,
    "slice": _check_slice,
    "urlize": _check_urlize,
}
"""Checks of what a filter would build, given its arguments by name; one may return the value to use."""


def _binder(
    func: Callable[..., Any], passes: bool
) -> Callable[[tuple[Any, ...], dict[str, Any]], dict[str, Any] | None]:
    """A cheap `inspect.Signature.bind` for a filter's arguments: by name, defaults filled; None when the
    arguments do not fit (the call itself then says why)."""
    inner = inspect.unwrap(func)
    params = list(inspect.signature(inner).parameters.values())
    if passes and getattr(inner, "jinja_pass_arg", None) is None:
        # an async_variant wrapper takes the eval context that the sync function it wraps does not
        params.insert(0, inspect.Parameter("eval_ctx", inspect.Parameter.POSITIONAL_ONLY))
    kind = inspect.Parameter
    positional = [p.name for p in params if p.kind in (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD)]
    named = {p.name for p in params if p.kind in (kind.POSITIONAL_OR_KEYWORD, kind.KEYWORD_ONLY)}
    required = {
        p.name
        for p in params
        if p.default is kind.empty and p.kind not in (kind.VAR_POSITIONAL, kind.VAR_KEYWORD)
    }
    defaults = {p.name: p.default for p in params if p.default is not kind.empty}
    var_args = next((p.name for p in params if p.kind is kind.VAR_POSITIONAL), None)
    var_kwargs = next((p.name for p in params if p.kind is kind.VAR_KEYWORD), None)

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        arguments = dict(defaults)
        arguments.update(zip(positional, args, strict=False))
        if len(args) > len(positional):
            if var_args is None:
                return None
            arguments[var_args] = args[len(positional) :]
        elif var_args is not None:
            arguments[var_args] = ()
        extra = {}
        for key, value in kwargs.items():
            if key in named:
                arguments[key] = value
            else:
                extra[key] = value
        if var_kwargs is not None:
            arguments[var_kwargs] = extra
        elif extra:
            return None
        return arguments if required <= arguments.keys() else None

    return bind


def _guarded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` charging the budget: a step, its operands' weight, what it would build, what it built."""
    passes = getattr(func, "jinja_pass_arg", None) is not None  # context/eval context/environment first
    offset = 1 if passes else 0
    check = _FILTER_CHECKS.get(name)
    bind = _binder(func, passes) if check is not None else None
    iterates = name in _ITERATING_FILTERS

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()  # compiling (Jinja folds filters of constants) has a budget too: see _run_template
        budget.tick()
        budget.weigh(*args[offset:], *kwargs.values())
        if check is not None and bind is not None and (arguments := bind(args, kwargs)) is not None:
            value = check(budget, arguments)
            if value is not None:
                args = (*args[:offset], value, *args[offset + 1 :])
        if iterates and len(args) > offset:
            args = (*args[:offset], budget.counted(args[offset]), *args[offset + 1 :])
        return budget.keep(func(*args, **kwargs))

    return guarded


def _hooked(hook: str, node: nodes.Expr) -> nodes.Call:
    """The expression `environment.<hook>(<node>)` (Jinja allows no node types of one's own)."""
    attribute = nodes.EnvironmentAttribute(hook, lineno=node.lineno, environment=node.environment)
    return nodes.Call(attribute, [node], [], None, None, lineno=node.lineno, environment=node.environment)


class _CodeGenerator(CodeGenerator):
    """Jinja's compiler, with the budget's hooks around loops, `~` and literals.

    Loops iterate through `stella_iterate` (a step per item), `~` goes through `stella_concat` (the parts
    are weighed before they are joined) and list, tuple and dict literals through `stella_literal`.
    """

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in list(node.find_all(nodes.For)):
            assert isinstance(loop.iter, nodes.Expr)
            loop.iter = _hooked("stella_iterate", loop.iter)
        super().visit_Template(node, frame)

    def visit_Call(self, node: nodes.Call, frame: Frame, forward_caller: bool = False) -> None:
        hook = node.node
        if isinstance(hook, nodes.EnvironmentAttribute) and hook.name.startswith("stella_"):
            self.write(f"environment.{hook.name}(")  # ours: not through the sandbox's call()
            self.visit(node.args[0], frame)
            self.write(")")
        else:
            super().visit_Call(node, frame, forward_caller=forward_caller)

    @optimizeconst  # as Jinja's: `~` of constants is joined at compile time (its size is the template's)
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.stella_concat({join}, (")
        for part in node.nodes:
            self.visit(part, frame)
            self.write(", ")
        self.write("))")

    def _literal(self, visit: Callable[[], None]) -> None:
        self.write("environment.stella_literal(")
        visit()
        self.write(")")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self._literal(lambda: super(_CodeGenerator, self).visit_List(node, frame))

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self._literal(lambda: super(_CodeGenerator, self).visit_Dict(node, frame))

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx == "store":
            super().visit_Tuple(node, frame)
        else:
            self._literal(lambda: super(_CodeGenerator, self).visit_Tuple(node, frame))


def _finalize(value: Any) -> Any:
    """What `{{ ... }}` prints: the value, once it is known not to spell out more than the budget."""
    budget = _budget()
    size = _weight(value)
    budget.fits(size)
    if not isinstance(value, str):
        budget.spend(size)  # str() builds it
    return value


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, spending a budget (`_Budget`) in every loop, call, filter and operator."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.tick()
        budget.weigh(left, right)
        if operator == "**" and isinstance(right, int) and right > _MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is too large (at most {_MAX_EXPONENT})")
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
            budget.fits(_digits(left) * right)
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                budget.fits(_digits(left) + _digits(right))
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | bytes | list | tuple) and isinstance(n, int) and n > 0:
                    budget.fits(_weight(seq, _MAX_VALUE // n) * n)
        if operator == "%" and isinstance(left, str | bytes):
            budget.fits(_printf_size(left, right))
        return budget.keep(super().call_binop(context, operator, left, right))

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        budget.weigh(*args, *kwargs.values())
        if isinstance(obj, LoopContext) and args:  # `loop(children)` in a recursive loop
            args = (budget.counted(args[0]), *args[1:])
        obj = self.wrap_str_format(obj) or obj  # Jinja before 3.1.5 hands out `str.format` itself
        args = _foreseen_call(obj, args, kwargs, budget)
        return budget.keep(super().call(context, obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format`/`format_map` through a formatter that keeps to the budget (see `_FormatterMixin`)."""
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        f_self = value.__self__
        if not isinstance(f_self, str):
            return None
        formatter: _FormatterMixin
        if isinstance(f_self, Markup):
            formatter = _EscapeFormatter(self, escape=f_self.escape)
        else:
            formatter = _Formatter(self)
        is_format_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs, args = args[0], ()
            return type(f_self)(formatter.vformat(f_self, args, kwargs))

        return functools.update_wrapper(wrapper, value)

    def concat(self, parts: Iterable[str]) -> str:
        """Join a macro's, block's or `{% set %}` block's output, refusing it past the budget."""
        budget = _budget()
        kept, size = [], 0
        for part in parts:
            size += len(part)
            budget.fits(size)
            kept.append(part)
        return budget.keep("".join(kept))  # type: ignore[no-any-return]

    def stella_iterate(self, iterable: Any) -> _Counted:
        return _budget().counted(iterable)

    def stella_concat(self, join: Callable[[Iterable[Any]], str], parts: tuple[Any, ...]) -> str:
        budget = _budget()
        budget.tick()
        size = 0
        for part in parts:
            size += _weight(part)
            budget.fits(size)
        return budget.keep(join(parts))  # type: ignore[no-any-return]

    def stella_literal(self, value: Any) -> Any:
        budget = _budget()
        budget.tick()
        return budget.keep(value)


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
        finalize=_finalize,
    )
    env.filters["tojson"] = _yaml_safe_json
    del env.filters["random"]
    del env.globals["lipsum"]
    for name, func in list(env.filters.items()):
        env.filters[name] = _guarded_filter(name, func)
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
    token = _CURRENT.set(_Budget(RENDER_TIMEOUT))  # Jinja folds constants when compiling: a budget of its own
    try:
        compiled = _compile(source)
    except TemplateSyntaxError as exc:
        raise RenderError(f"template syntax error: {exc.message}", file=where, line=exc.lineno) from exc
    finally:
        _CURRENT.reset(token)
    parts: list[str] = []
    size = 0
    token = _CURRENT.set(_Budget(RENDER_TIMEOUT))
    stream = compiled.generate(context)
    assert isinstance(stream, Generator)  # Template.generate is a generator function
    try:
        for chunk in stream:
            size += _text_size(chunk)
            if size > _MAX_OUTPUT:
                raise RenderError(f"template output is larger than {_MAX_OUTPUT} bytes", file=where)
            parts.append(chunk)
    except RenderError:
        raise
    except _OverBudget as exc:
        raise RenderError(str(exc), file=where, line=_template_line(exc)) from None
    except SecurityError as exc:
        raise RenderError(
            f"refused by the template sandbox: {exc}", file=where, line=_template_line(exc)
        ) from exc
    except Exception as exc:  # anything a template raises is a problem of that template
        raise RenderError(f"template error: {exc}", file=where, line=_template_line(exc)) from exc
    finally:
        stream.close()
        _CURRENT.reset(token)
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
