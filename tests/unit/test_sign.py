"""reconciler.sign: DSSE PAE, the key-based bundle `KeySigner` writes, `verify_bundle`, the `key` plugin.

Signatures are real (cryptography, P-256); the real-world check uses the npm publish attestation in
../shared/testdata/sigstore/, unedited (altered variants are made in memory).
"""

from __future__ import annotations

import base64
import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.discover import check
from reconciler.errors import InvalidInput, StellaError
from reconciler.protocols import IN_TOTO_PAYLOAD_TYPE, Signer, SignerPlugin
from reconciler.sign import (
    BUNDLE_MEDIA_TYPE,
    BundleError,
    KeySigner,
    TrustedKey,
    TrustedKeys,
    VerifiedBundle,
    generate_key,
    key_hint,
    key_signer_plugin,
    pae,
    public_pem,
    verify_bundle,
)

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "sigstore"
NPM_BUNDLE = TESTDATA / "npm-sigstore-1.3.0-publish.sigstore.json"
NPM_KEY = TESTDATA / "npm-publish-key.pub"
NPM_HINT_LABEL = "SHA256:jl3bwswu80PjjokCgh0o2w5c2U4LhQAE57gj9cz1kzA"

SRC = "evidence/abc.sigstore.json"
KEY_A = ec.generate_private_key(ec.SECP256R1())
KEY_B = ec.generate_private_key(ec.SECP256R1())
SIGNER = KeySigner(KEY_A)
HINT_A = key_hint(KEY_A.public_key())
HINT_B = key_hint(KEY_B.public_key())
TRUST_A = TrustedKeys.from_files([("trust/evidence-keys/ci.pub", public_pem(KEY_A.public_key()))])
TRUST_B = TrustedKeys.from_files([("trust/evidence-keys/other.pub", public_pem(KEY_B.public_key()))])

STATEMENT = rfc8785.dumps(
    {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "registry.example.com/shop/web", "digest": {"sha256": "ab" * 32}}],
        "predicateType": "https://stella.dev/attestations/evidence/v1",
        "predicate": {"type": "release_decision", "tenant": "shop", "decision": {"result": "allow"}},
    }
)


def _doc(bundle: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(bundle)
    return doc


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def _altered(bundle: bytes, change: Any) -> bytes:
    doc = _doc(bundle)
    change(doc)
    return _dump(doc)


# --- PAE and the bundle shape ---------------------------------------------------------------------


def test_pae_is_dsse_v1() -> None:
    # The example of the DSSE v1 protocol specification.
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("", b"") == b"DSSEv1 0  0 "
    # Lengths count bytes, not characters.
    assert pae("t\u00e9", b"\x00\xff") == b"DSSEv1 3 t\xc3\xa9 2 \x00\xff"


def test_bundle_shape() -> None:
    bundle = SIGNER.sign(STATEMENT)
    doc = _doc(bundle)
    sig = base64.b64decode(doc["dsseEnvelope"]["signatures"][0]["sig"], validate=True)
    assert doc == {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": HINT_A}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(STATEMENT).decode(),
            "payloadType": "application/vnd.in-toto+json",
            "signatures": [{"sig": doc["dsseEnvelope"]["signatures"][0]["sig"], "keyid": ""}],
        },
    }
    assert doc["mediaType"] == BUNDLE_MEDIA_TYPE
    assert SIGNER.hint == HINT_A
    # The signature is DER ECDSA-SHA256 over the PAE, checked here without verify_bundle.
    KEY_A.public_key().verify(sig, pae(IN_TOTO_PAYLOAD_TYPE, STATEMENT), ec.ECDSA(hashes.SHA256()))
    # Serialisation: sorted keys, compact, one trailing newline, ASCII.
    assert bundle == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"
    assert bundle.startswith(b'{"dsseEnvelope":{"payload":"') and bundle.count(b"\n") == 1


