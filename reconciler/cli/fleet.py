"""`stella fleet migrate`, `stella fleet token create|list|revoke TENANT` and `stella serve` (DESIGN §10).

They read `--config fleet.yaml` (bad config: exit 2, naming the file and line) and connect to the
database URL (`STELLA_DATABASE_URL`, else the `database` reference of fleet.yaml) as its owner role; a
database that cannot be reached is exit 3. psycopg and procrastinate are imported by the handlers only,
so that `stella --help` does not pay for them.

`migrate` prints what it did (`-o json`: `{"procrastinate": {"schema", "version"}, "tables",
"rowLevelSecurity", "serviceRole": {"name", "state"}, "tenants": {"added", "unlisted"}}`).
`token create` prints one new token on one line (`-o json`: `{"tenant", "token"}`); only its SHA-256
is stored. `token list` prints the tenant's tokens, one `ID CREATED` per line, oldest first (`-o json`:
`{"tenant", "tokens": [{"id", "createdAt"}]}`); `token revoke TENANT ID` (or `--all`) deletes one (every)
token of that tenant and prints what it revoked (`-o json`: `{"tenant", "revoked": [...]}`). A token
id or tenant that matches nothing is exit 2.

`serve` binds `--listen` (bad or busy: exit 2), resolves every tenant's webhook secret (one that does
not resolve: exit 2, naming the reference), prints `listening on http://HOST:PORT` and serves
`reconciler.fleet.server`'s app until SIGTERM or SIGINT (exit 0).
"""

from __future__ import annotations

import argparse

from ._app import OK, Parser, Register, Subcommands, Usage, emit, say


def add_fleet(sub: Subcommands, common: Parser) -> None:
    fleet = sub.add_parser("fleet", parents=[common], help="the fleet's database: schema, roles, tokens")
    fsub = fleet.add_subparsers(dest="fleet_command", required=True, parser_class=Parser)
    p = fsub.add_parser(
        "migrate", parents=[common], help="schema, service role and row-level security; idempotent"
    )
    _config(p)
    p.set_defaults(func=cmd_fleet_migrate)
    token = fsub.add_parser("token", parents=[common], help="API tokens of a tenant")
    tsub = token.add_subparsers(dest="token_command", required=True, parser_class=Parser)
    p = tsub.add_parser("create", parents=[common], help="print one new API token for TENANT")
    p.add_argument("tenant", metavar="TENANT")
    _config(p)
    p.set_defaults(func=cmd_fleet_token_create)
    p = tsub.add_parser(
        "list", parents=[common], help="the ids of TENANT's API tokens and when each was made"
    )
    p.add_argument("tenant", metavar="TENANT")
    _config(p)
    p.set_defaults(func=cmd_fleet_token_list)
    p = tsub.add_parser(
        "revoke", parents=[common], help="revoke one API token of TENANT (by its id), or --all"
    )
    p.add_argument("tenant", metavar="TENANT")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "id", metavar="ID", nargs="?", help="the token's id (`token list`), 8 hex digits or more"
    )
    which.add_argument("--all", action="store_true", help="revoke every token of TENANT")
    _config(p)
    p.set_defaults(func=cmd_fleet_token_revoke)
    p = fsub.add_parser(
        "reconcile", parents=[common], help="queue one reconcile of TENANT (a manual trigger)"
    )
    p.add_argument("tenant", metavar="TENANT")
    _config(p)
    p.set_defaults(func=cmd_fleet_reconcile)


def _config(p: Parser) -> None:
    p.add_argument("--config", required=True, metavar="FLEET_YAML", help="the fleet file (fleet.yaml)")


def cmd_fleet_migrate(args: argparse.Namespace) -> int:
    from ..fleet.config import database_url, load_fleet
    from ..fleet.schema import migrate

    fleet = load_fleet(args.config)
    done = migrate(database_url(fleet), fleet)

    def text() -> None:
        say(f"procrastinate schema: {done.procrastinate} (procrastinate {done.procrastinate_version})")
        for table, state in done.tables.items():
            say(f"table {table}: {state}")
        say(
            "row-level security: stella_evidence, stella_pending"
            " (ENABLE, FORCE; rows of current_setting('stella.tenant'))"
        )
        say(f"service role {done.role}: {done.role_state} (evidence: SELECT, INSERT only)")
        say(f"tenants added: {', '.join(done.tenants_added) or 'none'}")
        if done.tenants_unlisted:
            say(f"tenants kept but no longer in {args.config}: {', '.join(done.tenants_unlisted)}")

    emit(args, done.as_json(), text)
    return OK


