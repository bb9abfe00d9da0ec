"""YAML for a lock: one reader and one writer that agree on what a plain scalar means, and node helpers.

Reading gives a node tree (`_parse`), not Python values, so that every scalar keeps the text the template
gave it: one document, no anchors or aliases, no duplicate keys, no YAML tags beyond the core ones.
Writing (`_canonical_style`, `_serialize`) is block style, with strings quoted only where plain would
mislead, including forms YAML 1.2 (Docker Compose) reads as numbers. Problems are `_YamlProblem`s with
the line they are on, never a PyYAML error. This module must not know what a lock means (that is
`compose`, `lockfile` and `hostaccess`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .problems import _YamlProblem

_WIDTH = 1 << 30

_YAML = "tag:yaml.org,2002:"
_STR = _YAML + "str"
_MAP = _YAML + "map"
_ALLOWED_TAGS = frozenset(
    _YAML + t for t in ("str", "int", "float", "bool", "null", "timestamp", "value", "map", "seq")
)

# Characters that cannot stand literally inside a double-quoted YAML scalar without changing its value:
# non-printables (YAML 1.1), NEL and the Unicode line/paragraph separators (line breaks to YAML), the BOM.
_UNSAFE_IN_YAML_RE = re.compile(
    "[^\t\n\r\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)


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
