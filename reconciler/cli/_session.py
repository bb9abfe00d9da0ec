"""What most commands open first: the repository, its settings at the branch head, and the plugins.

Also the clock and the progress callback the commands hand to the core (`now` is a parameter there).
The modules behind a session (Git, the models, plugin discovery, the loop) are imported when one is
opened, never when this module is: `stella --help` must not load them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ._app import err, repo_root

if TYPE_CHECKING:
    from ..discover import Plugins
    from ..models import Settings
    from ..protocols import Signer
    from ..repo import Repo


@dataclass
class Session:
    """The repository, its settings at the branch head, the plugins, and whether to stay offline."""

    repo: Repo
    settings: Settings
    plugins: Plugins
    offline: bool

    def signer(self) -> Signer:
        """The evidence signer the ratified `stella.yaml` names (the branch's before any genesis)."""
        from ..chain import ratified_settings

        settings = ratified_settings(self.repo, self.settings)
        return self.plugins.signer(settings.signer.plugin).open(settings.signer.key, os.environ)


def open_session(args: argparse.Namespace) -> Session:
    from ..discover import discover

    repo, settings = open_repository(args)
    offline = bool(args.offline or settings.offline)
    return Session(repo, settings, discover(offline=offline), offline)


def open_repository(args: argparse.Namespace) -> tuple[Repo, Settings]:
    """The repository and its settings, as `open_session` reads them, without loading plugins."""
    from ..manifests import load_settings
    from ..passes import source_commit
    from ..repo import Repo

    repo = Repo(repo_root(args))
    _, commit = source_commit(repo)
    return repo, load_settings(repo.tree(commit))


def progress() -> Callable[[str], None] | None:
    """Progress lines for the core on stderr, dimmed, when stderr is a terminal."""
    console = err()
    return (lambda msg: console.print(f"[dim]{msg}[/dim]")) if console.is_terminal else None


def now() -> datetime:
    return datetime.now(UTC)
