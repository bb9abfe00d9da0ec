"""The one loader: a repository's files (at a commit, or a work tree) -> validated models.

It finds every manifest (DESIGN §3), parses its YAML safely (size limit, no anchors or aliases, no
duplicate keys, one document), validates it against its model, and cross-checks references between
manifests. It collects every problem, each with its file and line, instead of stopping at the first:
`stella validate` shows them all. Reads only through a `FileSource`; writes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import Problem, ValidationFailed
from .models import (
    Approval,
    Environment,
    Groups,
    PolicyApproval,
    Promotion,
    Release,
    Repository,
    Settings,
)

MAX_MANIFEST_BYTES = 256 * 1024
SETTINGS_FILE = "stella.yaml"
GROUPS_FILE = "trust/groups.yaml"
_SAFE_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""A manifest's or promotion's name, as `models.Name` allows: 1-128 of letters, digits, `.`, `_`, `-`."""
_IDENTITY_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9][A-Za-z0-9.-]{0,190}$")
"""An approval file's name: the approver's identity, as `models.Identity` allows."""
CONTAINED = ("promotions/", "approvals/", "releases/")
"""Where a bad file holds up only what depends on it (a reconcile pass goes on with the rest)."""
POLICY_APPROVALS = re.compile(r"^policy-(?P<hex>[0-9a-f]{64})$")
"""`approvals/policy-<hex>/`: approvals of ratifying policy `sha256:<hex>` (not of a promotion)."""
ROLLBACK_ID = re.compile(r"^(?P<promotion>.+)--rollback-(?P<n>[1-9][0-9]{0,5})$")
"""`promotions/<release>--<env>--rollback-<n>.yaml` (`stella rollback`): such an id names a rollback of
exactly that release to exactly that environment."""

M = TypeVar("M", bound=BaseModel)


class Files(Protocol):
    """What the loader needs of a file source (`repo.WorkTree`, `repo.GitTree`)."""

    def read(self, path: str) -> bytes | None: ...
    def size(self, path: str) -> int | None: ...
    def listdir(self, path: str) -> list[str]: ...
    def isdir(self, path: str) -> bool: ...


@dataclass
class _Doc:
    """A parsed YAML document and the line (1-based) of every key and value path in it."""

    data: Any
    lines: dict[tuple[str | int, ...], int] = field(default_factory=dict)

    def line_of(self, loc: tuple[str | int, ...]) -> int | None:
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return None


class _YamlProblem(Exception):
    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


def _show(path: str) -> str:
    """A path safe to print: control characters escaped."""
    return path.encode("unicode_escape").decode("ascii") if not path.isprintable() else path


_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader when PyYAML was built with it (much faster), else the pure-Python one."""


def parse_yaml(text: str) -> _Doc:
    """Parse one YAML document, keeping lines; raise _YamlProblem on anything unsafe or invalid."""
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                line = event.start_mark.line + 1 if event.start_mark else None
                raise _YamlProblem("YAML anchors and aliases are not allowed in manifests", line)
        loader = _LOADER(text)
        try:
            node = loader.get_single_node()
            doc = _Doc(None)
            doc.data = _build(loader, node, (), doc) if node is not None else None
            return doc
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise _YamlProblem(f"YAML syntax error: {exc.problem or exc}", line) from None
    except yaml.YAMLError as exc:
        raise _YamlProblem(f"YAML error: {exc}", None) from None
    except RecursionError:
        raise _YamlProblem("nested too deep to read", None) from None


MAX_DEPTH = 64
"""How deep a manifest's mappings and lists may nest (a manifest needs a handful of levels)."""


