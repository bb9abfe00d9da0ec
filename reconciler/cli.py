"""The `stella` command: the only place that prints or exits.

Exit codes (DESIGN §5): 0 success; 1 the thing checked is not OK; 2 invalid input, config or usage
(the message names the file and line); 3 infrastructure failure after retries. `-o json` output is
stable: every command prints one JSON object on stdout, documented in docs/cli.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from rich.console import Console

from . import __version__, reference
from .discover import Plugins, discover
from .errors import InvalidInput, Problem, StellaError, ValidationFailed
from .loop import PassResult, reconcile
from .manifests import load_repository, load_settings
from .models import Release
from .repo import Repo, WorkTree
from .resolve import Resolver, resolve_release
from .scaffold import write_scaffold
from .sign import generate_key

OK, NOT_OK, INVALID, TRANSIENT = 0, 1, 2, 3

err = Console(stderr=True, highlight=False)


class Usage(InvalidInput):
    """Bad command-line usage."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        err.print(f"stella: error: {message}", markup=False)
        raise SystemExit(INVALID)


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: Callable[[], None]) -> None:
    if args.output == "json":
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        text()


def _say(message: str) -> None:
    print(message)


def _root(args: argparse.Namespace) -> Path:
    return Path(args.repo).resolve()


def _plugins(args: argparse.Namespace, offline: bool) -> Plugins:
    return discover(offline=offline)


# --- commands ------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    root = _root(args)
    if args.rev:
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
        _emit(
            args,
            {"valid": False, "source": source, "problems": [p.as_dict() for p in problems]},
            lambda: _say("\n".join([*map(str, problems), f"{len(problems)} problem(s) found"])),
        )
        return INVALID
    counts = {
        "environments": len(repository.environments),
        "releases": len(repository.releases),
        "promotions": len(repository.promotions),
        "approvals": sum(len(a) for a in repository.approvals.values()),
    }
    _emit(
        args,
        {"valid": True, "source": source, "problems": [], "counts": counts},
        lambda: _say(f"valid: {source}: " + ", ".join(f"{n} {k}" for k, n in counts.items())),
    )
    return OK


def _parse_components(pairs: Sequence[str]) -> dict[str, str]:
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
    root = _root(args)
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
    with Resolver(settings, _plugins(args, offline), files, offline=offline) as resolver:
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
    _emit(
        args,
        {"release": lock.model_dump(mode="json"), "file": str(path.relative_to(root))},
        lambda: _print_lock(lock, path.relative_to(root)),
    )
    return OK


def _print_lock(lock: Any, path: Path) -> None:
    _say(f"release {lock.name} ({lock.id}) -> {path}")
    for name, comp in lock.components.items():
        tag = f":{comp.tag}" if comp.tag else ""
        _say(f"  {name}: {comp.image}{tag} -> {comp.digest}")


def cmd_reconcile(args: argparse.Namespace) -> int:
    if not args.once:
        raise Usage("the long-running loop is not available yet: run `stella reconcile --once`")
    repo = Repo(_root(args))
    offline = args.offline
    settings_offline = False
    head = repo.resolve_ref("HEAD")
    if head:
        settings_offline = load_settings(repo.tree(head)).offline
    plugins = _plugins(args, offline or settings_offline)
    progress = (lambda msg: err.print(f"[dim]{msg}[/dim]")) if err.is_terminal else None
    result = reconcile(repo, plugins, offline=offline, progress=progress)
    _emit(args, _pass_json(result), lambda: _print_pass(result))
    if result.problems:
        return INVALID
    if result.transient:
        return TRANSIENT
    return OK


def _pass_json(result: PassResult) -> dict[str, Any]:
    return {
        "sourceCommit": result.source_commit,
        "evidenceCommit": result.evidence_commit,
        "locked": [lock.model_dump(mode="json") for lock in result.locked],
        "problems": [p.as_dict() for p in result.problems],
        "transient": result.transient,
        "races": result.races,
    }


def _print_pass(result: PassResult) -> None:
    _say(f"read {result.source_commit[:12]}")
    for lock in result.locked:
        _say(f"locked release {lock.name} as {lock.id}")
        for name, comp in lock.components.items():
            _say(f"  {name}: {comp.pinned}")
    for problem in result.problems:
        _say(f"error: {problem}")
    for message in result.transient:
        _say(f"unavailable: {message}")
    if result.evidence_commit:
        _say(f"wrote evidence commit {result.evidence_commit[:12]}")
    elif not (result.problems or result.transient):
        _say("nothing new")


def cmd_keys_generate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    hint = generate_key(out)
    _emit(
        args,
        {"private": str(out), "public": f"{out}.pub", "hint": hint},
        lambda: _say(f"wrote {out} (private, mode 0600) and {out}.pub\nkey hint: {hint}"),
    )
    return OK


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    written, key = write_scaffold(target)
    _emit(
        args,
        {"directory": str(target), "files": written, "signingKey": str(key)},
        lambda: _say(
            f"scaffolded {target} ({len(written)} files)\n"
            f"evidence signing key: {key} (never commit it)\n"
            f"next: cd {target} && git add -A && git commit -m 'stella: initial' && "
            f"export STELLA_SIGNING_KEY={key}"
        ),
    )
    return OK


def _example_repo() -> Path:
    here = Path(__file__).resolve().parent.parent / "example-repo"
    override = os.environ.get("STELLA_EXAMPLE_REPO")
    path = Path(override) if override else here
    if not (path / "stella.yaml").is_file():
        raise Usage(f"{path}: example repository not found (set STELLA_EXAMPLE_REPO)")
    return path


