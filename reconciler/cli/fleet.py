"""`stella fleet migrate` and `stella fleet token create TENANT`: the fleet's database (DESIGN §10).

Both read `--config fleet.yaml` (bad config: exit 2, naming the file and line) and connect to the
database URL (`STELLA_DATABASE_URL`, else the `database` reference of fleet.yaml) as its owner role; a
database that cannot be reached is exit 3. psycopg and procrastinate are imported by the handlers only,
so that `stella --help` does not pay for them.

`migrate` prints what it did (`-o json`: `{"procrastinate": {"schema", "version"}, "tables",
"rowLevelSecurity", "serviceRole": {"name", "state"}, "tenants": {"added", "unlisted"}}`).
`token create` prints one new token on one line (`-o json`: `{"tenant", "token"}`); only its SHA-256
is stored.
"""

from __future__ import annotations

import argparse

from ._app import OK, Parser, Register, Subcommands, emit, say


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
        say("row-level security: stella_evidence (ENABLE, FORCE; rows of current_setting('stella.tenant'))")
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


COMMANDS: dict[str, Register] = {"fleet": add_fleet}
