"""Golden bytes: a fixed repository, fixed keys, fixed commit dates and a fixed clock produce the same
evidence files, byte for byte, release after release.

The story is the demo's (genesis, a dev decision, a staging promotion approved on its branch, a policy
change ratified by an admin). Keys come from tests/data/golden/, commit dates from GIT_*_DATE. ECDSA
signatures are randomised, so a bundle is compared with its signature left out, and checked to verify.
Regenerate on purpose only (an intended change of the evidence format): STELLA_GOLDEN_UPDATE=1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler import demo
from reconciler.evidence import sha256_hex
from tests.support.pipeline import EXAMPLE

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
EXPECTED = GOLDEN / "evidence.json"
DATE = "2026-11-30T10:00:00+00:00"


def _fixed_keys(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp / "golden-keys"
    shutil.copytree(GOLDEN, keys)
    for path in keys.rglob("*"):
        if path.is_file() and not path.name.endswith((".pub", ".md", ".json")):
            path.chmod(0o600)  # ssh-keygen refuses a private key others can read

    def generate_key(out: Path) -> str:
        shutil.copyfile(keys / "evidence-key.pem", out)
        shutil.copyfile(keys / "evidence-key.pem.pub", out.with_name(out.name + ".pub"))
        out.chmod(0o600)
        return "golden"

    def ssh_key(directory: Path, identity: str) -> tuple[str, Path]:
        return identity, keys / "ssh" / identity.split("@")[0]

    monkeypatch.setattr(demo, "generate_key", generate_key)
    monkeypatch.setattr(demo, "_ssh_key", ssh_key)


def _masked(path: str, data: bytes) -> str:
    """sha256 of the file, or for a bundle of its JSON with the (randomised) ECDSA signatures left out."""
    if not path.endswith(".sigstore.json"):
        return sha256_hex(data)
    bundle = json.loads(data)
    for signature in bundle.get("dsseEnvelope", {}).get("signatures", []):
        signature.pop("sig", None)
    return "masked:" + sha256_hex(json.dumps(bundle, sort_keys=True).encode())


def _evidence(repo: Path) -> dict[str, str]:
    def git(*argv: str) -> bytes:
        return subprocess.run(["git", *argv], cwd=repo, check=True, capture_output=True).stdout

    names = git("ls-tree", "-r", "--name-only", "refs/heads/stella/evidence").decode().splitlines()
    return {
        name: _masked(name, git("cat-file", "blob", f"refs/heads/stella/evidence:{name}")) for name in names
    }


def test_the_demo_story_writes_the_same_evidence_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fixed_keys(tmp_path, monkeypatch)
    for variable in ("GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE"):
        monkeypatch.setenv(variable, DATE)
    work = tmp_path / "work"
    work.mkdir()
    steps = list(demo.steps(EXAMPLE, work))
    assert all(step.ok for step in steps), [step.title for step in steps if not step.ok]
    actual = _evidence(work / "repo")
    if os.environ.get("STELLA_GOLDEN_UPDATE"):
        EXPECTED.write_text(json.dumps(actual, indent=1, sort_keys=True) + "\n")
    expected = json.loads(EXPECTED.read_text())
    changed = sorted(name for name in expected.keys() & actual.keys() if expected[name] != actual[name])
    assert (sorted(expected.keys() - actual.keys()), sorted(actual.keys() - expected.keys()), changed) == (
        [],
        [],
        [],
    )
    assert len(actual) > 20