def _git(cwd: Path, *argv: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Stella demo",
        "GIT_AUTHOR_EMAIL": "demo@example.com",
        "GIT_COMMITTER_NAME": "Stella demo",
        "GIT_COMMITTER_EMAIL": "demo@example.com",
    }
    subprocess.run(["git", *argv], cwd=cwd, env=env, check=True, capture_output=True)


def cmd_demo(args: argparse.Namespace) -> int:
    source = _example_repo()
    step = 0

    def explain(title: str, detail: str) -> None:
        nonlocal step
        step += 1
        if args.output != "json":
            err.print(f"\n[bold]{step}. {title}[/bold]")
            err.print(detail, markup=False)

    with tempfile.TemporaryDirectory(prefix="stella-demo-") as tmp:
        work = Path(tmp) / "repo"
        shutil.copytree(source, work)
        explain(
            "Copy example-repo/ into a fresh Git repository",
            f"{work}: manifests, templates, trust material and an offline OCI mirror (mirror/oci/).",
        )
        _git(work, "init", "-q", "-b", "main")
        _git(work, "add", "-A")
        _git(work, "commit", "-q", "-m", "demo: example repository")
        key = Path(tmp) / "evidence-key.pem"
        hint = generate_key(key)
        explain("Generate an evidence signing key", f"P-256 key {key}, hint {hint}")

        explain("Validate every manifest", "All problems are listed at once, each with file:line.")
        repository = load_repository(WorkTree(work))
        for kind, count in (
            ("environments", len(repository.environments)),
            ("releases", len(repository.releases)),
            ("promotions", len(repository.promotions)),
        ):
            _say(f"  {count} {kind}")

        explain(
            "Resolve each release's tags to digests, offline, and lock them",
            "Tags are looked up once in the OCI layouts under mirror/oci/; the digests are written to "
            "releases/<name>.json on refs/heads/stella/evidence in one compare-and-swap commit.",
        )
        repo = Repo(work)
        result = reconcile(repo, discover(offline=True), offline=True)
        _print_pass(result)

        explain(
            "Run the same pass again",
            "Nothing new: a locked release is never resolved again, even if its tag moves.",
        )
        again = reconcile(repo, discover(offline=True), offline=True)
        _print_pass(again)
        if args.output == "json":
            print(json.dumps({"first": _pass_json(result), "second": _pass_json(again)}, indent=2))
        ok = not result.problems and not result.transient and not again.locked
    return OK if ok else NOT_OK


# --- parser --------------------------------------------------------------------------------------


def _common(defaults: bool) -> _Parser:
    """Global options, accepted before or after the command (sub-parsers must not reset them)."""

    def d(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    common = _Parser(add_help=False)
    common.add_argument(
        "--repo", default=d(os.environ.get("STELLA_REPO", ".")), help="repository path (default: .)"
    )
    common.add_argument("-o", "--output", choices=["text", "json"], default=d("text"))
    common.add_argument(
        "--offline",
        action="store_true",
        default=d(False),
        help="refuse network plugins; use mirror/",
    )
    common.add_argument("-v", "--verbose", action="count", default=d(0))
    return common


def build_parser() -> argparse.ArgumentParser:
    top, common = _common(True), _common(False)
    parser = _Parser(prog="stella", description="GitOps release orchestrator", parents=[top])
    parser.add_argument("--version", action="version", version=f"stella {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("validate", parents=[common], help="validate every manifest")
    p.add_argument("--rev", help="validate a commit instead of the work tree")
    p.set_defaults(func=cmd_validate)

    release = sub.add_parser("release", parents=[common], help="releases")
    rsub = release.add_subparsers(dest="release_command", required=True, parser_class=_Parser)
    p = rsub.add_parser("create", parents=[common], help="resolve tags now; write releases/NAME.yaml")
    p.add_argument("name")
    p.add_argument("components", nargs="+", metavar="COMP=IMAGE")
    p.set_defaults(func=cmd_release_create)

    p = sub.add_parser("reconcile", parents=[common], help="run the reconcile loop")
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between passes")
    p.set_defaults(func=cmd_reconcile)

    keys = sub.add_parser("keys", parents=[common], help="evidence signing keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, parser_class=_Parser)
    p = ksub.add_parser("generate", parents=[common], help="write a P-256 key pair OUT and OUT.pub")
    p.add_argument("out")
    p.set_defaults(func=cmd_keys_generate)

    p = sub.add_parser("init", parents=[common], help="scaffold a new repository")
    p.add_argument("dir")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("demo", parents=[common], help="the whole flow on a copy of example-repo/")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args.func(args)
    except ValidationFailed as exc:
        _report(args, exc.problems, exc)
        return exc.exit_code
    except StellaError as exc:
        problems = exc.problems if isinstance(exc, InvalidInput) else []
        _report(args, problems, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    return code


def _report(args: argparse.Namespace, problems: list[Problem], exc: StellaError) -> None:
    if args.output == "json":
        print(
            json.dumps(
                {
                    "error": type(exc).__name__,
                    "message": str(exc),
                    "exitCode": exc.exit_code,
                    "problems": [p.as_dict() for p in problems],
                },
                indent=2,
                sort_keys=True,
            )
        )
    err.print(f"error: {exc.diagnostics()}", markup=False, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
