"""What keyless signing and verification trust: the repository's keyless policy and the trusted root
it pins, and the Sigstore instance the signer uses.

What it does: `parse_keyless_policy` / `load_keyless_policy` read `trust/keyless.yaml` (a
`KeylessPolicy`: the identities allowed to sign, SAN and OIDC issuer, and the path of a pinned
Sigstore trusted root) into frozen models, with file and line on every error; `read_trusted_root`
reads the root it pins. `trust_config` reads the ClientTrustConfig of a private instance named by
`STELLA_SIGSTORE_TRUST_CONFIG` (None: the public-good instance, whose material comes through TUF when
the signer first needs it).

What it must not do: touch the network (TUF is sigstore-python's, at signing time), verify bundles
(`keyless_verifier`), accept YAML anchors, aliases, merge keys or duplicate keys, print, import sigstore
at module level (it is imported where used: importing it costs every process that loads the plugins
~0.15 s).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from reconciler.api import FileSource, InvalidInput, Problem, RepoPath, ValidationFailed

if TYPE_CHECKING:
    from sigstore.models import ClientTrustConfig

TRUST_CONFIG_ENV = "STELLA_SIGSTORE_TRUST_CONFIG"
"""Environment variable holding the path of a ClientTrustConfig JSON file (a private instance)."""

KEYLESS_POLICY_PATH = "trust/keyless.yaml"
"""Where a repository keeps its `KeylessPolicy`."""

MAX_POLICY_BYTES = 64 * 1024


def describe_error(exc: BaseException) -> str:
    """`Type: message` of an exception (its cause's message when it has none of its own)."""
    text = str(exc).strip()
    if not text and exc.__cause__ is not None:
        text = str(exc.__cause__).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- the instance -------------------------------------------------------------------------------


def trust_config(environ: Mapping[str, str]) -> ClientTrustConfig | None:
    """The private instance named by `STELLA_SIGSTORE_TRUST_CONFIG`, or None (the public-good one)."""
    value = environ.get(TRUST_CONFIG_ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            f"{path}: cannot read the Sigstore trust config ({TRUST_CONFIG_ENV}): {exc}"
        ) from exc
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import ClientTrustConfig

    try:
        config = ClientTrustConfig.from_json(text)
        # Both parts are checked now, so that a broken file is reported before anything is signed.
        config.trusted_root.get_fulcio_certs()
        config.signing_config.get_fulcio()
    except (SigstoreError, ValueError) as exc:
        raise InvalidInput(
            f"{path}: not a usable Sigstore ClientTrustConfig ({TRUST_CONFIG_ENV}): {describe_error(exc)}"
        ) from exc
    return config


# --- the policy ---------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _valid_san(value: str) -> str:
    if not value or value != value.strip() or len(value) > 4096:
        raise ValueError(
            f"{value!r} is not a certificate identity (a URI or an email, no surrounding spaces)"
        )
    return value


def _valid_issuer(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value) or len(value) > 4096:
        raise ValueError(
            f"{value!r} is not an OIDC issuer URL (e.g. https://token.actions.githubusercontent.com)"
        )
    return value


class KeylessIdentity(_Model):
    """One identity allowed to sign: the certificate's SAN and OIDC issuer, both compared exactly."""

    san: Annotated[str, AfterValidator(_valid_san)]
    """E.g. `https://github.com/acme/shop/.github/workflows/release.yml@refs/heads/main` or an email."""
    issuer: Annotated[str, AfterValidator(_valid_issuer)]
    """E.g. `https://token.actions.githubusercontent.com`."""


class KeylessPolicy(_Model):
    """`trust/keyless.yaml`: which keyless signatures count, verified against a pinned trusted root."""

    apiVersion: Literal["stella/v1"]
    kind: Literal["KeylessPolicy"]
    trustedRoot: RepoPath
    """A Sigstore trusted root (`trusted_root.json`) in the repository."""
    identities: Annotated[list[KeylessIdentity], Field(min_length=1)]


def _yaml_tree(text: str, source: str) -> tuple[Any, dict[tuple[str | int, ...], int]]:
    """Parse one YAML document (no anchors, aliases, merge keys or duplicate keys); keep key lines."""
    lines: dict[tuple[str | int, ...], int] = {}

    def build(loader: yaml.SafeLoader, node: yaml.Node, path: tuple[str | int, ...]) -> Any:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    raise InvalidInput("mapping keys must be plain strings", file=source, line=line)
                key = str(loader.construct_object(key_node))
                if key in out:
                    raise InvalidInput(f"duplicate key {key!r}", file=source, line=line)
                lines[(*path, key)] = line
                out[key] = build(loader, value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(loader, item, (*path, i)) for i, item in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                line = event.start_mark.line + 1 if event.start_mark else None
                raise InvalidInput("YAML anchors and aliases are not allowed", file=source, line=line)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            return (None if node is None else build(loader, node, ())), lines
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise InvalidInput(
            f"YAML syntax error: {exc.problem or exc}", file=source, line=mark.line + 1 if mark else None
        ) from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"YAML error: {exc}", file=source) from None


def parse_keyless_policy(data: bytes, *, source: str = KEYLESS_POLICY_PATH) -> KeylessPolicy:
    """Parse a `KeylessPolicy`; `InvalidInput` (with the line where known) when it is not one.

    Several field errors are raised together as `ValidationFailed`.
    """
    if len(data) > MAX_POLICY_BYTES:
        raise InvalidInput(f"file is {len(data)} bytes, over the {MAX_POLICY_BYTES}-byte limit", file=source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"not UTF-8 text (byte {exc.start})", file=source) from None
    tree, lines = _yaml_tree(text, source)
    if not isinstance(tree, dict):
        raise InvalidInput(
            "expected a mapping of fields (apiVersion, kind, trustedRoot, identities)", file=source
        )
    if tree.get("kind") != "KeylessPolicy":
        raise InvalidInput(
            f"kind must be 'KeylessPolicy' here, not {tree.get('kind')!r}",
            file=source,
            line=lines.get(("kind",)),
        )
    try:
        return KeylessPolicy.model_validate(tree)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            dotted = ".".join(str(p) for p in loc)
            if err["type"] == "extra_forbidden":
                message = f"unknown field {dotted!r}"
            elif err["type"] == "missing":
                message = f"missing required field {dotted!r}"
            elif err["type"] == "literal_error" and loc == ("apiVersion",):
                message = f"apiVersion must be 'stella/v1', not {err.get('input')!r}"
            else:
                message = f"{dotted}: {err['msg'].removeprefix('Value error, ')}"
            line = next((lines[loc[:end]] for end in range(len(loc), -1, -1) if loc[:end] in lines), None)
            problems.append(Problem(source, line, message))
        if len(problems) == 1:
            raise InvalidInput(problems[0].message, file=source, line=problems[0].line) from None
        raise ValidationFailed(problems) from None


def load_keyless_policy(files: FileSource) -> KeylessPolicy | None:
    """The repository's `trust/keyless.yaml`, or None when it has none."""
    data = files.read(KEYLESS_POLICY_PATH)
    return None if data is None else parse_keyless_policy(data)


def read_trusted_root(files: FileSource, keyless_policy: KeylessPolicy) -> bytes:
    """The bytes of the trusted root the policy pins."""
    data = files.read(keyless_policy.trustedRoot)
    if data is None:
        raise InvalidInput(
            f"{keyless_policy.trustedRoot}: trusted root not found (named by {KEYLESS_POLICY_PATH})"
        )
    return data


def pinned_root_path(data: bytes) -> str | None:
    """The trusted root a `trust/keyless.yaml` pins, when it names a plain path inside the repository
    (None: the file is not YAML, names none, or names a path that could leave the repository). What the
    core carries beside the policy to audit workers and evidence packets; `open_verifier` judges the rest."""
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError:
        return None
    path = doc.get("trustedRoot") if isinstance(doc, dict) else None
    if not isinstance(path, str) or not path or "\x00" in path or "\\" in path:
        return None
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path) or ".." in PurePosixPath(path).parts:
        return None
    return str(PurePosixPath(path))
