"""Commands that check or extend the evidence branch after the fact: `audit verify`, `audit export`,
`audit checkpoint`, `audit report`, `audit witness`, and `replay`.

Verification shows a progress bar on stderr when it is a terminal. The verifier, the replayer, the
report writer and the witness are imported by the handlers, so that building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidInput
from ._app import NOT_OK, OK, Parser, Register, Subcommands, Usage, emit, err, os_reason, read_input, say
from ._session import now, open_repository, open_session, progress

if TYPE_CHECKING:
    from .. import audit

_ROOT_HELP = "the genesis ratification the policy chain must start at"


def _root_arg(value: str | None) -> str | None:
    if value is None:
        return None
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", value):
        raise Usage(f"--root {value!r}: expected sha256:<64 hex> (the genesis record's evidence id)")
    return value


@contextmanager
def _audit_bar(what: str) -> Iterator[audit.Progress | None]:
    """A progress bar on stderr while the evidence branch is verified (on a terminal only)."""
    console = err()
    if not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


# --- replay --------------------------------------------------------------------------------------


def add_replay(sub: Subcommands, common: Parser) -> None:
    p = sub.add_parser("replay", parents=[common], help="recompute recorded decisions from their inputs")
    p.add_argument("evidence", nargs="?", metavar="EVIDENCE_ID")
    p.add_argument("--all", action="store_true", help="replay every record on the evidence branch")
    p.add_argument("--root", metavar="sha256:ID", help=_ROOT_HELP)
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    from .. import replay
    from ..chain import evidence_ref

    session = open_session(args)
    root = _root_arg(args.root)
    ref = evidence_ref(session.repo, session.settings)
    head = session.repo.resolve_ref(ref)
    if head is None:
        raise Usage(f"{ref} does not exist: nothing to replay")
    tree = session.repo.tree(head)
    if root is not None:
        genesis = replay.genesis(session.repo, tree, head)
        if genesis != root:
            err().print(
                f"error: the policy chain on {ref} starts at {genesis}, not at the pinned root {root}"
            )
            return NOT_OK
    if args.all == (args.evidence is not None):
        raise Usage("give one EVIDENCE_ID, or --all")
    ids = list(replay.records(tree)) if args.all else [args.evidence]
    results = [replay.replay_one(session.repo, tree, session.plugins, evidence) for evidence in ids]
    payload = {
        "identical": all(r.identical for r in results),
        "records": [
            {"evidence": r.evidence, "identical": r.identical, "differences": r.differences} for r in results
        ],
    }

    def text() -> None:
        for r in results:
            say(f"{r.evidence}: {'identical' if r.identical else 'DIFFERENT'}")
            for difference in r.differences:
                say(f"  {difference}")
        same = sum(r.identical for r in results)
        say(f"{same} of {len(results)} record(s) replayed identically")

    emit(args, payload, text)
    return OK if payload["identical"] else NOT_OK


# --- audit ---------------------------------------------------------------------------------------


def add_audit(sub: Subcommands, common: Parser) -> None:
    audit_parser = sub.add_parser("audit", parents=[common], help="verify the evidence branch")
    asub = audit_parser.add_subparsers(dest="audit_command", required=True, parser_class=Parser)
    p = asub.add_parser("witness", parents=[common], help="add keyless signatures to key-signed records")
    p.add_argument("evidence", nargs="*", metavar="EVIDENCE_ID", help="default: every record not witnessed")
    p.add_argument("--token", default="env:SIGSTORE_ID_TOKEN", help="the OIDC token reference (env:NAME)")
    p.add_argument(
        "--signer", metavar="NAME", help="the signer plugin (default: the one installed that signs online)"
    )
    p.set_defaults(func=cmd_audit_witness)

    p = asub.add_parser("verify", parents=[common], help="hashes, signatures, chains and history")
    p.add_argument("--packet", metavar="FILE", help="verify an exported packet (no repository needed)")
    p.add_argument("--root", metavar="sha256:ID", help=_ROOT_HELP)
    p.add_argument("--checkpoint", metavar="FILE", help="also check the branch against a signed checkpoint")
    p.set_defaults(func=cmd_audit_verify)
    p = asub.add_parser("export", parents=[common], help="write an offline evidence packet OUT (.tar.gz)")
    p.add_argument("out", metavar="OUT")
    p.set_defaults(func=cmd_audit_export)
    p = asub.add_parser("checkpoint", parents=[common], help="verify, then print a signed checkpoint")
    p.add_argument("--out", metavar="FILE", help="write the checkpoint to FILE instead of stdout")
    p.set_defaults(func=cmd_audit_checkpoint)
    p = asub.add_parser("report", parents=[common], help="verify, then write a static HTML report into DIR")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=cmd_audit_report)


def cmd_audit_witness(args: argparse.Namespace) -> int:
    from ..chain import evidence_ref
    from ..witness import witness

    session = open_session(args)
    ref = evidence_ref(session.repo, session.settings)
    commit, witnessed = witness(
        session.repo,
        session.plugins,
        ref,
        evidence=args.evidence or None,
        token=args.token,
        environ=os.environ,
        progress=progress(),
        signer_name=args.signer,
    )
    emit(
        args,
        {"commit": commit, "witnessed": witnessed},
        lambda: say(
            f"witnessed {len(witnessed)} record(s) in commit {commit[:12]}"
            if commit
            else "nothing to witness"
        ),
    )
    return OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from .. import audit
    from ..chain import evidence_ref
    from ..governance import KEYS_DIR

    root = _root_arg(args.root)
    checkpoint = (read_input(args.checkpoint, "checkpoint"), args.checkpoint) if args.checkpoint else None
    packet: audit.Packet | None = None
    with _audit_bar("verifying evidence") as bar:
        if args.packet:  # everything from the packet: no repository, no settings, no network
            packet, report = audit.verify_packet(
                Path(args.packet), checkpoint=checkpoint, progress=bar, root=root
            )
        else:
            repo, settings = open_repository(args)
            ref = evidence_ref(repo, settings)
            keys = audit.load_keys(repo, settings.branch, missing_ok=True)
            keyless = audit.load_keyless(repo, settings.branch)
            read = (
                audit.read_checkpoint(checkpoint[0], audit.branch_keys(repo, ref, keys), checkpoint[1])
                if checkpoint
                else None
            )
            report = audit.verify(repo, ref, keys, bar, checkpoint=read, keyless=keyless, root=root)
    payload = {
        "ok": report.ok,
        "ref": report.ref,
        "head": report.head,
        "records": report.records,
        "bundles": report.bundles,
        "files": report.files,
        "commits": report.commits,
        "witnesses": report.witnesses,
        "chains": report.chains,
        "keys": [{"source": source, "hint": hint} for source, hint in report.keys.items()],
        "genesis": report.genesis,
        "rootPinned": report.root_pinned,
        "policy": report.policy,
        "policies": report.policies,
        "verifiedBy": report.verified_by,
        "identities": report.identities,
        "packet": str(Path(args.packet).resolve()) if packet else None,
        "checkpoint": args.checkpoint,
        "findings": [f.as_dict() for f in report.findings],
    }

    def text() -> None:
        for finding in report.findings:
            say(f"FAIL {finding}")
        if report.genesis is None and report.root_pinned:
            say(f"no genesis on {report.ref} is the pinned root {root}")
        elif report.genesis is None:
            say(f"no policy chain on {report.ref}: signatures checked against {KEYS_DIR}/ of the branch")
        elif report.root_pinned:
            say(f"policy chain from the pinned root {report.genesis}: {len(report.policies)} ratified")
        else:
            say(
                f"policy chain from genesis {report.genesis} (trusted on first use; pin it with "
                f"--root {report.genesis}): {len(report.policies)} ratified"
            )
        if report.policy:
            say(f"policy in force: {report.policy}")
        if report.identities:
            say(f"re-verified {report.identities} signed commit(s) of requesters and approvers")
        if args.verbose:
            for evidence, key in sorted(report.verified_by.items()):
                say(f"{evidence}: {key}")
        if packet is not None:
            for source, hint in report.keys.items():
                say(f"key {source}: hint {hint} (compare with the hints you were given)")
        verdict = "OK" if report.ok else f"{len(report.findings)} finding(s)"
        where = f" from packet {args.packet}" if packet else ""
        against = f", against checkpoint {args.checkpoint}" if checkpoint else ""
        say(
            f"{verdict}: {report.records} records, {report.bundles} bundles, {report.commits} commits "
            f"on {report.ref}{where}{against}"
        )

    emit(args, payload, text)
    return OK if report.ok else NOT_OK


def cmd_audit_export(args: argparse.Namespace) -> int:
    from .. import audit
    from ..chain import evidence_ref

    repo, settings = open_repository(args)
    done = audit.export_packet(repo, evidence_ref(repo, settings), settings.branch, Path(args.out))
    path = done.path.resolve()
    payload = {
        "packet": str(path),
        "ref": done.ref,
        "head": done.head,
        "records": done.records,
        "members": dict(done.members),
    }
    emit(
        args,
        payload,
        lambda: say(
            f"wrote {path}: {done.ref} at {done.head[:12]}, {done.records} records, "
            f"{len(done.members)} members\n"
            f"verify it anywhere, offline: stella audit verify --packet {done.path.name}"
        ),
    )
    return OK


def cmd_audit_checkpoint(args: argparse.Namespace) -> int:
    """Verify the branch, then sign a checkpoint of it with the evidence key (refused on findings)."""
    from .. import audit
    from ..chain import evidence_ref
    from ..sign import key_signer_plugin

    repo, settings = open_repository(args)
    ref = evidence_ref(repo, settings)
    keys = audit.load_keys(repo, settings.branch, missing_ok=True)
    with _audit_bar("verifying evidence") as bar:
        report = audit.verify(repo, ref, keys, bar)
    if not report.ok:
        for finding in report.findings:
            err().print(f"FAIL {finding}", markup=False)
        err().print(
            f"{len(report.findings)} finding(s): {ref} does not verify, so no checkpoint was signed",
            markup=False,
        )
        return NOT_OK
    checkpoint = audit.make_checkpoint(report, now())
    signer = key_signer_plugin.open(settings.signer.key, os.environ)
    bundle = audit.sign_checkpoint(checkpoint, signer)
    target = Path(args.out) if args.out else None
    if target is not None:
        try:
            target.write_bytes(bundle)
        except OSError as exc:
            raise InvalidInput(f"{target}: cannot write the checkpoint: {exc.strerror or exc}") from exc
    if args.output == "json":
        payload = {**audit.checkpoint_json(checkpoint, bundle), "out": str(target) if target else None}
        print(json.dumps(payload, indent=2, sort_keys=True))
    elif target is not None:
        chains = ", ".join(f"{env} {head[:19]}" for env, head in sorted(checkpoint.chains.items()))
        say(f"wrote {target}: checkpoint of {ref} at {checkpoint.head[:12]}, {checkpoint.records} records")
        say(f"chain heads: {chains or 'none'}; keep it where the branch's writers cannot change it")
    else:
        sys.stdout.write(bundle.decode("utf-8"))
    return OK


def cmd_audit_report(args: argparse.Namespace) -> int:
    """Verify the evidence branch, then write the HTML report; exit 1 when there are findings."""
    from .. import audit
    from ..chain import evidence_ref
    from ..report import write_report

    session = open_session(args)
    ref = evidence_ref(session.repo, session.settings)
    keys = audit.load_keys(session.repo, session.settings.branch, missing_ok=True)
    with _audit_bar("verifying evidence") as bar:
        report = audit.verify(session.repo, ref, keys, bar)
    target = Path(args.dir)
    try:
        paths = write_report(session.repo, ref, target, report)
    except OSError as exc:
        raise InvalidInput(f"{args.dir}: cannot write the report: {os_reason(exc, target)}") from exc
    index, pages = paths[0].resolve(), [str(p.resolve()) for p in paths[1:]]
    emit(
        args,
        {"index": str(index), "pages": pages, "findings": len(report.findings)},
        lambda: say(str(index)),
    )
    if report.findings and args.output != "json":
        err().print(f"{len(report.findings)} finding(s): the evidence branch does not verify", markup=False)
    return OK if report.ok else NOT_OK


COMMANDS: dict[str, Register] = {
    "replay": add_replay,
    "audit": add_audit,
}
