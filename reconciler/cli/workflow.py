"""Commands a person runs to move a release along: `promote`, `rollback`, `approve` (a promotion, or
`--policy`) and `policy status`.

They write signed commits through `reconciler.workflow` or dry-run a pass to show where a policy
change stands; this module only parses, calls, and prints. The core is imported by the handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ._app import NOT_OK, OK, Parser, Register, Subcommands, Usage, emit, repo_root, say
from ._session import now, open_repository, open_session

if TYPE_CHECKING:
    from ..policy_change import PolicyChange


# --- promote -------------------------------------------------------------------------------------


def add_promote(sub: Subcommands, common: Parser) -> None:
    p = sub.add_parser("promote", parents=[common], help="request a promotion on a new branch (for a PR)")
    p.add_argument("release")
    p.add_argument("--to", required=True, metavar="ENV")
    p.add_argument("--reason", default="")
    p.set_defaults(func=cmd_promote)


def cmd_promote(args: argparse.Namespace) -> int:
    from ..workflow import promote

    session = open_session(args)
    promotion_id = f"{args.release}--{args.to}"
    branch = f"promote/{promotion_id}"
    result = promote(session.repo, session.settings.branch, args.release, args.to, args.reason)
    emit(
        args,
        {
            "promotion": promotion_id,
            "branch": branch,
            "commit": result,
            "file": f"promotions/{promotion_id}.yaml",
        },
        lambda: say(
            f"wrote promotions/{promotion_id}.yaml on branch {branch} ({result[:12]})\n"
            f"next: git push origin {branch}, and open a pull request into {session.settings.branch}"
        ),
    )
    return OK


# --- rollback ------------------------------------------------------------------------------------


def add_rollback(sub: Subcommands, common: Parser) -> None:
    p = sub.add_parser(
        "rollback",
        parents=[common],
        help="request a promotion back to a release the environment ran before (on a new branch)",
    )
    p.add_argument("environment", metavar="ENV")
    p.add_argument("--to", required=True, metavar="RELEASE", help="a release ENV was allowed before")
    p.add_argument("--reason", default="")
    p.add_argument("--branch", help="the branch to start from (default: stella.yaml's branch)")
    p.set_defaults(func=cmd_rollback)


def cmd_rollback(args: argparse.Namespace) -> int:
    from ..workflow import rollback

    repo, settings = open_repository(args)
    base = args.branch or settings.branch
    done = rollback(repo, base, args.to, args.environment, args.reason)
    emit(
        args,
        {
            "promotion": done.promotion,
            "branch": done.branch,
            "commit": done.commit,
            "file": done.path,
            "release": args.to,
            "environment": args.environment,
            "rollback": True,
        },
        lambda: say(
            f"wrote {done.path} (rollback: true) on branch {done.branch} ({done.commit[:12]})\n"
            f"next: git push origin {done.branch}, and open a pull request into {base}; "
            f"it goes through {args.environment}'s gates like any promotion"
        ),
    )
    return OK


# --- approve -------------------------------------------------------------------------------------


def add_approve(sub: Subcommands, common: Parser) -> None:
    p = sub.add_parser("approve", parents=[common], help="approve (or reject) a promotion in a signed commit")
    p.add_argument("promotion", nargs="?")
    p.add_argument("--policy", action="store_true", help="approve the policy change at HEAD instead")
    p.add_argument("--reject", action="store_true", help="reject instead of approve (a reject blocks)")
    p.add_argument("--comment", default="")
    p.add_argument("--key", help="SSH private key to sign with (default: git config user.signingkey)")
    p.add_argument("--identity", help="approver identity (default: git config user.email)")
    p.set_defaults(func=cmd_approve)


def cmd_approve(args: argparse.Namespace) -> int:
    from ..workflow import approve

    if args.policy:
        if args.promotion:
            raise Usage("give a PROMOTION or --policy, not both")
        return _approve_policy(args)
    if not args.promotion:
        raise Usage("give the PROMOTION to approve (or --policy to approve the policy change at HEAD)")
    session = open_session(args)
    done = approve(
        session.repo,
        session.plugins,
        args.promotion,
        reject=args.reject,
        comment=args.comment,
        key=Path(args.key) if args.key else None,
        identity=args.identity,
        offline=session.offline,
    )
    verb = "rejected" if args.reject else "approved"
    emit(
        args,
        {
            "promotion": args.promotion,
            "decision": "reject" if args.reject else "approve",
            "identity": done.identity,
            "release": done.release_id,
            "file": done.path,
            "commit": done.commit,
        },
        lambda: say(
            f"{done.identity} {verb} {args.promotion} (release {done.release_id})\n"
            f"wrote {done.path} in signed commit {done.commit[:12]}; push it to the pull request's branch"
        ),
    )
    return OK


def _approve_policy(args: argparse.Namespace) -> int:
    from ..repo import Repo
    from ..workflow import approve_policy

    repo = Repo(repo_root(args))
    done = approve_policy(
        repo,
        reject=args.reject,
        comment=args.comment,
        key=Path(args.key) if args.key else None,
        identity=args.identity,
    )
    verb = "rejected" if args.reject else "approved"
    emit(
        args,
        {
            "policy": done.release_id,
            "decision": "reject" if args.reject else "approve",
            "identity": done.identity,
            "file": done.path,
            "commit": done.commit,
        },
        lambda: say(
            f"{done.identity} {verb} policy {done.release_id}\n"
            f"wrote {done.path} in signed commit {done.commit[:12]}; it counts once it is on "
            "the branch the reconciler reads"
        ),
    )
    return OK


# --- policy status -------------------------------------------------------------------------------


def add_policy(sub: Subcommands, common: Parser) -> None:
    policy_parser = sub.add_parser("policy", parents=[common], help="the ratified policy and changes to it")
    psub = policy_parser.add_subparsers(dest="policy_command", required=True, parser_class=Parser)
    p = psub.add_parser("status", parents=[common], help="ratified vs proposed policy, and approvals so far")
    p.add_argument("--rev", help="the commit whose policy is proposed (default: the branch head)")
    p.set_defaults(func=cmd_policy_status)


def cmd_policy_status(args: argparse.Namespace) -> int:
    """The ratified policy, the branch's (or --rev's), the files that differ, and the approvals."""
    from ..passes import dry_run

    session = open_session(args)
    repo = session.repo
    commit = repo.resolve_ref(args.rev) if args.rev else None
    if args.rev and commit is None:
        raise Usage(f"no such revision {args.rev!r}")
    result = dry_run(repo, session.plugins, now=now(), commit=commit, only=set(), offline=session.offline)
    change = result.policy_change
    genesis = result.ratification is not None
    payload = {
        "ratified": None if genesis else result.policy,
        "proposed": change.proposed if change else result.policy,
        "genesisPending": genesis,
        "change": change.as_json() if change else None,
        "ignored": result.ignored,
    }

    def text() -> None:
        if genesis:
            say(f"no policy ratified yet: the next reconcile pass ratifies {result.policy} as the genesis")
        else:
            say(f"ratified policy: {result.policy}")
        if change is None:
            if not genesis:
                say("the branch's policy is the ratified one: nothing to ratify")
        else:
            print_policy_change(change)
        for line in result.ignored:
            say(f"ignored on the evidence branch: {line}")

    emit(args, payload, text)
    return OK if change is None and not genesis else NOT_OK


def print_policy_change(change: PolicyChange) -> None:
    """Where a policy change stands: its state, the changed files, each vote and who can still approve."""
    say(f"proposed policy: {change.proposed or '(unreadable)'}: {change.state} ({change.reason})")
    say(f"  {change.message}")
    for path in change.changed:
        say(f"  changed: {path}")
    for judged in change.votes:
        vote = judged.vote
        how = "counted" if judged.counts else f"not counted: {judged.code}: {judged.message}"
        say(f"  {vote.approval.decision} by {vote.identity} ({how})")
    if change.authors:
        say(f"  authors of the change: {', '.join(change.authors)}")
    if change.state in ("pending", "blocked"):
        say(f"  can still approve: {', '.join(change.can_approve) or 'nobody'}")
    for problem in change.problems:
        say(f"  error: {problem}")


COMMANDS: dict[str, Register] = {
    "promote": add_promote,
    "rollback": add_rollback,
    "approve": add_approve,
    "policy": add_policy,
}
