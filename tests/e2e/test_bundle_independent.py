"""Bundles made by `KeySigner` verify with an independent Sigstore verifier (sigstore-js).

`tests/js/verify-bundle.js` checks a bundle with `@sigstore/verify` given only the PEM public key
(no trust root, thresholds 0). It needs Node and `tests/js/node_modules` (`make setup` installs both);
without them these tests fail, they never skip.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric import ec

from reconciler.sign import KeySigner, key_hint, public_pem

JS = Path(__file__).resolve().parents[1] / "js"
VERIFY = JS / "verify-bundle.js"


@dataclass(frozen=True)
class Verdict:
    code: int
    out: str


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.fail("node is not installed: run `make setup` (it installs nodejs and npm)", pytrace=False)
    if not (JS / "node_modules" / "@sigstore" / "verify").is_dir():
        pytest.fail(
            f"{JS / 'node_modules'} is missing: run `make setup` "
            "(or `npm ci --no-audit --no-fund --prefix tests/js`)",
            pytrace=False,
        )
    return path


def _verify(node: str, bundle: bytes, public_key: ec.EllipticCurvePublicKey, tmp_path: Path) -> Verdict:
    bundle_file, key_file = tmp_path / "evidence.sigstore.json", tmp_path / "key.pub"
    bundle_file.write_bytes(bundle)
    key_file.write_bytes(public_pem(public_key))
    done = subprocess.run(
        [node, str(VERIFY), str(bundle_file), str(key_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stderr == ""
    return Verdict(done.returncode, done.stdout)


def _statement() -> bytes:
    """A real in-toto Statement v1, as canonical JSON (RFC 8785)."""
    statement: dict[str, Any] = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [
            {"name": "registry.example.com/shop/web", "digest": {"sha256": "a1" * 32}},
            {"name": "registry.example.com/shop/worker", "digest": {"sha256": "b2" * 32}},
        ],
        "predicateType": "https://stella.dev/attestations/evidence/v1",
        "predicate": {
            "type": "release_decision",
            "tenant": "shop",
            "environment": "prod",
            "promotion": {"id": "shop-1.4.0--prod", "reason": "fixes checkout rounding \u2713"},
            "decision": {"result": "allow", "gates": [], "reasons": []},
            "decidedAt": "2026-03-01T12:00:00Z",
            "previous": None,
        },
    }
    data: bytes = rfc8785.dumps(statement)
    return data


def _altered(bundle: bytes, change: Any) -> bytes:
    doc = json.loads(bundle)
    change(doc)
    return json.dumps(doc).encode()


KEY = ec.generate_private_key(ec.SECP256R1())
OTHER = ec.generate_private_key(ec.SECP256R1())


def test_signed_statement_verifies(node: str, tmp_path: Path) -> None:
    bundle = KeySigner(KEY).sign(_statement())
    assert _verify(node, bundle, KEY.public_key(), tmp_path) == Verdict(0, "OK\n")


def test_tampered_payload_fails(node: str, tmp_path: Path) -> None:
    def tamper(doc: dict[str, Any]) -> None:
        payload = base64.b64decode(doc["dsseEnvelope"]["payload"]).replace(b'"allow"', b'"deny!"')
        doc["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()

    bundle = _altered(KeySigner(KEY).sign(_statement()), tamper)
    assert _verify(node, bundle, KEY.public_key(), tmp_path) == Verdict(
        1, "SIGNATURE_ERROR: signature verification failed\n"
    )


def test_wrong_key_fails(node: str, tmp_path: Path) -> None:
    # sigstore-js looks the key up by the bundle's hint: another key is simply not found...
    bundle = KeySigner(KEY).sign(_statement())
    assert _verify(node, bundle, OTHER.public_key(), tmp_path) == Verdict(
        1, f"PUBLIC_KEY_ERROR: key not found: {key_hint(KEY.public_key())}\n"
    )

    # ...and with the hint forged to name the other key, its signature check fails.
    def forge(doc: dict[str, Any]) -> None:
        doc["verificationMaterial"]["publicKey"]["hint"] = key_hint(OTHER.public_key())

    assert _verify(node, _altered(bundle, forge), OTHER.public_key(), tmp_path) == Verdict(
        1, "SIGNATURE_ERROR: signature verification failed\n"
    )
