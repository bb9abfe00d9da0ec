"""The policy a decision is made under, and how a change of it is ratified (DESIGN §8).

The **policy** is the governed files of a repository (`stella.yaml`, `environments/**`, `templates/**`,
`trust/**`); its id is the `sha256:` of the canonical JSON `{path: "sha256:<hex of the file>"}`. The
evidence branch keeps a chain of ratified policies: each ratification is a signed record (`type:
policy_ratification`) chained by `previous`, `policies/<hex>.json` lists the files of policy `<hex>`,
`policy-files/<hex>` holds a file's bytes under the sha256 of those bytes, and `policy/stella.policy.json`
points at the policy ratified now. The first pass on a repository ratifies its policy as the genesis.

Decisions read every governed file from the ratified policy (`PolicyView`), never from the branch's work
state. A change of the policy on the branch counts only once the ratified policy's `governance:` approves
it: approvals under `approvals/policy-<hex>/`, from commits signed by keys of the ratified
`trust/allowed_signers`, by members of the governance groups, and -- with separation of duties -- not by
the signers of the commits that changed governed files (`judge_change`).

Evidence keys belong to a policy: a decision verifies with the keys of the policy it names, a ratification
with the keys of the policy before it (the genesis with its own). `Keyring` finds them on the evidence
branch and verifies records with them.

What is here: the pure parts (ids, the overlay, the statement and the judgement) and reading the policy and
its approvals from Git through `repo.py`. It never writes to Git, never prints, and never reads `main` for
anything a decision uses.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .errors import InvalidInput, StellaError
from .evidence import GENERATOR, PREDICATE_TYPE, STATEMENT_TYPE, canonical, sha256_hex
from .ledger import DEPLOYMENT_TYPES, Ledger, policies_path, policy_file_path, rfc3339
from .ledger import POINTER as POINTER
from .protocols import IN_TOTO_PAYLOAD_TYPE, BundleVerifier, FileSource
from .repo import MAX_FILE_BYTES, GitTree
from .sign import BundleError, TrustedKeys, verify_bundle

log = logging.getLogger(__name__)

GOVERNED_FILES = ("stella.yaml",)
GOVERNED_DIRS = ("environments", "templates", "trust")
POLICY_CHAIN = "@policy"
"""The chain name of ratifications in indexes and reports (an environment name cannot start with `@`)."""
RATIFICATION = "policy_ratification"
APPROVALS_PREFIX = "policy-"
KEYS_DIR = "trust/evidence-keys"
AGENT_KEYS_DIR = "trust/agent-keys"
"""`trust/agent-keys/<target>.pub`: the key a target's agent signs its deployment records with."""
ALLOWED_SIGNERS = "trust/allowed_signers"
GROUPS_FILE = "trust/groups.yaml"
MAX_DATA_BYTES = 64 << 20
"""The largest file a decision reads from outside the policy (mirror data: scan reports, bundles, image
layouts); a larger one is refused by name instead of being read whole."""
MAX_POLICY_FILES = 5000
"""A policy holding more files than this is refused (a policy is a few dozen files)."""


class PolicyError(InvalidInput):
    """A policy cannot be read: a stored policy is missing or does not hash to its id, or a governed
    file is unreadable."""


def is_governed(path: str) -> bool:
    return path in GOVERNED_FILES or path.split("/", 1)[0] in GOVERNED_DIRS


def approvals_dir(policy_id: str) -> str:
    return f"approvals/{APPROVALS_PREFIX}{policy_id.removeprefix('sha256:')}"


# --- a policy: its files and its id ------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """The governed files of one policy (path -> bytes), and its id."""

    files: Mapping[str, bytes]
    manifest: Mapping[str, str]
    """path -> `sha256:<hex>` of its bytes: what `policies/<hex>.json` holds."""
    id: str

    @classmethod
    def of(cls, files: Mapping[str, bytes]) -> Policy:
        manifest = {path: "sha256:" + sha256_hex(data) for path, data in sorted(files.items())}
        return cls(dict(sorted(files.items())), manifest, "sha256:" + sha256_hex(canonical(manifest)))

    @property
    def hex(self) -> str:
        return self.id.removeprefix("sha256:")

    def changed_from(self, other: Policy | None) -> list[str]:
        """The paths added, changed or removed going from `other` to this policy."""
        before = dict(other.manifest) if other else {}
        return sorted(p for p in set(before) | set(self.manifest) if before.get(p) != self.manifest.get(p))

    def stored_files(self) -> dict[str, bytes]:
        """The files that store this policy on the evidence branch (content-addressed, never changed)."""
        out = {policies_path(self.hex): canonical(dict(self.manifest))}
        for path, data in self.files.items():
            out[policy_file_path(self.manifest[path].removeprefix("sha256:"))] = data
        return out


