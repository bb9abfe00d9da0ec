"""`stella validate`, `init` and `keys generate` through the real command."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from reconciler.sign import key_hint
from tests.support.cli import stella
from tests.support.repos import BASE, RELEASE, make_repo, write_files
from tests.support.ssh import person


def test_validate_ok_text_and_json(tmp_path: Path) -> None:
    make_repo(tmp_path)
    run = stella("validate", "--repo", tmp_path)
    assert (run.code, run.err) == (0, "")
    assert "2 environments, 1 releases, 1 promotions, 0 approvals" in run.out
    as_json = stella("validate", "-o", "json", cwd=tmp_path).json()
    assert as_json["valid"] is True
    assert as_json["counts"] == {"environments": 2, "releases": 1, "promotions": 1, "approvals": 0}


def test_validate_reports_every_problem_with_file_and_line(tmp_path: Path) -> None:
    make_repo(
        tmp_path,
        {
            **BASE,
            "releases/shop-1.0.0.yaml": RELEASE + "extra: 1\n",
            "environments/dev.yaml": "apiVersion: stella/v1\nkind: Environment\nname: dev\nsoak: [\n",
        },
    )
    run = stella("validate", "--repo", tmp_path)
    assert run.code == 2
    assert "Traceback" not in run.err
    lines = run.out.splitlines()
    assert lines[0].startswith("environments/dev.yaml:5: YAML syntax error")
    assert lines[1] == "releases/shop-1.0.0.yaml:6: unknown field 'extra'"
    assert lines[2] == "2 problem(s) found"
    problems = stella("validate", "--repo", tmp_path, "-o", "json").json()["problems"]
    assert [(p["file"], p["line"]) for p in problems] == [
        ("environments/dev.yaml", 5),
        ("releases/shop-1.0.0.yaml", 6),
    ]


def test_validate_a_commit(tmp_path: Path) -> None:
    make_repo(tmp_path)
    write_files(tmp_path, {"releases/shop-1.0.0.yaml": "broken: [\n"})
    assert stella("validate", "--repo", tmp_path).code == 2
    assert stella("validate", "--repo", tmp_path, "--rev", "main").code == 0
    missing = stella("validate", "--repo", tmp_path, "--rev", "nope")
    assert missing.code == 2 and "no such revision 'nope'" in missing.err


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert stella("no-such-command").code == 2
    run = stella("validate", "--repo", tmp_path / "missing")
    assert run.code == 2 and "no such directory" in run.err


def test_keys_generate(tmp_path: Path) -> None:
    out = tmp_path / "keys" / "evidence.pem"
    run = stella("keys", "generate", out, "-o", "json")
    assert run.code == 0, run.err
    info = run.json()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    private = serialization.load_pem_private_key(out.read_bytes(), password=None)
    public = serialization.load_pem_public_key((tmp_path / "keys" / "evidence.pem.pub").read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp256r1"
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert info["hint"] == key_hint(public) == key_hint(private.public_key())
    again = stella("keys", "generate", out)
    assert again.code == 2 and "refusing to overwrite" in again.err


def test_init_scaffolds_a_valid_repository(tmp_path: Path) -> None:
    target = tmp_path / "acme"
    run = stella("init", target)
    assert run.code == 0, run.err
    assert (target / ".git").is_dir()
    assert (target / "trust" / "evidence-keys" / "evidence.pub").is_file()
    assert (target / ".gitignore").read_text() == ".stella/\n"
    assert stella("validate", "--repo", target).code == 0
    assert stella("init", target).code == 2


def test_init_names_the_first_policy_admin(tmp_path: Path) -> None:
    """`governance:` and its first admin, whose SSH key then approves policy changes from the start."""
    admin = person(tmp_path / "ssh", "admin@example.com")
    target = tmp_path / "acme"
    run = stella("init", target, "--admin", admin.identity, "--admin-key", f"{admin.key}.pub", "-o", "json")
    assert run.code == 0, run.err
    settings = yaml.safe_load((target / "stella.yaml").read_text())
    assert settings["governance"] == {"required": 1, "groups": ["policy-admins"], "separationOfDuties": True}
    groups = yaml.safe_load((target / "trust" / "groups.yaml").read_text())["groups"]
    assert groups["policy-admins"] == ["admin@example.com"]
    assert admin.allowed_signers_line() in (target / "trust" / "allowed_signers").read_text()
    assert stella("validate", "--repo", target).code == 0
    bad = stella("init", tmp_path / "other", "--admin-key", f"{admin.key}")  # the private key
    assert bad.code == 2 and "not an SSH public key line" in bad.err
