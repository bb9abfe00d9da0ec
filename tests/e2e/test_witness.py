"""Key-signed evidence witnessed later with a keyless signature, and verified offline by audit verify."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pipeline import Workspace, example_workspace
from tests.support.repos import commit_all, write_files
from tests.support.sigstore_mock import MockSigstore, dummy_token, start_mock_sigstore

SAN = "https://ci.example.com/shop/release-pipeline@refs/heads/main"
ISSUER = "https://issuer.ci.example.com"


@pytest.fixture
def sigstore(tmp_path: Path) -> Iterator[MockSigstore]:
    server = start_mock_sigstore(tmp_path / "sigstore")
    try:
        yield server
    finally:
        server.stop()


def _trusting(ws: Workspace, server: MockSigstore, san: str) -> None:
    """Trust a keyless identity, and go online: witnessing happens where the network is."""
    settings = (ws.root / "stella.yaml").read_text().replace("offline: true", "offline: false")
    write_files(
        ws.root,
        {
            "stella.yaml": settings,
            "trust/keyless.yaml": "apiVersion: stella/v1\nkind: KeylessPolicy\n"
            "trustedRoot: trust/sigstore/trusted_root.json\n"
            f"identities:\n  - {{san: '{san}', issuer: '{ISSUER}'}}\n",
            "trust/sigstore/trusted_root.json": server.trusted_root,
        },
    )
    commit_all(ws.root, "trust the release pipeline's keyless identity")


def test_witness_then_verify(tmp_path: Path, sigstore: MockSigstore) -> None:
    ws = example_workspace(tmp_path)
    assert ws.stella("reconcile", "--once").code == 0
    _trusting(ws, sigstore, SAN)
    env = {
        "SIGSTORE_ID_TOKEN": dummy_token(SAN, ISSUER),
        "STELLA_SIGSTORE_TRUST_CONFIG": str(sigstore.trust_config),
    }
    run = ws.stella("audit", "witness", "-o", "json", env=env)
    assert run.code == 0, run.err
    witnessed = run.json()["witnessed"]  # the decision and the genesis ratification
    assert len(witnessed) == 2
    for evidence_id in witnessed:
        assert f"evidence/{evidence_id.removeprefix('sha256:')}.keyless.sigstore.json" in ws.evidence_files()
    assert ws.stella("audit", "witness", env=env).out.strip() == "nothing to witness"
    sigstore.stop()  # verification is offline

    verify = ws.stella("audit", "verify", "-o", "json")
    assert verify.code == 0, verify.out
    assert verify.json()["witnesses"] == 2


def test_witness_by_an_identity_the_policy_does_not_allow(tmp_path: Path, sigstore: MockSigstore) -> None:
    ws = example_workspace(tmp_path)
    assert ws.stella("reconcile", "--once").code == 0
    _trusting(ws, sigstore, "https://ci.example.com/shop/other-pipeline@refs/heads/main")
    env = {
        "SIGSTORE_ID_TOKEN": dummy_token(SAN, ISSUER),
        "STELLA_SIGSTORE_TRUST_CONFIG": str(sigstore.trust_config),
    }
    assert ws.stella("audit", "witness", env=env).code == 0
    verify = ws.stella("audit", "verify", "-o", "json")
    assert verify.code == 1
    findings = verify.json()["findings"]
    assert len(findings) == 2  # one per witnessed record
    for finding in findings:
        assert finding["file"].endswith(".keyless.sigstore.json")
        assert finding["check"] == "signature"
        assert SAN in finding["message"]


def test_witness_without_a_token_is_invalid_input(tmp_path: Path) -> None:
    ws = example_workspace(tmp_path)
    assert ws.stella("reconcile", "--once").code == 0
    online = (ws.root / "stella.yaml").read_text().replace("offline: true", "offline: false")
    write_files(ws.root, {"stella.yaml": online})
    commit_all(ws.root, "online")
    run = ws.stella("audit", "witness", env={"SIGSTORE_ID_TOKEN": "", "GITHUB_ACTIONS": ""})
    assert run.code == 2 and "Traceback" not in run.err
    assert "token" in run.err.lower()
