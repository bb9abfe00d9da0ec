"""The evidence branch's layout, and one typed reader of it.

Every module that reads or writes the evidence branch names its files through this one: where a
statement, its bundle, its inputs, a rendered artifact, a release lock, an environment's pointer and the
policy chain's files live (DESIGN §4), and the one time format evidence uses (`rfc3339`, that is
`timefmt.evidence_time`). `Ledger` reads an evidence
tree through the `FileSource` Protocol (a Git tree or a directory) and parses what it finds into typed
values; it verifies nothing (that is `governance.Keyring`'s and `audit`'s job) and writes nothing.

PURE: paths and parsing only; no Git, disk, network or clock of its own.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import InvalidInput
from .timefmt import evidence_time

if TYPE_CHECKING:
    from .protocols import FileSource

EVIDENCE = "evidence"
INPUTS = "inputs"
ARTIFACTS = "artifacts"
RELEASES = "releases"
ENVIRONMENTS = "environments"
POLICIES = "policies"
POLICY_FILES = "policy-files"
POINTER = "policy/stella.policy.json"
"""The policy in force: `{"id": "sha256:…", "record": "sha256:…"}` (the last ratification)."""
POINTER_FILE = "stella.version.json"
"""An environment's pointer file name, under `environments/<env>/` (and a target's, under
`targets/<env>/<target>/`: the mirror of its sticker)."""
TARGETS = "targets"
DEPLOYMENT = "deployment"
ROLLBACK = "rollback"
DRIFT = "drift"
DEPLOYMENT_TYPES = (DEPLOYMENT, ROLLBACK, DRIFT)
"""Record types an agent signs (with its own key), chained per target: what it deployed, rolled back
to, or observed (a `drift` observation, written when the target's drift state changes)."""
BUNDLE_SUFFIX = ".sigstore.json"
WITNESS_SUFFIX = ".keyless.sigstore.json"
"""`evidence/<hex>.keyless.sigstore.json`: a keyless bundle over a record first signed with a key."""
IMMUTABLE = tuple(f"{d}/" for d in (RELEASES, EVIDENCE, INPUTS, ARTIFACTS, POLICIES, POLICY_FILES))
"""Directories whose files, once written, never change or go away (the pointers do move)."""

HEX_RE = re.compile(r"[0-9a-f]{64}")

rfc3339 = evidence_time
"""The one time format of evidence: UTC, whole seconds, `Z`."""


def hex_of(evidence_id: str) -> str:
    """`sha256:<hex>` (or a bare hex) -> hex; `InvalidInput` when it is not 64 lower-case hex digits."""
    hex_id = evidence_id.removeprefix("sha256:")
    if not HEX_RE.fullmatch(hex_id):
        raise InvalidInput(f"{evidence_id!r} is not an evidence id (sha256:<64 hex>)")
    return hex_id


def evidence_path(hex_id: str) -> str:
    return f"{EVIDENCE}/{hex_id}.json"


def bundle_path(hex_id: str) -> str:
    return f"{EVIDENCE}/{hex_id}{BUNDLE_SUFFIX}"


def witness_path(hex_id: str) -> str:
    return f"{EVIDENCE}/{hex_id}{WITNESS_SUFFIX}"


def inputs_path(hex_id: str) -> str:
    return f"{INPUTS}/{hex_id}.json"


def artifact_path(hex_id: str, name: str) -> str:
    return f"{ARTIFACTS}/{hex_id}/{name}"


def release_lock_path(name: str) -> str:
    return f"{RELEASES}/{name}.json"


def pointer_path(environment: str) -> str:
    return f"{ENVIRONMENTS}/{environment}/{POINTER_FILE}"


def target_pointer_path(environment: str, target: str) -> str:
    return f"{TARGETS}/{environment}/{target}/{POINTER_FILE}"


TARGET_CHAIN = "@target:"


def target_chain(environment: str, target: str) -> str:
    """The chain name of a target's deployment records in indexes and reports (`@` never starts an
    environment's name, so it cannot collide with one)."""
    return f"{TARGET_CHAIN}{environment}/{target}"


def policies_path(hex_id: str) -> str:
    return f"{POLICIES}/{hex_id}.json"


def policy_file_path(hex_id: str) -> str:
    return f"{POLICY_FILES}/{hex_id}"


def statement_hex(name: str) -> str | None:
    """The hex id of a statement file name under `evidence/` (None: a bundle, a witness or other)."""
    if not name.endswith(".json") or name.endswith(BUNDLE_SUFFIX):
        return None
    hex_id = name.removesuffix(".json")
    return hex_id if HEX_RE.fullmatch(hex_id) else None


@dataclass(frozen=True)
class Statement:
    """One statement as written: its exact bytes, and the fields readers look at (unverified)."""

    hex: str
    raw: bytes
    predicate: dict[str, Any]

    @property
    def id(self) -> str:
        return f"sha256:{self.hex}"

    @property
    def type(self) -> str | None:
        value = self.predicate.get("type")
        return value if isinstance(value, str) else None

    @property
    def promotion(self) -> str | None:
        promotion = self.predicate.get("promotion")
        value = promotion.get("id") if isinstance(promotion, dict) else None
        return value if isinstance(value, str) else None

    @property
    def inputs_hex(self) -> str | None:
        inputs = self.predicate.get("inputs")
        value = inputs.get("sha256") if isinstance(inputs, dict) else None
        return value if isinstance(value, str) else None


class Ledger:
    """Typed reads of one evidence tree. Bytes come back exactly as stored; nothing is verified."""

    def __init__(self, tree: FileSource) -> None:
        self.tree = tree

    def statement_ids(self) -> list[str]:
        """The hex id of every statement under `evidence/`, sorted."""
        return sorted(h for name in self.tree.listdir(EVIDENCE) if (h := statement_hex(name)) is not None)

    def statement_raw(self, hex_id: str) -> bytes | None:
        return self.tree.read(evidence_path(hex_id))

    def bundle(self, hex_id: str) -> bytes | None:
        return self.tree.read(bundle_path(hex_id))

    def inputs(self, hex_id: str) -> bytes | None:
        return self.tree.read(inputs_path(hex_id))

    def statement(self, hex_id: str) -> Statement | None:
        """The statement `evidence/<hex>.json`, parsed (None: no such file, or not a JSON statement)."""
        raw = self.statement_raw(hex_id)
        if raw is None:
            return None
        return parse_statement(hex_id, raw)

    def predicate(self, evidence_id: str) -> dict[str, Any] | None:
        """The predicate of record `sha256:<hex>` when its bytes hash to its id (None otherwise): for
        re-reading a field of a record the index already verified."""
        hex_id = hex_of(evidence_id)
        raw = self.statement_raw(hex_id)
        if raw is None or hashlib.sha256(raw).hexdigest() != hex_id:
            return None
        statement = parse_statement(hex_id, raw)
        return statement.predicate if statement is not None else None

    def statements(self, needle: bytes | None = None) -> Iterator[Statement]:
        """Every statement, in id order; with `needle`, only those whose bytes contain it (cheap filter)."""
        for hex_id in self.statement_ids():
            raw = self.statement_raw(hex_id)
            if raw is None or (needle is not None and needle not in raw):
                continue
            statement = parse_statement(hex_id, raw)
            if statement is not None:
                yield statement

    def policy_pointer(self) -> dict[str, Any] | None:
        """`policy/stella.policy.json` parsed (None: missing or not a JSON object)."""
        return _json_object(self.tree.read(POINTER))

    def pointer(self, environment: str) -> dict[str, Any] | None:
        """`environments/<env>/stella.version.json` parsed (None: missing or not a JSON object)."""
        return _json_object(self.tree.read(pointer_path(environment)))


def parse_statement(hex_id: str, raw: bytes) -> Statement | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    predicate = value.get("predicate") if isinstance(value, dict) else None
    if not isinstance(predicate, dict):
        return None
    return Statement(hex_id, raw, predicate)


def _json_object(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