def cmd_fleet_token_create(args: argparse.Namespace) -> int:
    from ..fleet.config import database_url, load_fleet
    from ..fleet.schema import create_token

    fleet = load_fleet(args.config)
    token = create_token(database_url(fleet), fleet, args.tenant)
    emit(args, {"tenant": args.tenant, "token": token}, lambda: say(token))
    return OK


def cmd_fleet_token_list(args: argparse.Namespace) -> int:
    from ..fleet.config import database_url, load_fleet
    from ..fleet.schema import list_tokens

    tokens = list_tokens(database_url(load_fleet(args.config)), args.tenant)

    def text() -> None:
        for token in tokens:
            say(f"{token.id}  {token.as_json()['createdAt']}")
        if not tokens:
            say(f"tenant {args.tenant} has no API token")

    emit(args, {"tenant": args.tenant, "tokens": [t.as_json() for t in tokens]}, text)
    return OK


def cmd_fleet_token_revoke(args: argparse.Namespace) -> int:
    from ..fleet.config import database_url, load_fleet
    from ..fleet.schema import revoke_tokens

    revoked = revoke_tokens(database_url(load_fleet(args.config)), args.tenant, None if args.all else args.id)

    def text() -> None:
        for token in revoked:
            say(f"revoked {token.id} (created {token.as_json()['createdAt']})")
        if not revoked:
            say(f"tenant {args.tenant} had no API token")

    emit(args, {"tenant": args.tenant, "revoked": [t.as_json() for t in revoked]}, text)
    return OK


def add_serve(sub: Subcommands, common: Parser) -> None:
    p = sub.add_parser(
        "serve", parents=[common], help="the fleet's webhooks, API, /metrics and /healthz (HTTP)"
    )
    _config(p)
    p.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:8080; port 0: any free port)",
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT. Prints `listening on http://HOST:PORT` once the socket is bound
    (connections wait in its backlog until the app has started)."""
    import sys

    from ..fleet.config import database_url, load_fleet
    from ..fleet.server import bind, parse_listen, serve

    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        raise Usage(f"--listen: {exc}") from None
    fleet = load_fleet(args.config)
    url = database_url(fleet)
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise Usage(f"--listen {args.listen}: cannot listen there: {exc.strerror or exc}") from exc

    def ready() -> None:
        bound = sock.getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        say(f"listening on http://{shown}:{bound[1]}")
        sys.stdout.flush()

    with sock:
        serve(fleet, url, sock, ready)
    return OK


def add_worker(sub: Subcommands, common: Parser) -> None:
    p = sub.add_parser("worker", parents=[common], help="run the fleet's reconcile jobs (procrastinate)")
    _config(p)
    p.add_argument("--concurrency", type=int, default=2, metavar="N", help="jobs run at once (default 2)")
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run reconcile jobs, polls and stalled-job recovery until SIGTERM or SIGINT (exit 0)."""
    from ..fleet.config import database_url, load_fleet
    from ..fleet.jobs import run_worker

    if args.concurrency < 1:
        raise Usage("--concurrency must be at least 1")
    fleet = load_fleet(args.config)
    run_worker(fleet, database_url(fleet), args.concurrency)
    return OK


def cmd_fleet_reconcile(args: argparse.Namespace) -> int:
    """Queue one manual reconcile of TENANT: `queued`, or `collapsed` into one already queued."""
    from ..errors import InvalidInput
    from ..fleet.config import database_url, load_fleet
    from ..fleet.jobs import defer_reconcile, make_app

    fleet = load_fleet(args.config)
    if fleet.tenant(args.tenant) is None:
        raise InvalidInput(f"tenant {args.tenant!r} is not in {args.config}")
    with make_app(database_url(fleet)).open() as app:
        state = "queued" if defer_reconcile(app, args.tenant, "manual") else "collapsed"
    emit(args, {"tenant": args.tenant, "state": state}, lambda: say(f"{args.tenant}: {state}"))
    return OK


COMMANDS: dict[str, Register] = {"fleet": add_fleet, "serve": add_serve, "worker": add_worker}