def governed_files(files: FileSource) -> dict[str, bytes]:
    """Every governed file of a tree (or work tree), by path. Raises PolicyError past the limits."""
    out: dict[str, bytes] = {}

    def add(path: str) -> None:
        data = files.read(path)
        if data is None:
            return
        if len(data) > MAX_FILE_BYTES:
            raise PolicyError(
                f"{path}: {len(data)} bytes, over the {MAX_FILE_BYTES}-byte limit of a policy file"
            )
        if len(out) >= MAX_POLICY_FILES:
            raise PolicyError(f"the policy holds more than {MAX_POLICY_FILES} files (at {path})")
        out[path] = data

    def walk(directory: str, depth: int) -> None:
        if depth > 16:
            raise PolicyError(f"{directory}: directories nested too deep for a policy")
        for name in files.listdir(directory):
            path = f"{directory}/{name}"
            if _isdir(files, path):
                walk(path, depth + 1)
            else:
                add(path)

    for path in GOVERNED_FILES:
        add(path)
    for directory in GOVERNED_DIRS:
        walk(directory, 0)
    return out


def _isdir(files: FileSource, path: str) -> bool:
    isdir = getattr(files, "isdir", None)
    return bool(isdir(path)) if callable(isdir) else bool(files.listdir(path))


class PolicyView:
    """A file source that serves governed paths from a policy and every other path from `source`.

    This is what a decision reads: settings, environments, templates and trust from the ratified
    policy; releases, promotions, approvals and mirror data from the commit being decided.
    """

    def __init__(self, policy: Policy, source: GitTree) -> None:
        self.policy = policy
        self.source = source
        self.commit = source.commit
        self._dirs: set[str] = set()
        for path in policy.files:
            parts = path.split("/")
            for end in range(1, len(parts)):
                self._dirs.add("/".join(parts[:end]))

    def read(self, path: str) -> bytes | None:
        if is_governed(path):
            return self.policy.files.get(path)
        size = self.source.size(path)
        if size is not None and size > MAX_DATA_BYTES:
            raise InvalidInput(
                f"{path}: {size} bytes, over the {MAX_DATA_BYTES}-byte limit of a file Stella reads"
            )
        return self.source.read(path)

    def size(self, path: str) -> int | None:
        if is_governed(path):
            data = self.policy.files.get(path)
            return None if data is None else len(data)
        return self.source.size(path)

    def isdir(self, path: str) -> bool:
        if is_governed(path):
            return path in self._dirs
        return self.source.isdir(path)

    def listdir(self, path: str) -> list[str]:
        if path == "":
            names = {n for n in self.source.listdir("") if not is_governed(n)}
            names |= {p.split("/")[0] for p in self.policy.files}
            return sorted(names)
        if is_governed(path):
            prefix = f"{path}/"
            return sorted({p[len(prefix) :].split("/")[0] for p in self.policy.files if p.startswith(prefix)})
        return self.source.listdir(path)

    def describe(self) -> str:
        return f"policy {self.policy.id[:19]} over {self.source.describe()}"


def stored_policy(tree: FileSource, policy_id: str) -> Policy:
    """Policy `policy_id` as the evidence branch stores it, every file checked against its hash."""
    hex_id = policy_id.removeprefix("sha256:")
    path = policies_path(hex_id)
    raw = tree.read(path)
    if raw is None:
        raise PolicyError(f"{path}: missing from the evidence branch (policy {policy_id})")
    if sha256_hex(raw) != hex_id:
        raise PolicyError(f"{path}: does not hash to its name")
    try:
        manifest = json.loads(raw)
        if not isinstance(manifest, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.startswith("sha256:") for k, v in manifest.items()
        ):
            raise ValueError("expected {path: sha256:<hex>}")
    except ValueError as exc:
        raise PolicyError(f"{path}: not a policy file list: {exc}") from exc
    files: dict[str, bytes] = {}
    for name, digest in manifest.items():
        if not is_governed(name) or ".." in name.split("/"):
            raise PolicyError(f"{path}: lists {name!r}, which is not a governed file")
        blob_path = policy_file_path(digest.removeprefix("sha256:"))
        data = tree.read(blob_path)
        if data is None:
            raise PolicyError(f"{blob_path}: missing (file {name} of policy {policy_id})")
        if "sha256:" + sha256_hex(data) != digest:
            raise PolicyError(f"{blob_path}: does not hash to its name (file {name} of policy {policy_id})")
        files[name] = data
    return Policy(files, dict(manifest), policy_id)


