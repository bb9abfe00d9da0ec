"""Keyless signing end to end, with no internet: sign against a Sigstore stand-in, verify with no server.

The stand-in (`tests/support/sigstore_mock.py`) runs Fulcio and Rekor from `@sigstore/mock` on 127.0.0.1.
The real `keyless` plugin signs through sigstore-python (ephemeral key, Fulcio certificate, Rekor entry);
then the server is stopped, and every bundle is verified offline against the stand-in's trusted root by
`verify_keyless` (sigstore-python's Verifier) and by an independent verifier, `@sigstore/verify`.
Needs Node and `tests/js/node_modules` (`make setup`); without them these tests fail, they never skip.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric import ec
from stella_sigstore.keyless import (
    TRUST_CONFIG_ENV,
    KeylessIdentity,
    KeylessPolicy,
    VerifiedKeyless,
    keyless,
    verify_keyless,
    witness,
    witness_path,
)

from reconciler.api import (
    IN_TOTO_PAYLOAD_TYPE,
    BundleError,
    InvalidInput,
    Transient,
    TrustedKeys,
    verify_bundle,
)
from reconciler.sign import KeySigner, public_pem
from tests.support.sigstore_mock import (
    JS,
    MockSigstore,
    MockUnavailable,
    dummy_token,
    node_binary,
    start_mock_sigstore,
)

SAN = "https://ci.example.com/shop/release-pipeline@refs/heads/main"
ISSUER = "https://issuer.ci.example.com"
OTHER_SAN = "https://ci.example.com/shop/other-pipeline@refs/heads/main"
SOURCE = "evidence/x.keyless.sigstore.json"
KEY = ec.generate_private_key(ec.SECP256R1())


def _statement(decision: str) -> bytes:
    """An in-toto Statement v1 as canonical JSON, with non-ASCII text: re-serialising would show."""
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
            "decision": {"result": decision, "gates": [], "reasons": []},
            "decidedAt": "2026-03-01T12:00:00Z",
            "previous": None,
        },
    }
    data: bytes = rfc8785.dumps(statement)
    return data


STATEMENT = _statement("allow")
KEY_STATEMENT = _statement("deny")


def _policy(*identities: tuple[str, str]) -> KeylessPolicy:
    return KeylessPolicy(
        apiVersion="stella/v1",
        kind="KeylessPolicy",
        trustedRoot="trust/sigstore/trusted_root.json",
        identities=[KeylessIdentity(san=san, issuer=issuer) for san, issuer in identities],
    )


POLICY = _policy((SAN, ISSUER))


@dataclass(frozen=True)
class Signed:
    """What was signed while the stand-in ran; it is stopped by the time tests see this."""

    server: MockSigstore
    started: datetime
    keyless_bundle: bytes
    key_bundle: bytes
    witness_bundle: bytes
    trusted_root: bytes


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Signed:
    started = datetime.now(UTC).replace(microsecond=0)
    try:
        server = start_mock_sigstore(tmp_path_factory.mktemp("sigstore"))
    except MockUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        environ = {"SIGSTORE_ID_TOKEN": dummy_token(SAN, ISSUER), TRUST_CONFIG_ENV: str(server.trust_config)}
        signer = keyless.open("env:SIGSTORE_ID_TOKEN", environ)
        keyless_bundle = signer.sign(STATEMENT)
        key_bundle = KeySigner(KEY).sign(KEY_STATEMENT)  # evidence signed offline ...
        witness_bundle = witness(KEY_STATEMENT, signer)  # ... and witnessed later
        trusted_root = server.trusted_root
    finally:
        server.stop()
    return Signed(server, started, keyless_bundle, key_bundle, witness_bundle, trusted_root)


def _payload_field(bundle: bytes) -> str:
    field: str = json.loads(bundle)["dsseEnvelope"]["payload"]
    return field


def test_the_stand_in_is_gone_before_anything_is_verified(signed: Signed) -> None:
    assert signed.server.process.returncode is not None
    port = urlsplit(signed.server.url).port
    assert port is not None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_the_bundle_is_a_keyless_dsse_bundle_over_the_exact_bytes(signed: Signed) -> None:
    doc = json.loads(signed.keyless_bundle)
    assert doc["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    material = doc["verificationMaterial"]
    assert set(material) == {"certificate", "tlogEntries", "timestampVerificationData"}
    assert material["timestampVerificationData"] == {"rfc3161Timestamps": []}  # no TSA: the log's time
    (entry,) = material["tlogEntries"]
    assert entry["kindVersion"] == {"kind": "dsse", "version": "0.0.1"}
    envelope = doc["dsseEnvelope"]
    assert envelope["payloadType"] == IN_TOTO_PAYLOAD_TYPE
    assert len(envelope["signatures"]) == 1
    assert base64.b64decode(envelope["payload"]) == STATEMENT


def test_the_bundle_verifies_offline(signed: Signed) -> None:
    verified = verify_keyless(signed.keyless_bundle, STATEMENT, POLICY, signed.trusted_root, source=SOURCE)
    assert verified == VerifiedKeyless(
        payload=STATEMENT,
        payload_type=IN_TOTO_PAYLOAD_TYPE,
        identity=KeylessIdentity(san=SAN, issuer=ISSUER),
        log_index=int(
            json.loads(signed.keyless_bundle)["verificationMaterial"]["tlogEntries"][0]["logIndex"]
        ),
        integrated_time=verified.integrated_time,
    )
    assert verified.integrated_time is not None
    assert signed.started <= verified.integrated_time <= datetime.now(UTC) + timedelta(seconds=1)


def test_any_allowed_identity_will_do(signed: Signed) -> None:
    policy = _policy((OTHER_SAN, ISSUER), (SAN, ISSUER))
    verified = verify_keyless(signed.keyless_bundle, STATEMENT, policy, signed.trusted_root, source=SOURCE)
    assert verified.identity == KeylessIdentity(san=SAN, issuer=ISSUER)


@pytest.mark.parametrize(
    "allowed",
    [
        [(OTHER_SAN, ISSUER)],
        [(SAN, "https://token.actions.githubusercontent.com")],
        [(OTHER_SAN, ISSUER), (SAN, "https://accounts.google.com")],
    ],
    ids=["wrong-san", "wrong-issuer", "neither-of-two"],
)
def test_an_identity_the_policy_does_not_allow_is_rejected(
    signed: Signed, allowed: list[tuple[str, str]]
) -> None:
    with pytest.raises(BundleError) as caught:
        verify_keyless(
            signed.keyless_bundle, STATEMENT, _policy(*allowed), signed.trusted_root, source=SOURCE
        )
    listed = ", ".join(f"{san} (issuer {issuer})" for san, issuer in allowed)
    assert (caught.value.reason, str(caught.value)) == (
        "identity",
        f"{SOURCE}: identity not allowed: the certificate names {SAN} (issuer {ISSUER}), which "
        f"trust/keyless.yaml does not allow (allowed: {listed})",
    )


def _tampered(bundle: bytes) -> bytes:
    doc = json.loads(bundle)
    payload = base64.b64decode(doc["dsseEnvelope"]["payload"]).replace(b'"allow"', b'"deny!"')
    doc["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    return json.dumps(doc).encode()


def test_a_tampered_payload_is_rejected(signed: Signed) -> None:
    tampered = _tampered(signed.keyless_bundle)
    forged = base64.b64decode(_payload_field(tampered))
    with pytest.raises(BundleError) as caught:
        verify_keyless(tampered, forged, POLICY, signed.trusted_root, source=SOURCE)
    assert (caught.value.reason, str(caught.value)) == (
        "not-verified",
        f"{SOURCE}: keyless verification failed: DSSE: invalid signature",
    )


def test_a_bundle_over_other_bytes_is_rejected(signed: Signed) -> None:
    with pytest.raises(BundleError) as caught:
        verify_keyless(signed.keyless_bundle, KEY_STATEMENT, POLICY, signed.trusted_root, source=SOURCE)
    assert (caught.value.reason, str(caught.value)) == (
        "payload-mismatch",
        f"{SOURCE}: the bundle signs other bytes (sha256 {hashlib.sha256(STATEMENT).hexdigest()}) than the "
        f"statement (sha256 {hashlib.sha256(KEY_STATEMENT).hexdigest()})",
    )


def test_another_instance_root_does_not_verify(
    signed: Signed, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = start_mock_sigstore(tmp_path_factory.mktemp("other-sigstore"))
    try:
        other_root = other.trusted_root
    finally:
        other.stop()
    with pytest.raises(BundleError) as caught:
        verify_keyless(signed.keyless_bundle, STATEMENT, POLICY, other_root, source=SOURCE)
    assert caught.value.reason == "not-verified"


def test_a_witness_signs_the_same_bytes_as_the_key_bundle(signed: Signed) -> None:
    keys = TrustedKeys.from_files([("trust/evidence-keys/ci.pub", public_pem(KEY.public_key()))])
    by_key = verify_bundle(signed.key_bundle, keys, source="evidence/x.sigstore.json")
    by_witness = verify_keyless(
        signed.witness_bundle, KEY_STATEMENT, POLICY, signed.trusted_root, source=SOURCE
    )
    assert by_key.payload == by_witness.payload == KEY_STATEMENT
    assert _payload_field(signed.key_bundle) == _payload_field(signed.witness_bundle)
    hex_id = hashlib.sha256(KEY_STATEMENT).hexdigest()
    assert witness_path(hex_id) == f"evidence/{hex_id}.keyless.sigstore.json"


def test_witnessing_with_a_key_signer_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        witness(KEY_STATEMENT, KeySigner(KEY))
    assert str(caught.value) == (
        "witness: the signer made a key-based bundle; witnessing needs the keyless signer "
        "(plugin keyless), which adds a certificate and a transparency-log entry"
    )


def test_signing_fails_transiently_when_the_services_are_down(signed: Signed) -> None:
    environ = {
        "SIGSTORE_ID_TOKEN": dummy_token(SAN, ISSUER),
        TRUST_CONFIG_ENV: str(signed.server.trust_config),
    }
    signer = keyless.open("env:SIGSTORE_ID_TOKEN", environ)
    with pytest.raises(Transient) as caught:
        signer.sign(STATEMENT)
    assert str(caught.value).startswith(
        "keyless signing: getting a signing certificate from Fulcio failed: ConnectionError: "
    )
    assert caught.value.exit_code == 3


# --- the independent verifier -------------------------------------------------------------------

# @sigstore/verify with the trusted root and default thresholds (1 tlog entry, 1 SCT, 1 verified time),
# and the SAN/issuer policy. Prints OK, or `<error code>: <message>` and exits 1.
VERIFY_JS = """
const fs = require('node:fs');
const { TrustedRoot } = require('@sigstore/protobuf-specs');
const { bundleFromJSON } = require('@sigstore/bundle');
const { Verifier, toSignedEntity, toTrustMaterial } = require('@sigstore/verify');
const [bundlePath, rootPath, san, issuer] = process.argv.slice(1);
try {
  const root = TrustedRoot.fromJSON(JSON.parse(fs.readFileSync(rootPath, 'utf8')));
  const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(bundlePath, 'utf8')));
  const policy = { subjectAlternativeName: san, extensions: { issuer } };
  new Verifier(toTrustMaterial(root)).verify(toSignedEntity(bundle), policy);
  process.stdout.write('OK\\n');
} catch (err) {
  process.stdout.write(`${err.code || err.name}: ${err.message}\\n`);
  process.exitCode = 1;
}
"""


@pytest.fixture
def js_verify(tmp_path: Path) -> Callable[[bytes, bytes, str], tuple[int, str]]:
    try:
        node = node_binary()
    except MockUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)

    def run(bundle: bytes, trusted_root: bytes, san: str) -> tuple[int, str]:
        (tmp_path / "bundle.json").write_bytes(bundle)
        (tmp_path / "trusted_root.json").write_bytes(trusted_root)
        done = subprocess.run(
            [
                node,
                "-e",
                VERIFY_JS,
                str(tmp_path / "bundle.json"),
                str(tmp_path / "trusted_root.json"),
                san,
                ISSUER,
            ],
            cwd=JS,  # resolves tests/js/node_modules
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.stderr == ""
        return done.returncode, done.stdout

    return run


def test_sigstore_js_verifies_the_keyless_and_witness_bundles(
    signed: Signed, js_verify: Callable[[bytes, bytes, str], tuple[int, str]]
) -> None:
    assert js_verify(signed.keyless_bundle, signed.trusted_root, SAN) == (0, "OK\n")
    assert js_verify(signed.witness_bundle, signed.trusted_root, SAN) == (0, "OK\n")
    assert js_verify(signed.keyless_bundle, signed.trusted_root, OTHER_SAN) == (
        1,
        f"UNTRUSTED_SIGNER_ERROR: certificate identity error - expected {OTHER_SAN}, got {SAN}\n",
    )
    assert js_verify(_tampered(signed.keyless_bundle), signed.trusted_root, SAN)[0] == 1
