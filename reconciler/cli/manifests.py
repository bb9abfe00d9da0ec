"""Commands that read or write the repository's manifests and keys: `validate`, `release create`,
`keys generate` and `init`.

Each command's parser is declared beside its handler; the loaders, models and Git are imported by the
handlers, so that building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput, ValidationFailed
from ._app import (
    INVALID,
    OK,
    Parser,
    Register,
    Subcommands,
    Usage,
    emit,
    os_reason,
    read_input,
    repo_root,
    say,
)

if TYPE_CHECKING:
    from ..models import ReleaseLock


# --- validate ------------------------------------------------------------------------------------


def add_validate(sub: Subcommands, common: Parser) -> None:
    p = sub.add_parser("validate", parents=[common], help="validate every manifest")
    p.add_argument("--rev", help="validate a commit instead of the work tree")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    from ..manifests import load_repository
    from ..repo import WorkTree

    root = repo_root(args)
    if args.rev:
        from ..repo import Repo  # pygit2 only when a commit is read

        repo = Repo(root)
        commit = repo.resolve_ref(args.rev)
        if commit is None:
            raise Usage(f"no such revision {args.rev!r} in {root}")
        files: Any = repo.tree(commit)
        source = f"{root} at {commit[:12]}"
    else:
        if not root.is_dir():
            raise Usage(f"{root}: no such directory")
        files, source = WorkTree(root), str(root)
    try:
        repository = load_repository(files)
    except ValidationFailed as exc:
        problems = exc.problems
        emit(
            args,
            {"valid": False, "source": source, "problems": [p.as_dict() for p in problems]},
            lambda: say("\n".join([*map(str, problems), f"{len(problems)} problem(s) found"])),
        )
        return INVALID
    counts = {
        "environments": len(repository.environments),
        "releases": len(repository.releases),
        "promotions": len(repository.promotions),
        "approvals": sum(len(a) for a in repository.approvals.values()),
    }
    emit(
        args,
        {"valid": True, "source": source, "problems": [], "counts": counts},
        lambda: say(f"valid: {source}: " + ", ".join(f"{n} {k}" for k, n in counts.items())),
    )
    return OK


# --- release create ------------------------------------------------------------------------------


def add_release(sub: Subcommands, common: Parser) -> None:
    release = sub.add_parser("release", parents=[common], help="releases")
    rsub = release.add_subparsers(dest="release_command", required=True, parser_class=Parser)
    p = rsub.add_parser("create", parents=[common], help="resolve tags now; write releases/NAME.yaml")
    p.add_argument("name")
    p.add_argument("components", nargs="+", metavar="COMP=IMAGE")
    p.set_defaults(func=cmd_release_create)


def _parse_components(pairs: Sequence[str]) -> dict[str, str]:
    from .. import reference

    components: dict[str, str] = {}
    for pair in pairs:
        name, sep, image = pair.partition("=")
        if not sep or not name or not image:
            raise Usage(
                f"component {pair!r}: expected NAME=IMAGE (e.g. web=registry.example.com/shop/web:1.4.0)"
            )
        if name in components:
            raise Usage(f"component {name!r} given twice")
        try:
            reference.parse(image)
        except reference.ReferenceError as exc:
            raise Usage(f"component {name!r}: {exc}") from None
        components[name] = image
    return components


def cmd_release_create(args: argparse.Namespace) -> int:
    import yaml

    from ..discover import discover
    from ..manifests import load_settings
    from ..models import Release
    from ..repo import WorkTree
    from ..resolve import Resolver, resolve_release

    root = repo_root(args)
    files = WorkTree(root)
    settings = load_settings(files)
    components = _parse_components(args.components)
    path = root / "releases" / f"{args.name}.yaml"
    draft = {
        "apiVersion": "stella/v1",
        "kind": "Release",
        "name": args.name,
        "components": {name: {"image": image} for name, image in components.items()},
    }
    try:
        release = Release.model_validate(draft)
    except ValueError as exc:
        raise Usage(f"release {args.name!r}: {exc}") from None
    if path.exists():
        raise Usage(
            f"{path.relative_to(root)} already exists: a release never changes; create a new release name"
        )
    offline = args.offline or settings.offline
    with Resolver(settings, discover(offline=offline), files, offline=offline) as resolver:
        lock = resolve_release(release, resolver)
    doc = {
        "apiVersion": "stella/v1",
        "kind": "Release",
        "name": args.name,
        "components": {
            name: {"image": components[name], "digest": comp.digest} for name, comp in lock.components.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    header = f"# Written by `stella release create`; release id {lock.id}\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + text)
    os.replace(tmp, path)
    emit(
        args,
        {"release": lock.model_dump(mode="json"), "file": str(path.relative_to(root))},
        lambda: _print_lock(lock, path.relative_to(root)),
    )
    return OK


def _print_lock(lock: ReleaseLock, path: Path) -> None:
    say(f"release {lock.name} ({lock.id}) -> {path}")
    for name, comp in lock.components.items():
        tag = f":{comp.tag}" if comp.tag else ""
        say(f"  {name}: {comp.image}{tag} -> {comp.digest}")


# --- keys generate -------------------------------------------------------------------------------


def add_keys(sub: Subcommands, common: Parser) -> None:
    keys = sub.add_parser("keys", parents=[common], help="evidence signing keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, parser_class=Parser)
    p = ksub.add_parser("generate", parents=[common], help="write a P-256 key pair OUT and OUT.pub")
    p.add_argument("out")
    p.set_defaults(func=cmd_keys_generate)


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from ..sign import generate_key

    out = Path(args.out)
    try:
        hint = generate_key(out)
    except OSError as exc:
        raise InvalidInput(f"{out}: cannot write the key pair: {os_reason(exc, out)}") from exc
    emit(
        args,
        {"private": str(out), "public": f"{out}.pub", "hint": hint},
        lambda: say(f"wrote {out} (private, mode 0600) and {out}.pub\nkey hint: {hint}"),
    )
    return OK


# --- init ----------------------------------------------------------------------------------------


def add_init(sub: Subcommands, common: Parser) -> None:
    p = sub.add_parser("init", parents=[common], help="scaffold a new repository")
    p.add_argument("dir")
    p.add_argument("--admin", help="the first policy admin's identity (default: git config user.email)")
    p.add_argument("--admin-key", metavar="PUB", help="the first admin's SSH public key file (.pub)")
    p.set_defaults(func=cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    from ..scaffold import write_scaffold

    target = Path(args.dir)
    admin_key = None
    if args.admin_key:
        admin_key = read_input(args.admin_key, "admin's SSH public key").decode("utf-8", "replace").strip()
    admin = args.admin or _git_config("user.email") or "admin@example.com"
    if "@" not in admin:
        raise Usage(f"--admin {admin!r}: an identity is an email address")
    written, key = write_scaffold(target, admin, admin_key)
    emit(
        args,
        {"directory": str(target), "files": written, "signingKey": str(key)},
        lambda: say(
            f"scaffolded {target} ({len(written)} files)\n"
            f"evidence signing key: {key} (never commit it)\n"
            f"first policy admin: {admin}"
            + (
                ""
                if admin_key
                else " (add their SSH key to trust/allowed_signers before the first reconcile)"
            )
            + "\n"
            f"next: cd {target} && git add -A && git commit -m 'stella: initial' && "
            f"export STELLA_SIGNING_KEY={key}"
        ),
    )
    return OK


def _git_config(name: str) -> str | None:
    import subprocess

    done = subprocess.run(["git", "config", "--get", name], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None if done.returncode == 0 else None


COMMANDS: dict[str, Register] = {
    "validate": add_validate,
    "release": add_release,
    "keys": add_keys,
    "init": add_init,
}