def read_pointer(tree: FileSource) -> dict[str, Any] | None:
    """`policy/stella.policy.json` (`{"id", "record"}`), or None when absent or unreadable."""
    return Ledger(tree).policy_pointer()


def pointer_json(policy_id: str, record: str) -> dict[str, str]:
    return {"id": policy_id, "record": record}


# --- evidence keys per policy --------------------------------------------------------------------


def policy_keys(policy: Policy) -> TrustedKeys:
    """The evidence keys of a policy (`trust/evidence-keys/*.pub`); an unreadable key is PolicyError."""
    items = sorted(
        (p, d) for p, d in policy.files.items() if p.startswith(f"{KEYS_DIR}/") and p.endswith(".pub")
    )
    try:
        return TrustedKeys.from_files(items)
    except InvalidInput as exc:
        raise PolicyError(f"policy {policy.id}: {exc}") from exc


def agent_key_path(target: str) -> str:
    return f"{AGENT_KEYS_DIR}/{target}.pub"


def agent_keys(policy: Policy, target: str) -> TrustedKeys:
    """The one key of `target`'s agent in a policy (empty when the policy holds none for it)."""
    path = agent_key_path(target)
    data = policy.files.get(path)
    try:
        return TrustedKeys.from_files([(path, data)] if data is not None else [])
    except InvalidInput as exc:
        raise PolicyError(f"policy {policy.id}: {exc}") from exc


