"""Which evidence ref a repository's passes read and write, and what is ratified on it.

The evidence ref is where the policy chain is (DESIGN §8), never where an unratified `stella.yaml` on
the branch moved it: the ref this repository pinned, else a ref whose chain's ratified `stella.yaml`
names it. `open_evidence` opens that ref's index of verified records with the keyring of its policies;
`ratified_settings` reads the `stella.yaml` ratified there. Reads Git; writes only the pin file
`.git/stella/evidence-ref`. The policy machinery is imported only where a chain exists: the pre-receive
hook asks for the evidence ref on every push, and a push to a repository without one must stay cheap.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InvalidInput, ValidationFailed
from .manifests import load_settings
from .models import EvidenceSettings, Settings
from .repo import Repo

if TYPE_CHECKING:
    from .governance import Keyring
    from .history import EvidenceIndex
    from .repo import GitTree

log = logging.getLogger(__name__)


def evidence_ref(repo: Repo, settings: Settings) -> str:
    """The evidence ref a pass reads and writes: where the policy chain is, never where an unratified
    `stella.yaml` moved it.

    The ref this repository's reconciler pinned (`.git/stella/evidence-ref`, written by its first
    pass), if any. Else a ref holding a chain whose ratified `stella.yaml` names that very ref (a copy
    of a chain under another ref names the original, and is not taken): the one `settings` names, the
    default, or another `refs/heads/stella/*` ref, in that order. Else (no chain anywhere: the genesis
    goes there) the ref `settings` names.
    """
    pinned = _pinned_ref(repo)
    if pinned is not None:
        return pinned
    named, default = settings.evidence.ref, EvidenceSettings().ref
    others = [r for r in repo.refs("refs/heads/stella/") if r not in (named, default)]
    chains = [ref for ref in dict.fromkeys([named, default, *others]) if _chain_names(repo, ref) == ref]
    if len(chains) > 1:
        log.warning("several refs hold a policy chain (%s): using %s", ", ".join(chains), chains[0])
    if chains:
        if chains[0] != named:
            log.warning("stella.yaml names evidence ref %s, but the policy chain is on %s", named, chains[0])
        return chains[0]
    return named


def _chain_names(repo: Repo, ref: str) -> str | None:
    """The evidence ref the ratified `stella.yaml` of the chain on `ref` names (None: no chain)."""
    head = repo.resolve_ref(ref)
    if head is None:
        return None
    from .governance import PolicyError, PolicyView, read_pointer, stored_policy

    tree = repo.tree(head) if head else None
    pointer = read_pointer(tree) if tree is not None else None
    if tree is None or pointer is None or not isinstance(pointer.get("id"), str):
        return None
    try:
        return load_settings(PolicyView(stored_policy(tree, pointer["id"]), tree)).evidence.ref
    except (PolicyError, ValidationFailed):
        return None


def _pin_path(repo: Repo) -> Path:
    return repo.path / "stella" / "evidence-ref"


def _pinned_ref(repo: Repo) -> str | None:
    try:
        text = _pin_path(repo).read_text().strip()
    except OSError:
        return None
    return text if text.startswith("refs/heads/") else None


def pin_ref(repo: Repo, ref: str) -> None:
    """Remember the evidence ref this repository's passes write (so that a later unratified change of
    `evidence.ref`, or a chain someone starts on another ref, moves nothing). Best effort."""
    if _pinned_ref(repo) == ref:
        return
    try:
        _pin_path(repo).parent.mkdir(parents=True, exist_ok=True)
        _pin_path(repo).write_text(ref + "\n")
    except OSError as exc:
        log.info("cannot pin the evidence ref (%s)", exc)


def open_evidence(repo: Repo, source: GitTree) -> tuple[str, str | None, EvidenceIndex]:
    """(evidence ref, its head, its index) as a pass of `source` reads them: only verified records."""
    from .indexing import open_index

    ref = evidence_ref(repo, load_settings(source))
    head = repo.resolve_ref(ref)
    keyring = keyring_of(repo.tree(head) if head else None, source)
    return ref, head, open_index(repo, ref, head, keyring=keyring)


def ratified_settings(repo: Repo, settings: Settings) -> Settings:
    """The `stella.yaml` of the policy ratified on the evidence branch (`settings`, the branch's own,
    before any genesis)."""
    from .governance import PolicyError, PolicyView, read_pointer, stored_policy

    ref = evidence_ref(repo, settings)
    head = repo.resolve_ref(ref)
    pointer = read_pointer(repo.tree(head)) if head else None
    if pointer is None or not isinstance(pointer.get("id"), str):
        return settings
    tree = repo.tree(head or "")
    try:
        policy = stored_policy(tree, pointer["id"])
        return load_settings(PolicyView(policy, tree))
    except (PolicyError, ValidationFailed) as exc:
        raise InvalidInput(f"{ref}: the ratified policy is unreadable: {exc}") from exc


def keyring_of(tree: GitTree | None, source: GitTree) -> Keyring:
    """Evidence keys per policy from the branch; before any genesis, the source's evidence keys."""
    from .audit import _keyless_verifier, keyless_files, trusted_keys
    from .governance import Keyring
    from .sign import TrustedKeys

    try:
        legacy = trusted_keys(source)
    except InvalidInput as exc:
        log.warning("evidence keys at the source commit are unusable: %s", exc)
        legacy = TrustedKeys()
    return Keyring(tree, legacy=legacy, keyless=lambda files: _keyless_verifier(keyless_files(files)))
