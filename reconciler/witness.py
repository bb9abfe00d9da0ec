"""`stella audit witness`: add a keyless bundle beside records first signed with a key.

A record signed offline with a managed key has no trusted time and no transparency-log entry. Once the
evidence reaches a connected place, a keyless signer (the `keyless` signer plugin: an OIDC identity, a
Fulcio certificate, a Rekor entry) can sign the SAME statement bytes; the bundle is stored as
`evidence/<hex>.keyless.sigstore.json`. Nothing existing changes: new files only, in one commit moved by
compare-and-swap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .discover import Plugins
from .errors import InvalidInput, Transient
from .protocols import WITNESS_SUFFIX
from .repo import RaceLost, Repo

MAX_RACES = 5


def witness(
    repo: Repo,
    plugins: Plugins,
    ref: str,
    *,
    evidence: list[str] | None,
    token: str,
    environ: Mapping[str, str],
    progress: Callable[[str], None] | None = None,
) -> tuple[str | None, list[str]]:
    """Witness `evidence` (ids), or every record not witnessed yet; (commit or None, ids witnessed)."""
    signer = plugins.signer("keyless").open(token, environ)
    for _ in range(MAX_RACES):
        head = repo.resolve_ref(ref)
        if head is None:
            raise InvalidInput(f"{ref} does not exist: nothing to witness")
        tree = repo.tree(head)
        names = set(tree.listdir("evidence"))
        wanted = (
            [e.removeprefix("sha256:") for e in evidence]
            if evidence
            else sorted(
                n.removesuffix(".json")
                for n in names
                if n.endswith(".json") and not n.endswith(".sigstore.json")
            )
        )
        files: dict[str, bytes] = {}
        for hex_id in wanted:
            if f"{hex_id}.json" not in names:
                raise InvalidInput(f"no record evidence/{hex_id}.json on {ref}")
            if f"{hex_id}{WITNESS_SUFFIX}" in names:
                continue
            if progress:
                progress(f"witnessing sha256:{hex_id[:12]}")
            statement = tree.read(f"evidence/{hex_id}.json") or b""
            files[f"evidence/{hex_id}{WITNESS_SUFFIX}"] = signer.sign(statement)
        if not files:
            return None, []
        message = f"stella: witness {len(files)} record(s) with a keyless signature\n"
        try:
            commit = repo.commit_files(ref, head, files, message)
        except RaceLost:
            continue
        witnessed = sorted("sha256:" + p.split("/")[1].removesuffix(WITNESS_SUFFIX) for p in files)
        return commit, witnessed
    raise Transient(f"{ref} kept moving: gave up after {MAX_RACES} attempts")