def signed_by_agent(statement: bytes) -> str | None:
    """The target whose agent must sign `statement` (a deployment or rollback record), else None."""
    try:
        predicate = json.loads(statement)["predicate"]
        if predicate.get("type") not in DEPLOYMENT_TYPES:
            return None
        target = predicate["target"]["name"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return target if isinstance(target, str) else None


class _PolicyFiles:
    """A policy's files as a plain file source (for plugins that read trust material)."""

    def __init__(self, policy: Policy) -> None:
        self._files = policy.files

    def read(self, path: str) -> bytes | None:
        return self._files.get(path)

    def listdir(self, path: str) -> list[str]:
        prefix = f"{path}/" if path else ""
        return sorted({p[len(prefix) :].split("/")[0] for p in self._files if p.startswith(prefix)})


@dataclass(frozen=True)
class VerifiedRecord:
    """A statement whose bundle verified: under which policy, with which key (its source file)."""

    policy: str | None
    key: str


class RecordRejected(StellaError):
    """A statement does not verify under the policy it names; `code` is stable."""

    exit_code = 1

    def __init__(self, message: str, *, code: str) -> None:
        self.code = code
        super().__init__(message)


KeylessOpener = Callable[[FileSource], BundleVerifier | None]


@dataclass
class Keyring:
    """Evidence keys per policy, read from the evidence branch (`tree`), with the policies cached.

    `legacy` verifies statements that name no policy (written before policies existed): the genesis
    policy's keys once there is one, else the keys given (the branch's `trust/evidence-keys/`).
    """

    tree: FileSource | None
    legacy: TrustedKeys = field(default_factory=TrustedKeys)
    keyless: KeylessOpener | None = None
    genesis: str | None = None
    _policies: dict[str, Policy] = field(default_factory=dict)
    _keys: dict[str, TrustedKeys] = field(default_factory=dict)
    _keyless: dict[str, BundleVerifier | None] = field(default_factory=dict)

    def policy(self, policy_id: str) -> Policy:
        if policy_id not in self._policies:
            if self.tree is None:
                raise PolicyError(f"policy {policy_id}: no evidence branch to read it from")
            self._policies[policy_id] = stored_policy(self.tree, policy_id)
        return self._policies[policy_id]

    def add(self, policy: Policy) -> None:
        """A policy this pass is about to store (not on the branch yet)."""
        self._policies.setdefault(policy.id, policy)

    def keys(self, policy_id: str | None) -> TrustedKeys:
        if policy_id is None:
            return self.keys(self.genesis) if self.genesis else self.legacy
        if policy_id not in self._keys:
            self._keys[policy_id] = policy_keys(self.policy(policy_id))
        return self._keys[policy_id]

    def _keyless_for(self, policy_id: str | None) -> BundleVerifier | None:
        if self.keyless is None or policy_id is None:
            return None
        if policy_id not in self._keyless:
            self._keyless[policy_id] = self.keyless(_PolicyFiles(self.policy(policy_id)))
        return self._keyless[policy_id]

    def verify(self, statement: bytes, bundle: bytes | None, *, source: str) -> VerifiedRecord:
        """Check that `bundle` signs exactly `statement` with a key of the policy the statement names
        (for a ratification: of the policy before it). Raises RecordRejected saying why not."""
        if bundle is None:
            raise RecordRejected(f"{source}: no signature bundle", code="unsigned")
        signing = signing_policy(statement)
        if signing is _BAD:
            raise RecordRejected(f"{source}: not a Stella statement", code="statement")
        policy_id = signing if isinstance(signing, str) else None
        target = signed_by_agent(statement)
        try:
            if target is not None:
                if policy_id is None:
                    raise PolicyError("a deployment record must name the policy it was made under")
                keys = agent_keys(self.policy(policy_id), target)
                if not keys:
                    raise PolicyError(f"policy {policy_id} holds no {agent_key_path(target)}")
            else:
                keys = self.keys(policy_id)
        except PolicyError as exc:
            raise RecordRejected(f"{source}: {exc}", code="policy") from exc
        bundle_source = source.removesuffix(".json") + ".sigstore.json"
        try:
            verified = verify_bundle(bundle, keys, source=bundle_source)
            key = verified.source
        except BundleError as exc:
            keyless = self._keyless_for(policy_id or self.genesis) if exc.reason == "unsupported" else None
            if keyless is None:
                raise RecordRejected(str(exc), code="signature") from exc
            try:
                key = keyless.verify(bundle, statement, source=bundle_source)
            except StellaError as err:
                raise RecordRejected(str(err), code="signature") from err
            return VerifiedRecord(policy_id, key)
        if verified.payload != statement:
            raise RecordRejected(f"{bundle_source}: signs other bytes than the statement", code="signature")
        if verified.payload_type != IN_TOTO_PAYLOAD_TYPE:
            raise RecordRejected(f"{bundle_source}: payload type is not in-toto", code="signature")
        return VerifiedRecord(policy_id, key)


_BAD = object()


def signing_policy(statement: bytes) -> object:
    """The policy whose keys must sign `statement`: the one it names (a ratification: the one before
    it; the genesis: itself), None for a statement naming none, `_BAD` for a statement that is not one."""
    try:
        predicate = json.loads(statement)["predicate"]
        if predicate.get("type") == RATIFICATION:
            policy = predicate["policy"]
            named = policy.get("previous") or policy["id"]
        else:
            named = (predicate.get("policy") or {}).get("id")
    except (ValueError, KeyError, TypeError, AttributeError):
        return _BAD
    if named is not None and not (
        isinstance(named, str) and named.startswith("sha256:") and len(named) == 71
    ):
        return _BAD
    return named


# --- ratification records --------------------------------------------------------------------------


def ratification_statement(
    *,
    tenant: str,
    version: str,
    policy: Policy,
    previous_policy: str | None,
    changed: Sequence[str],
    approvers: Sequence[Mapping[str, Any]],
    reason: Literal["genesis", "approved"],
    source_commit: str,
    inputs_hex: str,
    decided_at: datetime,
    previous: str | None,
) -> dict[str, Any]:
    """The in-toto statement of one ratification (a plain value; `canonical()` makes its bytes)."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": "stella-policy", "digest": {"sha256": policy.hex}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "type": RATIFICATION,
            "tenant": tenant,
            "generator": {"name": GENERATOR, "version": version},
            "policy": {"id": policy.id, "previous": previous_policy, "changed": list(changed)},
            "actors": {"approvers": [dict(a) for a in approvers]},
            "reason": reason,
            "sourceCommit": source_commit,
            "inputs": {"sha256": inputs_hex},
            "decidedAt": rfc3339(decided_at),
            "previous": previous,
        },
    }
