"""`stella audit witness`: add a keyless bundle beside records first signed with a key.

A record signed offline with a managed key has no trusted time and no transparency-log entry. Once the
evidence reaches a connected place, an online signer plugin (one whose manifest says it needs the
network, such as `stella-sigstore`'s keyless signer: an OIDC identity, a Fulcio certificate, a Rekor
entry) can sign the SAME statement bytes; the bundle is stored as `evidence/<hex>.keyless.sigstore.json`.
Which plugin signs is the caller's choice, or the one online signer installed. Nothing existing
changes: new files only, in one commit moved by compare-and-swap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .discover import Plugins
from .errors import InvalidInput, PluginError, Transient
from .ledger import EVIDENCE, WITNESS_SUFFIX, Ledger, evidence_path, hex_of, witness_path
from .protocols import SignerPlugin
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
    signer_name: str | None = None,
) -> tuple[str | None, list[str]]:
    """Witness `evidence` (ids), or every record not witnessed yet; (commit or None, ids witnessed).

    `signer_name` names the signer plugin; by default the one installed signer that signs online."""
    signer = witness_signer(plugins, signer_name).open(token, environ)
    for _ in range(MAX_RACES):
        head = repo.resolve_ref(ref)
        if head is None:
            raise InvalidInput(f"{ref} does not exist: nothing to witness")
        ledger = Ledger(repo.tree(head))
        names = set(ledger.tree.listdir(EVIDENCE))
        wanted = [e.removeprefix("sha256:") for e in evidence] if evidence else ledger.statement_ids()
        files: dict[str, bytes] = {}
        for hex_id in wanted:
            if f"{hex_id}.json" not in names:
                raise InvalidInput(f"no record {evidence_path(hex_id)} on {ref}")
            if f"{hex_id}{WITNESS_SUFFIX}" in names:
                continue
            if progress:
                progress(f"witnessing sha256:{hex_id[:12]}")
            statement = ledger.statement_raw(hex_of(hex_id)) or b""
            files[witness_path(hex_id)] = signer.sign(statement)
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


def witness_signer(plugins: Plugins, name: str | None) -> SignerPlugin:
    """The signer plugin named, or the one installed signer plugin that signs online."""
    if name is not None:
        return plugins.signer(name)
    online = sorted(n for n, plugin in plugins.signers.items() if plugin.manifest.network)
    if len(online) == 1:
        return plugins.signers[online[0]]
    if not online:
        raise PluginError("no online signer plugin is installed to witness with (stella-sigstore has one)")
    raise InvalidInput(f"several online signer plugins are installed ({', '.join(online)}): name one")
