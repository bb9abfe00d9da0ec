"""Real SSH keys for identities in tests, and the allowed-signers file that trusts them."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Person:
    identity: str
    key: Path

    @property
    def public(self) -> str:
        return " ".join(self.key.with_name(self.key.name + ".pub").read_text().split()[:2])

    def allowed_signers_line(self) -> str:
        return f'{self.identity} namespaces="git" {self.public}\n'

    def git_env(self) -> dict[str, str]:
        name = self.identity.split("@")[0]
        return {
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": self.identity,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": self.identity,
        }


def person(directory: Path, identity: str) -> Person:
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / identity.split("@")[0]
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", identity, "-f", str(key)],
        check=True,
        capture_output=True,
    )
    return Person(identity, key)


def allowed_signers(*people: Person) -> str:
    return "".join(p.allowed_signers_line() for p in people)
