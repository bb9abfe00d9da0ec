"""Evidence keys: those of a branch's `trust/evidence-keys/`, read strictly or leniently (an
unreadable key file becomes a `key` finding and the others still count), and every key of every
policy stored on the evidence branch (what a checkpoint of it may be signed with).

Reads Git through `Repo`; never writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import InvalidInput
from ..repo import GitTree, Repo
from ..sign import TrustedKey, TrustedKeys
from .findings import Finding
from .layout import KEYS_DIR
from .policybook import _PolicyBook


def _key_files(tree: Any) -> list[tuple[str, bytes]]:
    return [
        (f"{KEYS_DIR}/{name}", tree.read(f"{KEYS_DIR}/{name}") or b"")
        for name in tree.listdir(KEYS_DIR)
        if name.endswith(".pub")
    ]


def trusted_keys(tree: GitTree) -> TrustedKeys:
    """The evidence keys under `trust/evidence-keys/` of `tree`; an unreadable one is `InvalidInput`."""
    return TrustedKeys.from_files(_key_files(tree))


class LoadedKeys(TrustedKeys):
    """Evidence keys read leniently: the ones that read, and a `key` finding for each file that did not
    (`verify` reports them with its own)."""

    def __init__(self, keys: Iterable[TrustedKey] = (), unreadable: Iterable[Finding] = ()) -> None:
        super().__init__(keys)
        self.unreadable: tuple[Finding, ...] = tuple(unreadable)


def read_keys(files: Iterable[tuple[str, bytes]], where: str = "") -> LoadedKeys:
    """The keys of (source, PEM bytes) pairs that read; each one that does not is a `key` finding
    (`where`: the branch it comes from, for the message)."""
    good: list[TrustedKey] = []
    bad: list[Finding] = []
    for source, data in files:
        try:
            good.extend(TrustedKeys.from_files([(source, data)]).values())
        except InvalidInput as exc:
            reason = str(exc).removeprefix(f"{source}: ")
            on = f" on {where}" if where else ""
            bad.append(
                Finding(source, f"unreadable evidence key{on}: {reason}; it verifies nothing", None, "key")
            )
    return LoadedKeys(good, bad)


def load_keys(repo: Repo, branch: str, *, missing_ok: bool = False) -> TrustedKeys:
    """The evidence keys of `branch` (what records written before policies existed verify with).

    `missing_ok`: an unreadable key file is left out instead of failing; the keys returned (a
    `LoadedKeys`) carry a `key` finding for it, which `verify` reports, and the other keys still count."""
    commit = repo.resolve_ref(f"refs/heads/{branch}")
    if commit is None:
        raise InvalidInput(f"branch {branch!r} not found: cannot read {KEYS_DIR}/")
    files = _key_files(repo.tree(commit))
    if not missing_ok:
        return TrustedKeys.from_files(files)
    return read_keys(files, branch)


def branch_keys(repo: Repo, ref: str, legacy: TrustedKeys) -> TrustedKeys:
    """Every evidence key of every policy stored on `ref` (and `legacy`): what a checkpoint of that
    branch may be signed with."""
    head = repo.resolve_ref(ref)
    if head is None:
        return legacy
    tree = repo.tree(head)
    book = _PolicyBook.read(tree, legacy, (), [])
    return TrustedKeys(
        key for source, pem in book.key_pems() for key in TrustedKeys.from_files([(source, pem)]).values()
    )