def test_bundles_over_the_same_payload_differ_only_in_the_signature() -> None:
    first, second = _doc(SIGNER.sign(STATEMENT)), _doc(SIGNER.sign(STATEMENT))
    sig_1 = first["dsseEnvelope"]["signatures"][0].pop("sig")
    sig_2 = second["dsseEnvelope"]["signatures"][0].pop("sig")
    assert first == second
    assert sig_1 != sig_2  # ECDSA is randomised


def test_payload_bytes_are_signed_exactly_as_given() -> None:
    odd = b'{ "b":1,\n  "a" : "\\u00e9" }  '  # not canonical, and must stay so
    result = verify_bundle(SIGNER.sign(odd, "text/plain"), TRUST_A, source=SRC)
    assert result == VerifiedBundle(odd, "text/plain", HINT_A, "trust/evidence-keys/ci.pub")


@settings(max_examples=25, deadline=None)
@given(payload=st.binary(max_size=300), payload_type=st.text(min_size=1, max_size=40))
def test_any_payload_round_trips(payload: bytes, payload_type: str) -> None:
    result = verify_bundle(SIGNER.sign(payload, payload_type), TRUST_A, source=SRC)
    assert (result.payload, result.payload_type) == (payload, payload_type)


def test_key_signer_satisfies_signer_and_rejects_other_curves() -> None:
    assert isinstance(SIGNER, Signer)
    with pytest.raises(InvalidInput) as err:
        KeySigner(ec.generate_private_key(ec.SECP384R1()))
    assert str(err.value) == "signing key: evidence keys must be ECDSA P-256, not secp384r1"


# --- verify_bundle --------------------------------------------------------------------------------


def test_round_trip() -> None:
    assert verify_bundle(SIGNER.sign(STATEMENT), TRUST_A, source=SRC) == VerifiedBundle(
        payload=STATEMENT,
        payload_type=IN_TOTO_PAYLOAD_TYPE,
        hint=HINT_A,
        source="trust/evidence-keys/ci.pub",
    )


def test_the_signature_decides_not_the_hint() -> None:
    both = TrustedKeys([*TRUST_B.values(), *TRUST_A.values()])
    good = SIGNER.sign(STATEMENT)

    def set_hint(value: str | None) -> Any:
        def change(doc: dict[str, Any]) -> None:
            if value is None:
                del doc["verificationMaterial"]["publicKey"]["hint"]
            else:
                doc["verificationMaterial"]["publicKey"]["hint"] = value

        return change

    expected = VerifiedBundle(STATEMENT, IN_TOTO_PAYLOAD_TYPE, HINT_A, "trust/evidence-keys/ci.pub")
    for hint in ("bm90IGEga2V5", HINT_B, "", None):  # unknown, another trusted key's, empty, absent
        bundle = _altered(good, set_hint(hint))
        assert verify_bundle(bundle, both, source=SRC) == expected, hint
        assert verify_bundle(bundle, TRUST_A, source=SRC) == expected, hint


