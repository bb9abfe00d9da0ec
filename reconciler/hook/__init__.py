"""The server-side guard: decide whether a push may land (`stella hook pre-receive`).

git's pre-receive hook hands over every ref update of a push (`old new refname`) before any ref moves.
`check_updates()` returns why the push must be refused, one `Rejection` per reason (empty: accept):

- every `refs/heads/stella/*` ref (the evidence ref among them) is only created or fast-forwarded:
  never deleted, never rewritten;
- no commit the update adds to it changes or deletes a file under `releases/`, `evidence/`, `inputs/`,
  `artifacts/`, `policies/` or `policy-files/` (the pointers `environments/<env>/stella.version.json`,
  `targets/<env>/<target>/stella.version.json` and `policy/stella.policy.json` may move), and every file
  it adds is one of the layout (DESIGN §4, §8);
- every statement it adds verifies under the policy it names (DESIGN §8): a decision with a key of a
  policy on the ratified chain, a ratification with a key of the policy before it; a ratification must
  extend the chain, a second genesis is refused, and the policy pointer must name the chain's head. The
  keys come from the policies stored on the evidence branch itself, never from `main`; only a branch
  that has no policy chain yet takes them from `trust/evidence-keys/` of the main branch;
- a push to the main branch (`branch:`, default `main`) keeps every existing release's components, images
  and pinned digests, and agrees with the release's lock on the evidence ref; a locked release is never
  deleted; a release file it adds or changes must load (the loader's problem, with file and line).

Checking reads the repository (including the objects git keeps in quarantine until the hook accepts
them) and never writes to it or moves a ref; anything it cannot check is a rejection too (fail closed).
`install()` writes the hook script into a repository's `hooks/` and nothing else. Nothing here prints:
the command line reports. It guards one repository's refs; a hosted forge needs its own branch
protection instead (docs/hook.md). History walks, tree diffs and the quarantine go through `Repo.git`
(pygit2), as in `audit`; they belong in `repo.py` once it offers them.

The package, by concern: `guard` (the updates, the guarded refs, the dispatch), `evidence` (the
evidence ref's checks), `releases` (the main branch's), `install` (the hook script). `guard` imports
the other checks only for a push that touches a guarded ref.
"""

from .guard import (
    DEFAULT_BRANCH,
    DEFAULT_EVIDENCE_REF,
    EVIDENCE_REFS,
    Guarded,
    RefUpdate,
    Rejection,
    check_updates,
    guarded_refs,
    open_repository,
    parse_updates,
)
from .install import Installed, hook_script, install

__all__ = [
    "DEFAULT_BRANCH",
    "DEFAULT_EVIDENCE_REF",
    "EVIDENCE_REFS",
    "Guarded",
    "Installed",
    "RefUpdate",
    "Rejection",
    "check_updates",
    "guarded_refs",
    "hook_script",
    "install",
    "open_repository",
    "parse_updates",
]
