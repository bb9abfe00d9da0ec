"""The evidence branch's layout (DESIGN §4, §8, §9): its top-level directories, the ones whose files
never change, where the evidence keys live, a record's path; and the `layout` check of a whole tree.

Reads only the tree it is given: never opens a repository, never writes.
"""

from __future__ import annotations

import re
from typing import Any

import pygit2

from ..ledger import POINTER
from .findings import Finding

IMMUTABLE = ("releases/", "evidence/", "inputs/", "artifacts/", "policies/", "policy-files/")
"""The directories whose files are never changed or deleted once written."""
KEYS_DIR = "trust/evidence-keys"
"""Where a source branch (and a stored policy, and a packet) keeps its evidence keys."""
_HEX = re.compile(r"[0-9a-f]{64}")


def _path(evidence_id: str) -> str:
    return f"evidence/{evidence_id.removeprefix('sha256:')}.json"


_TOP_LEVEL = frozenset(
    {
        "releases",
        "evidence",
        "inputs",
        "artifacts",
        "environments",
        "targets",
        "policies",
        "policy-files",
        "policy",
    }
)
_POINTER_FILE = "stella.version.json"


def _check_layout(tree: Any) -> list[Finding]:
    """No file outside the layout (DESIGN §4, §8, §9): only the top-level directories of `_TOP_LEVEL`;
    in `environments/` only `<env>/stella.version.json`, in `targets/` only
    `<env>/<target>/stella.version.json`, in `policy/` only `stella.policy.json`, in `policy-files/`
    only `<sha256 hex>` files. The other directories are checked with their contents."""
    found: list[Finding] = []

    def stray(path: str, obj: Any, why: str) -> None:
        if isinstance(obj, pygit2.Tree):
            for entry in obj:
                stray(f"{path}/{entry.name}", entry, why)
        else:
            found.append(Finding(path, why, check="layout"))

    def pointers(path: str, obj: Any, levels: int) -> None:
        """`obj` must hold, `levels` directories down, only stella.version.json files."""
        for entry in obj:
            where = f"{path}/{entry.name}"
            if levels == 0:
                if entry.name != _POINTER_FILE or not isinstance(entry, pygit2.Blob):
                    stray(where, entry, f"unexpected file in {path}/: only {_POINTER_FILE}")
            elif isinstance(entry, pygit2.Tree):
                pointers(where, entry, levels - 1)
            else:
                stray(where, entry, f"unexpected file in {path.split('/')[0]}/")

    for entry in tree:
        name = entry.name or ""
        if name not in _TOP_LEVEL:
            stray(name, entry, "not part of the evidence branch's layout")
        elif not isinstance(entry, pygit2.Tree):
            found.append(Finding(name, "a file where the layout has a directory", check="layout"))
        elif name == "environments":
            pointers(name, entry, 1)
        elif name == "targets":
            pointers(name, entry, 2)
        elif name == "policy":
            for sub in entry:
                if sub.name != POINTER.split("/")[1] or not isinstance(sub, pygit2.Blob):
                    stray(f"policy/{sub.name}", sub, "unexpected file in policy/")
        elif name == "policy-files":
            for sub in entry:
                if not _HEX.fullmatch(sub.name or "") or not isinstance(sub, pygit2.Blob):
                    stray(f"policy-files/{sub.name}", sub, "unexpected file in policy-files/")
    return found
