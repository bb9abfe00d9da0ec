"""The guard of an evidence ref: append-only, fast-forward only, and every statement it gains verified.

`check_evidence` refuses deleting or rewinding the ref, a commit that changes or deletes an
append-only file, a file outside the branch's layout or over its size limit, a policy chain that does
not verify, extend the old one, or that would be a second genesis, and a statement that does not hash
to its name, names no or an unratified or outdated policy, or does not verify with that policy's keys
(the keys of the branch's own policies; `trust/evidence-keys/` of the main branch only before any
chain). Reads the repository; never writes to it.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator

import pygit2

from ..audit import IMMUTABLE, trusted_keys
from ..evidence import sha256_hex
from ..governance import POINTER, RATIFICATION, Keyring, PolicyError, RecordRejected, read_pointer
from ..ledger import BUNDLE_SUFFIX, EVIDENCE, Ledger, bundle_path, evidence_path
from ..repo import GitTree, Repo
from .guard import EVIDENCE_REFS, Guarded, RefUpdate, Rejection, peel_commit, ref_target

MAX_FILE_REJECTIONS = 20
"""Per ref update, at most this many rejections name a file; the rest are counted in one more line."""
MAX_EVIDENCE_FILE = 16 << 20
"""The largest file an evidence branch takes (a statement, bundle or lock is a few KiB)."""
APPEND_ONLY = IMMUTABLE
_HEX = r"[0-9a-f]{64}"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_LAYOUT = re.compile(
    "|".join(
        [
            rf"evidence/{_HEX}\.(?:json|sigstore\.json|keyless\.sigstore\.json)",
            rf"inputs/{_HEX}\.json",
            rf"artifacts/{_HEX}/[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}",
            rf"releases/{_NAME}\.json",
            rf"environments/{_NAME}/stella\.version\.json",
            rf"targets/{_NAME}/{_NAME}/stella\.version\.json",
            rf"policies/{_HEX}\.json",
            rf"policy-files/{_HEX}",
            re.escape(POINTER),
        ]
    )
)
"""Every file the evidence branch may hold (DESIGN §4, §8, §9)."""
_APPEND_ONLY = ", ".join(APPEND_ONLY[:-1]) + f" and {APPEND_ONLY[-1]} are append-only"


def check_evidence(repo: Repo, update: RefUpdate, guarded: Guarded) -> list[Rejection]:
    """Every reason the update of an evidence ref must be refused."""
    ref = update.refname
    if update.deleted:
        reason = "the evidence ref cannot be deleted; it only moves forward"
        return [Rejection(ref, reason, commit=update.old)]
    new = peel_commit(repo, update.new)
    walker = repo.git.walk(new.id, pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE)
    if not update.created:
        old = peel_commit(repo, update.old)
        if old.id != new.id and not repo.git.descendant_of(new.id, old.id):
            reason = f"not a fast-forward of {update.old[:12]}; the evidence ref only moves forward"
            return [Rejection(ref, reason, commit=update.new)]
        walker.hide(old.id)
    found = list(dict.fromkeys(_rewrites(ref, walker)))
    if not found:
        old_tree = None if update.created else repo.tree(update.old)
        found = _check_added(repo, ref, old_tree, repo.tree(str(new.id)), guarded, update.new)
    if len(found) > MAX_FILE_REJECTIONS:
        rest = len(found) - MAX_FILE_REJECTIONS
        found = found[:MAX_FILE_REJECTIONS]
        found.append(Rejection(ref, f"and {rest} more changed or deleted files; {_APPEND_ONLY}"))
    return found


def _rewrites(ref: str, commits: Iterator[pygit2.Commit]) -> Iterator[Rejection]:
    """A rejection for each existing append-only file that a commit changes or deletes."""
    statuses = pygit2.enums.DeltaStatus
    for commit in commits:
        for parent in commit.parents:
            for delta in parent.tree.diff_to_tree(commit.tree).deltas:
                path = delta.old_file.path
                if delta.status == statuses.ADDED or not path.startswith(APPEND_ONLY):
                    continue
                if delta.status == statuses.DELETED:
                    what = "deleted"
                elif delta.status == statuses.MODIFIED:
                    what = "changed after it was written"
                else:
                    what = f"replaced ({delta.status.name.lower()})"
                yield Rejection(ref, f"{what}; {_APPEND_ONLY}", file=path, commit=str(commit.id))


def _check_added(
    repo: Repo, ref: str, old: GitTree | None, new: GitTree, guarded: Guarded, commit: str
) -> list[Rejection]:
    """The files the update adds: each of the layout, each statement verified under its policy."""
    rejections: list[Rejection] = []
    added = repo.added_files(old.commit if old else None, commit)
    for path in added:
        if not _LAYOUT.fullmatch(path):
            rejections.append(
                Rejection(
                    ref,
                    "not a file of the evidence branch layout (docs/evidence.md)",
                    file=path,
                    commit=commit,
                )
            )
        elif (new.size(path) or 0) > MAX_EVIDENCE_FILE:
            rejections.append(
                Rejection(
                    ref,
                    f"{new.size(path)} bytes, over the {MAX_EVIDENCE_FILE}-byte limit",
                    file=path,
                    commit=commit,
                )
            )
    if rejections:
        return rejections
    legacy = None
    if read_pointer(new) is None:  # no policy chain yet: as before, keys of the main branch
        main = ref_target(repo, guarded.branch_ref)
        legacy = trusted_keys(repo.tree(main)) if main else None
    keyring = Keyring(new, legacy=legacy) if legacy is not None else Keyring(new)
    try:
        chain = _ratified_chain(new, keyring)
    except (RecordRejected, PolicyError) as exc:
        return [Rejection(ref, f"the policy chain does not verify: {exc}", commit=commit)]
    old_chain = _ratified_chain(old, Keyring(old)) if old is not None and read_pointer(old) else []
    if not old_chain and chain and _other_chain(repo, ref):
        return [
            Rejection(
                ref,
                f"a new policy chain while {_other_chain(repo, ref)} holds one: a second genesis is a "
                "recovery that the repository's administrator does on the server, not a push",
                file=POINTER,
                commit=commit,
            )
        ]
    if old_chain and (not chain or chain[0] != old_chain[0]):
        return [
            Rejection(ref, "the push replaces the genesis of the policy chain", file=POINTER, commit=commit)
        ]
    if old_chain and [c for c in chain if c in old_chain] != old_chain:
        return [
            Rejection(ref, "the push drops ratifications from the policy chain", file=POINTER, commit=commit)
        ]
    ratified = {policy for _, policy in chain}
    keyring.genesis = chain[0][1] if chain else None
    on_chain = {record for record, _ in chain}
    for path in added:
        if not (path.startswith(f"{EVIDENCE}/") and path.endswith(".json")) or path.endswith(BUNDLE_SUFFIX):
            continue
        raw = new.read(path) or b""
        hex_id = path.removeprefix(f"{EVIDENCE}/").removesuffix(".json")
        if sha256_hex(raw) != hex_id:
            rejections.append(Rejection(ref, "does not hash to its name", file=path, commit=commit))
            continue
        try:
            predicate = json.loads(raw)["predicate"]
            kind = predicate["type"]
            named = (predicate.get("policy") or {}).get("id")
        except (ValueError, KeyError, TypeError, AttributeError):
            rejections.append(Rejection(ref, "not a Stella evidence statement", file=path, commit=commit))
            continue
        if kind == RATIFICATION:
            if f"sha256:{hex_id}" not in on_chain:
                rejections.append(
                    Rejection(ref, "a ratification that is not on the policy chain", file=path, commit=commit)
                )
            continue  # verified with the chain
        if named is None and chain:
            rejections.append(
                Rejection(ref, "names no policy, but the branch has a policy chain", file=path, commit=commit)
            )
            continue
        if named is not None and named not in ratified:
            rejections.append(
                Rejection(ref, f"names policy {named}, which is not ratified", file=path, commit=commit)
            )
            continue
        if named is not None and named != chain[-1][1]:
            rejections.append(
                Rejection(
                    ref,
                    f"made under policy {named}, not the policy in force ({chain[-1][1]}): a new record "
                    "is made under the latest ratified policy (an old policy's keys sign nothing new)",
                    file=path,
                    commit=commit,
                )
            )
            continue
        bundle = new.read(bundle_path(hex_id))
        try:
            keyring.verify(raw, bundle, source=path)
        except RecordRejected as exc:
            rejections.append(Rejection(ref, str(exc).removeprefix(f"{path}: "), file=path, commit=commit))
    return rejections


def _other_chain(repo: Repo, ref: str) -> str | None:
    """Another `refs/heads/stella/*` ref that already holds a policy chain, if any."""
    for other in repo.refs(EVIDENCE_REFS):
        head = None if other == ref else ref_target(repo, other)
        if head is not None and read_pointer(repo.tree(head)) is not None:
            return other
    return None


def _ratified_chain(tree: GitTree | None, keyring: Keyring) -> list[tuple[str, str]]:
    """(record id, policy id) of each ratification from the genesis to the one the policy pointer
    names, each verified with the keys of the policy before it. Empty without a pointer."""
    if tree is None:
        return []
    pointer = read_pointer(tree)
    if pointer is None:
        return []
    chain: list[tuple[str, str]] = []
    current = pointer.get("record")
    seen: set[str] = set()
    while isinstance(current, str) and current not in seen:
        seen.add(current)
        path = evidence_path(current.removeprefix("sha256:"))
        raw = tree.read(path)
        if raw is None:
            raise PolicyError(f"{path}: the ratification the policy pointer leads to is missing")
        predicate = json.loads(raw)["predicate"]
        if predicate.get("type") != RATIFICATION:
            raise PolicyError(f"{path}: not a ratification")
        keyring.verify(raw, Ledger(tree).bundle(current.removeprefix("sha256:")), source=path)
        chain.append((current, predicate["policy"]["id"]))
        current = predicate.get("previous")
    chain.reverse()
    if chain and pointer.get("id") != chain[-1][1]:
        raise PolicyError(f"{POINTER}: names policy {pointer.get('id')}, not the one its record ratified")
    for (_, before), (record, _) in itertools.pairwise(chain):
        raw = Ledger(tree).statement_raw(record.removeprefix("sha256:")) or b"{}"
        if json.loads(raw)["predicate"]["policy"].get("previous") != before:
            raise PolicyError(f"{record}: names a previous policy that the chain did not ratify before it")
    return chain