def _tamper_payload(doc: dict[str, Any]) -> None:
    payload = base64.b64decode(doc["dsseEnvelope"]["payload"]).replace(b"allow", b"deny!")
    doc["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()


def _tamper_type(doc: dict[str, Any]) -> None:
    doc["dsseEnvelope"]["payloadType"] = "application/json"


def _forge_hint_b(doc: dict[str, Any]) -> None:
    doc["verificationMaterial"]["publicKey"]["hint"] = HINT_B


BAD_SIGNATURE_A = (
    f"{SRC}: bad signature: it does not verify with the key its hint names (trust/evidence-keys/ci.pub) "
    "nor with any other of the 1 trusted key(s)"
)
UNKNOWN_A = (
    f"{SRC}: unknown key: the hint '{HINT_A}' names no trusted key, and the signature verifies with none "
    "of the 1 trusted key(s)"
)


@pytest.mark.parametrize(
    ("change", "trust", "reason", "message"),
    [
        (_tamper_payload, TRUST_A, "bad-signature", BAD_SIGNATURE_A),
        (_tamper_type, TRUST_A, "bad-signature", BAD_SIGNATURE_A),
        (None, TRUST_B, "unknown-key", UNKNOWN_A),
        (
            _forge_hint_b,
            TRUST_B,
            "bad-signature",
            f"{SRC}: bad signature: it does not verify with the key its hint names "
            "(trust/evidence-keys/other.pub) nor with any other of the 1 trusted key(s)",
        ),
        (
            None,
            TrustedKeys(),
            "no-trusted-keys",
            f"{SRC}: no trusted evidence keys to verify the signature with",
        ),
    ],
    ids=["tampered-payload", "tampered-payload-type", "wrong-key", "wrong-key-forged-hint", "no-keys"],
)
def test_signature_failures(change: Any, trust: TrustedKeys, reason: str, message: str) -> None:
    bundle = SIGNER.sign(STATEMENT) if change is None else _altered(SIGNER.sign(STATEMENT), change)
    with pytest.raises(BundleError) as err:
        verify_bundle(bundle, trust, source=SRC)
    assert (err.value.reason, str(err.value)) == (reason, message)
    assert isinstance(err.value, StellaError) and err.value.exit_code == 1


def _two_signatures(doc: dict[str, Any]) -> None:
    doc["dsseEnvelope"]["signatures"] *= 2


def _no_signatures(doc: dict[str, Any]) -> None:
    doc["dsseEnvelope"]["signatures"] = []


def _media_type(value: str) -> Any:
    return lambda doc: doc.update(mediaType=value)


def _keyless(doc: dict[str, Any]) -> None:
    doc["verificationMaterial"] = {"certificate": {"rawBytes": "MAA="}, "tlogEntries": []}


def _message_signature(doc: dict[str, Any]) -> None:
    doc["messageSignature"] = {"signature": doc.pop("dsseEnvelope")["signatures"][0]["sig"]}


def _payload(value: Any) -> Any:
    return lambda doc: doc["dsseEnvelope"].update(payload=value)


def _sig(value: Any) -> Any:
    return lambda doc: doc["dsseEnvelope"]["signatures"][0].update(sig=value)


MALFORMED = f"{SRC}: malformed Sigstore bundle: "


@pytest.mark.parametrize(
    ("bundle", "reason", "message"),
    [
        (b"not json", "malformed", MALFORMED + "not JSON: Expecting value: line 1 column 1 (char 0)"),
        (
            b"\xff\xfe{",
            "malformed",
            MALFORMED + "not JSON: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte",
        ),
        (b"[]", "malformed", MALFORMED + "the bundle must be a JSON object"),
        (_two_signatures, "malformed", MALFORMED + "expected exactly 1 DSSE signature, found 2"),
        (_no_signatures, "malformed", MALFORMED + "expected exactly 1 DSSE signature, found 0"),
        (
            _payload("not base64!"),
            "malformed",
            MALFORMED + "dsseEnvelope.payload is not valid base64",
        ),
        (_payload(None), "malformed", MALFORMED + "dsseEnvelope.payload must be a base64 string"),
        (_sig(7), "malformed", MALFORMED + "dsseEnvelope.signatures[0].sig must be a base64 string"),
        (
            _media_type("application/vnd.dev.sigstore.bundle.v0.4+json"),
            "unsupported",
            f"{SRC}: unsupported bundle mediaType 'application/vnd.dev.sigstore.bundle.v0.4+json' "
            "(expected 'application/vnd.dev.sigstore.bundle.v0.3+json')",
        ),
        (
            _keyless,
            "unsupported",
            f"{SRC}: not a key-based bundle (verificationMaterial has no publicKey)",
        ),
        (_message_signature, "unsupported", f"{SRC}: not a DSSE bundle (it has no dsseEnvelope)"),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "not-an-object",
        "two-signatures",
        "no-signature",
        "payload-not-base64",
        "payload-missing",
        "sig-not-a-string",
        "media-type",
        "keyless",
        "message-signature",
    ],
)
def test_malformed_bundles(bundle: Any, reason: str, message: str) -> None:
    data = bundle if isinstance(bundle, bytes) else _altered(SIGNER.sign(STATEMENT), bundle)
    with pytest.raises(BundleError) as err:
        verify_bundle(data, TRUST_A, source=SRC)
    assert (err.value.reason, str(err.value)) == (reason, message)


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
    ],
)
def test_older_media_types_are_read(media_type: str) -> None:
    bundle = _altered(SIGNER.sign(STATEMENT), _media_type(media_type))
    assert verify_bundle(bundle, TRUST_A, source=SRC).payload == STATEMENT