def _build(loader: Any, node: yaml.Node, path: tuple[str | int, ...], doc: _Doc) -> Any:
    if len(path) > MAX_DEPTH:
        raise _YamlProblem(f"nested more than {MAX_DEPTH} levels deep", node.start_mark.line + 1)
    doc.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise _YamlProblem("mapping keys must be plain strings", key_node.start_mark.line + 1)
            key = loader.construct_object(key_node)
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _YamlProblem("YAML merge keys (<<) are not allowed", key_node.start_mark.line + 1)
            if not isinstance(key, str):
                key = str(key)
            if key in out:
                raise _YamlProblem(f"duplicate key {key!r}", key_node.start_mark.line + 1)
            doc.lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _build(loader, value_node, (*path, key), doc)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, (*path, i), doc) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _pydantic_problems(file: str, doc: _Doc, exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if p not in ("absolute", "recurring"))
        dotted = ".".join(str(p) for p in loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            message = f"unknown field {dotted!r}"
        elif kind == "missing":
            message = f"missing required field {dotted!r}"
        elif kind == "literal_error" and loc and loc[-1] == "apiVersion":
            message = f"apiVersion must be 'stella/v1', not {err.get('input')!r}"
        else:
            text = err["msg"].removeprefix("Value error, ")
            message = f"{dotted}: {text}" if dotted else text
        problems.append(Problem(file, doc.line_of(loc), message))
    return problems


class Loader:
    """Collects problems while loading; `load()` returns the repository or raises ValidationFailed."""

    def __init__(
        self, files: Files, pending_environments: frozenset[str] = frozenset(), *, contain: bool = False
    ) -> None:
        self.files = files
        self.contain = contain
        """Keep going past problems in promotions, approvals and releases (`CONTAINED`): each holds up
        only what depends on it, and is listed in `Repository.problems`."""
        self.pending_environments = pending_environments
        """Environments a promotion may name although they are not loaded (not ratified yet)."""
        self.problems: list[Problem] = []
        self.seen: dict[str, set[str]] = {}
        """Stems found per directory, loadable or not: a broken file is not also 'unknown'."""

    def problem(self, file: str, line: int | None, message: str) -> None:
        self.problems.append(Problem(_show(file), line, message))

    def _document(self, path: str) -> _Doc | None:
        size = self.files.size(path)
        if size is None:
            self.problem(path, None, "not a regular file")
            return None
        if size > MAX_MANIFEST_BYTES:
            self.problem(path, None, f"file is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")
            return None
        raw = self.files.read(path) or b""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.problem(path, None, f"not UTF-8 text (byte {exc.start})")
            return None
        try:
            doc = parse_yaml(text)
        except _YamlProblem as exc:
            self.problem(path, exc.line, str(exc))
            return None
        if not isinstance(doc.data, dict):
            self.problem(path, 1, "expected a mapping of fields (apiVersion, kind, ...)")
            return None
        return doc

    def _model(self, path: str, model: type[M], kind: str) -> tuple[M, _Doc] | None:
        doc = self._document(path)
        if doc is None:
            return None
        found = doc.data.get("kind")
        if found != kind:
            line = doc.lines.get(("kind",), 1)
            self.problem(path, line, f"kind must be {kind!r} here, not {found!r}")
            return None
        try:
            return model.model_validate(doc.data), doc
        except ValidationError as exc:
            self.problems.extend(_pydantic_problems(_show(path), doc, exc))
            return None

    def _manifests(
        self, directory: str, only: set[str] | None = None, *, identities: bool = False
    ) -> Iterator[tuple[str, str]]:
        """(path, stem) of each manifest in `directory` (or just those named in `only`, when they
        exist: no directory listing then); odd file names are problems."""
        names = (
            self.files.listdir(directory)
            if only is None
            else [
                f"{stem}.yaml"
                for stem in sorted(only)
                if self.files.size(f"{directory}/{stem}.yaml") is not None
            ]
        )
        for name in names:
            path = f"{directory}/{name}"
            if name.startswith("."):
                continue
            if name.endswith(".yml"):
                self.problem(path, None, "manifests use the .yaml extension")
                continue
            if not name.endswith(".yaml"):
                if self.files.isdir(path):
                    self.problem(path, None, f"unexpected directory in {directory}/")
                continue
            stem = name[: -len(".yaml")]
            self.seen.setdefault(directory, set()).add(stem)
            pattern = _IDENTITY_STEM if identities else _SAFE_STEM
            if not pattern.match(stem) or ".." in stem:
                what = (
                    "an approver identity (an email address)"
                    if identities
                    else "a valid name (1-128 letters, digits, . _ -)"
                )
                self.problem(path, None, f"file name {_show(stem)!r} is not {what}")
                continue
            yield path, stem

    def _named(
        self, directory: str, model: type[M], kind: str, only: set[str] | None = None
    ) -> dict[str, tuple[M, _Doc]]:
        out: dict[str, tuple[M, _Doc]] = {}
        lowered: dict[str, str] = {}
        for path, stem in self._manifests(directory, only):
            loaded = self._model(path, model, kind)
            if loaded is None:
                continue
            name = getattr(loaded[0], "name", stem)
            if name != stem:
                line = loaded[1].lines.get(("name",))
                self.problem(path, line, f"name {name!r} does not match the file name {stem!r}")
                continue
            if stem.lower() in lowered:
                self.problem(path, None, f"duplicate name: {lowered[stem.lower()]} has the same name")
                continue
            lowered[stem.lower()] = path
            out[stem] = loaded
        return out

    def load(self, promotions: set[str] | None = None, releases: set[str] | None = None) -> Repository:
        """Load everything, or -- when `promotions` is given -- the settings, groups, environments,
        those promotions with their approvals and releases, and `releases`: the incremental path of a
        reconcile pass, which must not read a whole history of manifests to find what changed."""
        partial = promotions is not None
        settings = None
        loaded: tuple[Settings, _Doc] | None = None
        if self.files.size(SETTINGS_FILE) is None:
            self.problem(SETTINGS_FILE, None, "missing: every Stella repository has a stella.yaml")
        else:
            loaded = self._model(SETTINGS_FILE, Settings, "Settings")
            settings = loaded[0] if loaded else None
        groups: Groups | None = Groups(apiVersion="stella/v1", kind="Groups")
        if self.files.size(GROUPS_FILE) is not None:
            loaded_groups = self._model(GROUPS_FILE, Groups, "Groups")
            groups = loaded_groups[0] if loaded_groups else None  # broken: skip group checks
        environments = self._named("environments", Environment, "Environment")
        if loaded is not None and settings is not None and settings.limits.environments is not None:
            hard = settings.limits.environments.hard
            count = len(self.seen.get("environments", set()))
            if count > hard:
                line = loaded[1].lines.get(("limits", "environments", "hard"))
                self.problem(
                    SETTINGS_FILE,
                    line,
                    f"limits.environments: {count} environments, over the hard limit of {hard} "
                    "(raise the limit or remove environments)",
                )
        loaded_promotions: dict[str, tuple[Promotion, _Doc]] = {}
        for path, stem in self._manifests("promotions", promotions):
            loaded_promotion = self._model(path, Promotion, "Promotion")
            if loaded_promotion and self._rollback_id(path, stem, *loaded_promotion):
                loaded_promotions[stem] = loaded_promotion
        wanted = None
        if partial:
            wanted = set(releases or ()) | {p.release for p, _ in loaded_promotions.values()}
        loaded_releases = self._named("releases", Release, "Release", wanted)
        approvals = self._approvals(loaded_promotions, set(loaded_promotions) if partial else None)
        self._cross_check(environments, loaded_releases, loaded_promotions, groups)
        contained = [p for p in self.problems if self.contain and p.file.startswith(CONTAINED)]
        if len(contained) < len(self.problems) or settings is None or groups is None:
            raise ValidationFailed(self.problems)
        held = {pid for p in contained if (pid := held_promotion(p.file)) is not None}
        return Repository(
            settings=settings,
            environments={k: v[0] for k, v in environments.items()},
            releases={k: v[0] for k, v in loaded_releases.items()},
            promotions={k: v[0] for k, v in loaded_promotions.items() if k not in held},
            approvals={k: v for k, v in approvals.items() if k not in held},
            groups=groups,
            commit=getattr(self.files, "commit", None),
            problems=tuple(sorted(contained)),
        )

    def _rollback_id(self, path: str, stem: str, promotion: Promotion, doc: _Doc) -> bool:
        """A rollback id (`<release>--<env>--rollback-<n>`) must name the file's own release and
        environment, and the file must be a rollback: an id never claims another promotion's name."""
        expected = f"{promotion.release}--{promotion.environment}"
        match = ROLLBACK_ID.match(stem)
        if match is None or stem == expected:  # not a rollback id (an environment may be `rollback-1`)
            return True
        if match["promotion"] != expected:
            line = doc.lines.get(("release",))
            self.problem(
                path,
                line,
                f"the rollback id {stem!r} names {match['promotion']!r}, but the file promotes "
                f"{promotion.release} to {promotion.environment} "
                f"(its id would be {expected}--rollback-{match['n']})",
            )
            return False
        if not promotion.rollback:
            line = doc.lines.get(("rollback",), doc.lines.get(("kind",)))
            self.problem(path, line, f"{stem!r} is a rollback id: the file must say rollback: true")
            return False
        return True

    def _approvals(
        self, promotions: dict[str, tuple[Promotion, _Doc]], only: set[str] | None = None
    ) -> dict[str, dict[str, Approval]]:
        out: dict[str, dict[str, Approval]] = {}
        directories = self.files.listdir("approvals") if only is None else sorted(only)
        for directory in directories:
            if only is not None and not self.files.isdir(f"approvals/{directory}"):
                continue
            dir_path = f"approvals/{directory}"
            if directory.startswith(".") or POLICY_APPROVALS.match(directory):
                continue
            if not self.files.isdir(dir_path):
                self.problem(dir_path, None, "expected a directory approvals/<promotion>/")
                continue
            if not _SAFE_STEM.match(directory) or ".." in directory:
                self.problem(dir_path, None, f"{_show(directory)!r} is not a valid promotion id")
                continue
            if directory not in promotions:
                self.problem(dir_path, None, f"approvals for unknown promotion {directory!r}")
            for path, identity in self._manifests(dir_path, identities=True):
                loaded = self._model(path, Approval, "Approval")
                if loaded is None:
                    continue
                approval, doc = loaded
                if approval.promotion != directory:
                    self.problem(
                        path,
                        doc.lines.get(("promotion",)),
                        f"promotion {approval.promotion!r} does not match its directory {directory!r}",
                    )
                    continue
                if "@" not in identity:
                    self.problem(path, None, f"file name {identity!r} must be the approver's identity")
                    continue
                out.setdefault(directory, {})[identity] = approval
        return out

    def policy_votes(self, policy_hex: str) -> dict[str, PolicyApproval]:
        """The approvals under `approvals/policy-<hex>/` that load, by identity (problems collected)."""
        directory = f"approvals/policy-{policy_hex}"
        out: dict[str, PolicyApproval] = {}
        if not self.files.isdir(directory):
            return out
        for path, identity in self._manifests(directory, identities=True):
            loaded = self._model(path, PolicyApproval, "Approval")
            if loaded is None:
                continue
            approval, doc = loaded
            if approval.policy != f"sha256:{policy_hex}":
                self.problem(
                    path, doc.lines.get(("policy",)), f"policy {approval.policy} does not match its directory"
                )
                continue
            if "@" not in identity:
                self.problem(path, None, f"file name {identity!r} must be the approver's identity")
                continue
            out[identity] = approval
        return out

    def _cross_check(
        self,
        environments: dict[str, tuple[Environment, _Doc]],
        releases: dict[str, tuple[Release, _Doc]],
        promotions: dict[str, tuple[Promotion, _Doc]],
        groups: Groups | None,
    ) -> None:
        known_envs = self.seen.get("environments", set())
        known_releases = self.seen.get("releases", set())
        known_groups = None if groups is None else set(groups.groups)
        targets: dict[str, str] = {}
        for name, (env, doc) in sorted(environments.items()):
            path = f"environments/{name}.yaml"
            if env.promotesFrom and env.promotesFrom not in known_envs:
                self.problem(
                    path,
                    doc.lines.get(("promotesFrom",)),
                    f"unknown environment {env.promotesFrom!r}",
                )
            for field_name, policy in (
                ("approvals", env.approvals),
                ("rollbackApprovals", env.rollbackApprovals),
            ):
                for i, group in enumerate(policy.groups if policy else ()):
                    if known_groups is not None and group not in known_groups:
                        self.problem(
                            path,
                            doc.lines.get((field_name, "groups", i)),
                            f"unknown approver group {group!r} (groups live in {GROUPS_FILE})",
                        )
            if env.template and self.files.size(env.template) is None:
                self.problem(path, doc.lines.get(("template",)), f"template {env.template!r} not found")
            for i, target in enumerate(env.targets):
                if target.name in targets:
                    self.problem(
                        path,
                        doc.lines.get(("targets", i, "name")),
                        f"target {target.name!r} is also defined in {targets[target.name]}",
                    )
                targets.setdefault(target.name, path)
        self._check_cycles(environments)
        for pid, (promotion, doc) in sorted(promotions.items()):
            path = f"promotions/{pid}.yaml"
            if promotion.release not in known_releases:
                self.problem(path, doc.lines.get(("release",)), f"unknown release {promotion.release!r}")
            if promotion.environment not in known_envs | self.pending_environments:
                self.problem(
                    path,
                    doc.lines.get(("environment",)),
                    f"unknown environment {promotion.environment!r}",
                )

    def _check_cycles(self, environments: dict[str, tuple[Environment, _Doc]]) -> None:
        for start in sorted(environments):
            seen = [start]
            current = environments[start][0].promotesFrom
            while current in environments:
                if current in seen:
                    if current == start:
                        self.problem(
                            f"environments/{start}.yaml",
                            environments[start][1].lines.get(("promotesFrom",)),
                            "promotesFrom forms a cycle: " + " -> ".join([*seen, current]),
                        )
                    break
                seen.append(current)
                current = environments[current][0].promotesFrom


def held_promotion(file: str) -> str | None:
    """The promotion a contained problem holds up: its own file, or one of its approval files."""
    parts = file.split("/")
    if parts[0] == "promotions" and len(parts) == 2:
        return parts[1].removesuffix(".yaml")
    if parts[0] == "approvals" and len(parts) >= 2 and not POLICY_APPROVALS.match(parts[1]):
        return parts[1]
    return None


def manifest_of(path: str) -> tuple[str, str] | None:
    """What a changed path is, for the incremental pass: ("promotion" | "approval", promotion id),
    ("release", name) or ("policy", hex) for a policy approval; None for anything else (settings,
    environments, trust, templates, mirror)."""
    parts = path.split("/")
    if len(parts) == 2 and parts[0] in ("promotions", "releases") and parts[1].endswith(".yaml"):
        return parts[0][:-1], parts[1].removesuffix(".yaml")
    if len(parts) == 3 and parts[0] == "approvals":
        match = POLICY_APPROVALS.match(parts[1])
        return ("policy", match["hex"]) if match else ("approval", parts[1])
    return None


def load_repository(
    files: Files,
    *,
    promotions: set[str] | None = None,
    releases: set[str] | None = None,
    pending_environments: frozenset[str] = frozenset(),
    contain: bool = False,
) -> Repository:
    """Load and validate every manifest (or a part: see `Loader.load`); raise ValidationFailed
    listing all problems. Promotions may name `pending_environments` (in the branch's policy, not yet
    ratified) without it being a problem. `contain` (a reconcile pass): problems in promotions,
    approvals and releases leave those out (and the promotions they belong to) instead of failing,
    listed in `Repository.problems`; any other problem still fails."""
    return Loader(files, pending_environments, contain=contain).load(promotions, releases)


def load_settings(files: Files) -> Settings:
    """Only `stella.yaml` (for commands that need no more)."""
    loader = Loader(files)
    loaded = loader._model(SETTINGS_FILE, Settings, "Settings") if files.size(SETTINGS_FILE) else None
    if loaded is None:
        if not loader.problems:
            loader.problem(SETTINGS_FILE, None, "missing: every Stella repository has a stella.yaml")
        raise ValidationFailed(loader.problems)
    return loaded[0]