# --- TrustedKeys ----------------------------------------------------------------------------------


def test_trusted_keys_map_hints_to_source_and_key() -> None:
    pem_a, pem_b = public_pem(KEY_A.public_key()), public_pem(KEY_B.public_key())
    keys = TrustedKeys.from_files([("a.pub", pem_a), ("b.pub", pem_b), ("a-again.pub", pem_a)])
    assert list(keys) == [HINT_A, HINT_B]
    assert {h: k.source for h, k in keys.items()} == {HINT_A: "a.pub", HINT_B: "b.pub"}
    assert isinstance(keys[HINT_A], TrustedKey) and keys[HINT_A].hint == HINT_A
    assert keys[HINT_B].public_key.public_numbers() == KEY_B.public_key().public_numbers()


def test_trusted_keys_reject_bad_files() -> None:
    with pytest.raises(InvalidInput) as err:
        TrustedKeys.from_files([("trust/evidence-keys/x.pub", b"junk")])
    assert str(err.value).startswith("trust/evidence-keys/x.pub: not a PEM public key")
    p384 = public_pem(ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(InvalidInput) as err:
        TrustedKeys.from_files([("trust/evidence-keys/y.pub", p384)])
    assert str(err.value) == "trust/evidence-keys/y.pub: evidence keys must be ECDSA P-256"


# --- a real-world bundle (npm publish attestation, signed by the npm registry key) -----------------


def test_real_npm_publish_bundle_verifies() -> None:
    raw, pem = NPM_BUNDLE.read_bytes(), NPM_KEY.read_bytes()
    keys = TrustedKeys.from_files([(str(NPM_KEY), pem)])
    npm_key = serialization.load_pem_public_key(pem)
    assert isinstance(npm_key, ec.EllipticCurvePublicKey)
    npm_hint = key_hint(npm_key)
    assert npm_hint != NPM_HINT_LABEL  # npm's hint is a label: found by trying the keys, not by hint
    result = verify_bundle(raw, keys, source=str(NPM_BUNDLE))
    assert (result.payload_type, result.hint, result.source) == (IN_TOTO_PAYLOAD_TYPE, npm_hint, str(NPM_KEY))
    statement = json.loads(result.payload)
    assert statement["_type"] == "https://in-toto.io/Statement/v0.1"
    assert statement["subject"][0]["name"] == "pkg:npm/sigstore@1.3.0"

    # The same check with only pae() and cryptography, straight from the file.
    envelope = json.loads(raw)["dsseEnvelope"]
    npm_key.verify(
        base64.b64decode(envelope["signatures"][0]["sig"]),
        pae(envelope["payloadType"], base64.b64decode(envelope["payload"])),
        ec.ECDSA(hashes.SHA256()),
    )


def test_real_npm_publish_bundle_with_a_modified_payload_fails() -> None:
    raw = NPM_BUNDLE.read_bytes()
    keys = TrustedKeys.from_files([(str(NPM_KEY), NPM_KEY.read_bytes())])

    def bump_version(doc: dict[str, Any]) -> None:
        payload = base64.b64decode(doc["dsseEnvelope"]["payload"])
        assert payload.count(b'"version":"1.3.0"') == 1
        doc["dsseEnvelope"]["payload"] = base64.b64encode(
            payload.replace(b'"version":"1.3.0"', b'"version":"1.3.1"')
        ).decode()

    with pytest.raises(BundleError) as err:
        verify_bundle(_altered(raw, bump_version), keys, source="npm.sigstore.json")
    assert (err.value.reason, str(err.value)) == (
        "unknown-key",
        f"npm.sigstore.json: unknown key: the hint '{NPM_HINT_LABEL}' names no trusted key, and the "
        "signature verifies with none of the 1 trusted key(s)",
    )
    with pytest.raises(BundleError) as err:  # the unmodified bundle, but not the npm key
        verify_bundle(raw, TRUST_A, source="npm.sigstore.json")
    assert err.value.reason == "unknown-key"


# --- the `key` signer plugin ------------------------------------------------------------------------


def test_plugin_manifest_and_entry_point() -> None:
    manifest = key_signer_plugin.manifest
    assert (manifest.name, manifest.kinds, manifest.network) == ("key", ("signer",), False)
    assert isinstance(key_signer_plugin, SignerPlugin)
    assert check(key_signer_plugin, SignerPlugin, offline=True) is None
    (ep,) = [ep for ep in entry_points(group="stella.signers") if ep.name == "key"]
    assert ep.value == "reconciler.sign:key_signer_plugin"
    assert ep.load() is key_signer_plugin


def test_plugin_opens_keys_from_env_and_file(tmp_path: Path) -> None:
    key = tmp_path / "evidence.pem"
    hint = generate_key(key)
    for ref, environ in [
        ("env:STELLA_SIGNING_KEY", {"STELLA_SIGNING_KEY": str(key)}),
        (f"file:{key}", {}),
    ]:
        signer = key_signer_plugin.open(ref, environ)
        assert signer.hint == hint, ref
        trust = TrustedKeys.from_files([("evidence.pem.pub", (tmp_path / "evidence.pem.pub").read_bytes())])
        assert verify_bundle(signer.sign(STATEMENT), trust, source=SRC).hint == hint


def test_plugin_errors_say_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    pem = KEY_A.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    cases = [
        (
            "env:STELLA_SIGNING_KEY",
            {},
            "environment variable STELLA_SIGNING_KEY is not set: it must hold the path of the evidence "
            "signing key (a PEM file); create one with `stella keys generate PATH`, then "
            "`export STELLA_SIGNING_KEY=PATH`",
        ),
        (
            "env:STELLA_SIGNING_KEY",
            {"STELLA_SIGNING_KEY": str(missing)},
            f"{missing}: signing key not found (from environment variable STELLA_SIGNING_KEY); create one "
            f"with `stella keys generate {missing}` or point STELLA_SIGNING_KEY at an existing key",
        ),
        (
            "env:STELLA_SIGNING_KEY",
            {"STELLA_SIGNING_KEY": pem},
            "environment variable STELLA_SIGNING_KEY holds a PEM key; it must hold the path of the key "
            "file instead",
        ),
        (
            f"file:{missing}",
            {},
            f"{missing}: signing key not found (from file:{missing}); create one with "
            f"`stella keys generate {missing}`",
        ),
        (
            "vault:secret/stella",
            {},
            "signing key reference 'vault:secret/stella': expected env:NAME (a variable holding the path "
            "of a PEM key) or file:/path",
        ),
        (
            "env:",
            {},
            "signing key reference 'env:': expected env:NAME (a variable holding the path of a PEM key) "
            "or file:/path",
        ),
    ]
    for ref, environ, message in cases:
        with pytest.raises(InvalidInput) as err:
            key_signer_plugin.open(ref, environ)
        assert str(err.value) == message, ref
        assert "PRIVATE KEY" not in str(err.value)
    not_a_key = tmp_path / "junk.pem"
    not_a_key.write_text("junk")
    with pytest.raises(InvalidInput) as err:
        key_signer_plugin.open(f"file:{not_a_key}", {})
    assert str(err.value).startswith(f"{not_a_key}: not an unencrypted PEM private key")
