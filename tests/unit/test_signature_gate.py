"""The signature gates: bundles from the offline mirror, verified with allowed keys, bound to digests;
and, for `signature-registry`, OCI referrers read through the registries the core hands in.

Bundles are real: `reconciler.sign.KeySigner` over in-toto statements, written into a repository
directory read through `DirFiles`. The real-world check uses the npm publish attestation from
../shared/testdata/sigstore/, copied byte for byte (never edited): its signature verifies with the npm
key, but its statement is about an npm package, so it must not count for an image digest. Registries
are `reconciler.api.testing.MemoryRegistry` fakes given as `GateContext.registries` (tests/e2e has the
real registry).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric import ec
from stella_sigstore import __version__
from stella_sigstore import gate as gate_module
from stella_sigstore.gate import SignatureGate, signature, signature_registry

from reconciler.api import (
    Actor,
    Gate,
    GateContext,
    GateResult,
    GateStatus,
    ImageRef,
    PluginError,
    Registry,
    RegistryUnavailable,
    StellaError,
    parse,
)
from reconciler.api.testing import MemoryRegistry, by_host, gate_context
from reconciler.models import Environment, Promotion, ReleaseLock
from reconciler.sign import KeySigner, key_hint, load_public_key, public_pem
from tests.support.oci import DirFiles, sha256_digest

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "sigstore"
NPM_BUNDLE = (TESTDATA / "npm-sigstore-1.3.0-publish.sigstore.json").read_bytes()
NPM_KEY = (TESTDATA / "npm-publish-key.pub").read_bytes()

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
WEB = "sha256:" + "a1" * 32
WORKER = "sha256:" + "b2" * 32
OTHER = "sha256:" + "c3" * 32
WEB_IMAGE = "registry.example.com/shop/web"
WORKER_IMAGE = "registry.example.com/shop/worker"
WEB_DIR = "mirror/signatures/sha256-" + "a1" * 32
WORKER_DIR = "mirror/signatures/sha256-" + "b2" * 32

KEY_A = ec.generate_private_key(ec.SECP256R1())
KEY_B = ec.generate_private_key(ec.SECP256R1())
KEY_P384 = ec.generate_private_key(ec.SECP384R1())
HINT_A = key_hint(KEY_A.public_key())
HINT_B = key_hint(KEY_B.public_key())
CI_PUB = "trust/image-keys/ci.pub"
RELEASE_PUB = "trust/image-keys/release.pub"
NPM_PUB = "trust/image-keys/npm.pub"
HINT_NPM = key_hint(load_public_key(NPM_KEY, "npm-publish-key.pub"))
KEY_FILES = {
    CI_PUB: public_pem(KEY_A.public_key()),
    RELEASE_PUB: public_pem(KEY_B.public_key()),
    NPM_PUB: NPM_KEY,
}


def statement(*digests: str, kind: str = "https://in-toto.io/Statement/v1") -> bytes:
    """An in-toto statement over images with `digests`, as `cosign attest` makes (canonical JSON)."""
    return rfc8785.dumps(
        {
            "_type": kind,
            "subject": [
                {"name": f"image-{n}", "digest": {"sha256": d.removeprefix("sha256:")}}
                for n, d in enumerate(digests)
            ],
            "predicateType": "https://cosign.sigstore.dev/attestation/v1",
            "predicate": {"Data": "built by ci", "Timestamp": "2026-11-30T12:00:00Z"},
        }
    )


def tampered(bundle: bytes) -> bytes:
    """The same bundle and signature over a different payload (still about the same digest)."""
    doc = json.loads(bundle)
    payload = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    payload["predicate"]["Data"] = "built on a laptop"
    doc["dsseEnvelope"]["payload"] = base64.b64encode(rfc8785.dumps(payload)).decode()
    return json.dumps(doc).encode()


SIGNER_A, SIGNER_B = KeySigner(KEY_A), KeySigner(KEY_B)
WEB_BY_A = SIGNER_A.sign(statement(WEB))
WEB_BY_B = SIGNER_B.sign(statement(WEB))
WEB_V01_BY_A = SIGNER_A.sign(statement(WEB, kind="https://in-toto.io/Statement/v0.1"))
WORKER_BY_A = SIGNER_A.sign(statement(WORKER))
WORKER_BY_B = SIGNER_B.sign(statement(WORKER))
BOTH_BY_A = SIGNER_A.sign(statement(OTHER, WEB, WORKER))
OTHER_BY_A = SIGNER_A.sign(statement(OTHER))
WEB_TAMPERED = tampered(WEB_BY_A)
NOT_IN_TOTO = SIGNER_A.sign(b'{"hello":"world"}', "application/json")
NOT_A_STATEMENT = SIGNER_A.sign(rfc8785.dumps({"_type": "https://example.com/Other/v1", "subject": []}))


def sha(data: bytes) -> str:
    return sha256_digest(data).removeprefix("sha256:")


def context(options: Mapping[str, Any], files: DirFiles | None, *, only_web: bool = False) -> GateContext:
    components = {"web": {"image": WEB_IMAGE, "tag": "1.4.0", "digest": WEB}}
    if not only_web:
        components["worker"] = {"image": WORKER_IMAGE, "tag": "1.4.0", "digest": WORKER}
    return GateContext(
        now=NOW,
        promotion_id="shop-1.4.0--prod",
        promotion=Promotion.model_validate(
            {"apiVersion": "stella/v1", "kind": "Promotion", "release": "shop-1.4.0", "environment": "prod"}
        ),
        release=ReleaseLock.model_validate(
            {"name": "shop-1.4.0", "id": "sha256:" + "1" * 64, "components": components}
        ),
        environment=Environment.model_validate(
            {"apiVersion": "stella/v1", "kind": "Environment", "name": "prod"}
        ),
        options=dict(options),
        requester=Actor(identity="dev@example.com", verified=True),
        files=files,
    )


# -- expected results --------------------------------------------------------------------------

KEYS_A = [{"path": CI_PUB, "hint": HINT_A}]
KEYS_AB = [{"path": CI_PUB, "hint": HINT_A}, {"path": RELEASE_PUB, "hint": HINT_B}]


def signed(digest: str, path: str, data: bytes, hint: str = HINT_A, key: str = CI_PUB) -> dict[str, object]:
    return {
        "digest": digest,
        "status": "signed",
        "bundle": path,
        "origin": "mirror",
        "sha256": sha(data),
        "key": hint,
        "keyPath": key,
    }


def rejected(digest: str, *bundles: tuple[str, bytes, str]) -> dict[str, object]:
    return {
        "digest": digest,
        "status": "invalid-signature",
        "rejected": [
            {"bundle": path, "sha256": sha(data), "reason": reason} for path, data, reason in bundles
        ],
        "rejectedCount": len(bundles),
    }


def unsigned(digest: str) -> dict[str, object]:
    return {"digest": digest, "status": "unsigned"}


def result(status: GateStatus, reason: str, message: str, **facts: Any) -> GateResult:
    return GateResult("signature", status, reason, message, facts=facts)


def unknown_key(path: str, hint: str, trusted: int = 1) -> str:
    return (
        f"{path}: unknown key: the hint {hint!r} names no trusted key, and the signature verifies "
        f"with none of the {trusted} trusted key(s)"
    )


WEB_PINNED = f"{WEB_IMAGE}@{WEB}"
WORKER_PINNED = f"{WORKER_IMAGE}@{WORKER}"
WEB_OK = f"{WEB_DIR}/ci.sigstore.json"
WORKER_OK = f"{WORKER_DIR}/ci.sigstore.json"


@dataclass(frozen=True)
class Row:
    files: Mapping[str, bytes]
    expected: GateResult
    options: Mapping[str, Any] = field(default_factory=lambda: {"keys": [CI_PUB]})
    only_web: bool = False


ROWS: dict[str, Row] = {
    "signed-with-an-allowed-key": Row(
        {WEB_OK: WEB_BY_A, WORKER_OK: WORKER_BY_A},
        result(
            "pass",
            "signed",
            f"all 2 component(s) signed by an allowed key: web ({WEB_OK}, key {CI_PUB}), "
            f"worker ({WORKER_OK}, key {CI_PUB})",
            keys=KEYS_A,
            components={
                "web": signed(WEB, WEB_OK, WEB_BY_A),
                "worker": signed(WORKER, WORKER_OK, WORKER_BY_A),
            },
        ),
    ),
    "each-signed-by-another-allowed-key": Row(
        {WEB_OK: WEB_BY_A, f"{WORKER_DIR}/release.sigstore.json": WORKER_BY_B},
        result(
            "pass",
            "signed",
            f"all 2 component(s) signed by an allowed key: web ({WEB_OK}, key {CI_PUB}), "
            f"worker ({WORKER_DIR}/release.sigstore.json, key {RELEASE_PUB})",
            keys=KEYS_AB,
            components={
                "web": signed(WEB, WEB_OK, WEB_BY_A),
                "worker": signed(
                    WORKER, f"{WORKER_DIR}/release.sigstore.json", WORKER_BY_B, HINT_B, RELEASE_PUB
                ),
            },
        ),
        options={"keys": [RELEASE_PUB, CI_PUB]},
    ),
    "one-statement-about-both-digests": Row(
        {f"{WEB_DIR}/both.sigstore.json": BOTH_BY_A, f"{WORKER_DIR}/both.sigstore.json": BOTH_BY_A},
        result(
            "pass",
            "signed",
            f"all 2 component(s) signed by an allowed key: web ({WEB_DIR}/both.sigstore.json, key {CI_PUB}), "
            f"worker ({WORKER_DIR}/both.sigstore.json, key {CI_PUB})",
            keys=KEYS_A,
            components={
                "web": signed(WEB, f"{WEB_DIR}/both.sigstore.json", BOTH_BY_A),
                "worker": signed(WORKER, f"{WORKER_DIR}/both.sigstore.json", BOTH_BY_A),
            },
        ),
    ),
    "in-toto-statement-v0.1": Row(
        {WEB_OK: WEB_V01_BY_A},
        result(
            "pass",
            "signed",
            f"all 1 component(s) signed by an allowed key: web ({WEB_OK}, key {CI_PUB})",
            keys=KEYS_A,
            components={"web": signed(WEB, WEB_OK, WEB_V01_BY_A)},
        ),
        only_web=True,
    ),
    "the-first-valid-bundle-by-name-counts": Row(
        {
            f"{WEB_DIR}/a-wrong-key.sigstore.json": WEB_BY_B,
            f"{WEB_DIR}/b-good.sigstore.json": WEB_BY_A,
            f"{WEB_DIR}/c-good-too.sigstore.json": WEB_V01_BY_A,
            f"{WEB_DIR}/notes.txt": b"not a bundle",
        },
        result(
            "pass",
            "signed",
            f"all 1 component(s) signed by an allowed key: web ({WEB_DIR}/b-good.sigstore.json, "
            f"key {CI_PUB})",
            keys=KEYS_A,
            components={"web": signed(WEB, f"{WEB_DIR}/b-good.sigstore.json", WEB_BY_A)},
        ),
        only_web=True,
    ),
    "wrong-key": Row(
        {f"{WEB_DIR}/release.sigstore.json": WEB_BY_B, WORKER_OK: WORKER_BY_A},
        result(
            "fail",
            "invalid-signature",
            f"1 of 2 component(s) not signed by an allowed key: web ({WEB_PINNED}): none of 1 signature "
            f"bundle(s) is valid: {unknown_key(f'{WEB_DIR}/release.sigstore.json', HINT_B)}",
            keys=KEYS_A,
            components={
                "web": rejected(WEB, (f"{WEB_DIR}/release.sigstore.json", WEB_BY_B, "unknown-key")),
                "worker": signed(WORKER, WORKER_OK, WORKER_BY_A),
            },
        ),
    ),
    "statement-for-another-digest": Row(
        {WEB_OK: OTHER_BY_A},
        result(
            "fail",
            "invalid-signature",
            f"1 of 1 component(s) not signed by an allowed key: web ({WEB_PINNED}): none of 1 signature "
            f"bundle(s) is valid: {WEB_OK}: subject mismatch: the signed statement is about "
            f"image-0 (sha256:c3c3c3c3c3c3…), not {WEB}",
            keys=KEYS_A,
            components={"web": rejected(WEB, (WEB_OK, OTHER_BY_A, "subject-mismatch"))},
        ),
        only_web=True,
    ),
    "tampered-bundle": Row(
        {WEB_OK: WEB_TAMPERED},
        result(
            "fail",
            "invalid-signature",
            f"1 of 1 component(s) not signed by an allowed key: web ({WEB_PINNED}): none of 1 signature "
            f"bundle(s) is valid: {WEB_OK}: bad signature: it does not verify with the key its hint names "
            f"({CI_PUB}) nor with any other of the 1 trusted key(s)",
            keys=KEYS_A,
            components={"web": rejected(WEB, (WEB_OK, WEB_TAMPERED, "bad-signature"))},
        ),
        only_web=True,
    ),
    "not-json-and-not-in-toto": Row(
        {
            f"{WEB_DIR}/a.sigstore.json": b"{not json",
            f"{WEB_DIR}/b.sigstore.json": NOT_IN_TOTO,
            f"{WEB_DIR}/c.sigstore.json": NOT_A_STATEMENT,
        },
        result(
            "fail",
            "invalid-signature",
            f"1 of 1 component(s) not signed by an allowed key: web ({WEB_PINNED}): none of 3 signature "
            f"bundle(s) is valid: {WEB_DIR}/a.sigstore.json: malformed Sigstore bundle: not JSON: "
            "Expecting property name enclosed in double quotes: line 1 column 2 (char 1) | "
            f"{WEB_DIR}/b.sigstore.json: the payload type is 'application/json', not "
            "'application/vnd.in-toto+json' | "
            f"{WEB_DIR}/c.sigstore.json: the signed payload is not an in-toto Statement "
            "(_type 'https://example.com/Other/v1')",
            keys=KEYS_A,
            components={
                "web": rejected(
                    WEB,
                    (f"{WEB_DIR}/a.sigstore.json", b"{not json", "malformed"),
                    (f"{WEB_DIR}/b.sigstore.json", NOT_IN_TOTO, "not-a-statement"),
                    (f"{WEB_DIR}/c.sigstore.json", NOT_A_STATEMENT, "not-a-statement"),
                )
            },
        ),
        only_web=True,
    ),
    "many-invalid-bundles-are-capped": Row(
        {f"{WEB_DIR}/{n}.sigstore.json": WEB_BY_B for n in range(5)},
        result(
            "fail",
            "invalid-signature",
            f"1 of 1 component(s) not signed by an allowed key: web ({WEB_PINNED}): none of 5 signature "
            "bundle(s) is valid: "
            + " | ".join(unknown_key(f"{WEB_DIR}/{n}.sigstore.json", HINT_B) for n in range(3))
            + " | and 2 more",
            keys=KEYS_A,
            components={
                "web": rejected(
                    WEB, *((f"{WEB_DIR}/{n}.sigstore.json", WEB_BY_B, "unknown-key") for n in range(5))
                )
            },
        ),
        only_web=True,
    ),
    "no-bundles": Row(
        {},
        result(
            "fail",
            "unsigned",
            f"2 of 2 component(s) not signed by an allowed key: web ({WEB_PINNED}) is unsigned: no bundle "
            f"in {WEB_DIR}/; worker ({WORKER_PINNED}) is unsigned: no bundle in {WORKER_DIR}/",
            keys=KEYS_A,
            components={"web": unsigned(WEB), "worker": unsigned(WORKER)},
        ),
    ),
    "two-components-one-unsigned": Row(
        {WEB_OK: WEB_BY_A, f"{WORKER_DIR}/README": b"bundles go here\n"},
        result(
            "fail",
            "unsigned",
            f"1 of 2 component(s) not signed by an allowed key: worker ({WORKER_PINNED}) is unsigned: "
            f"no bundle in {WORKER_DIR}/",
            keys=KEYS_A,
            components={"web": signed(WEB, WEB_OK, WEB_BY_A), "worker": unsigned(WORKER)},
        ),
    ),
    "invalid-wins-over-unsigned-as-reason": Row(
        {f"{WORKER_DIR}/x.sigstore.json": WEB_BY_A},
        result(
            "fail",
            "invalid-signature",
            f"2 of 2 component(s) not signed by an allowed key: web ({WEB_PINNED}) is unsigned: no bundle "
            f"in {WEB_DIR}/; worker ({WORKER_PINNED}): none of 1 signature bundle(s) is valid: "
            f"{WORKER_DIR}/x.sigstore.json: subject mismatch: the signed statement is about "
            f"image-0 (sha256:a1a1a1a1a1a1…), not {WORKER}",
            keys=KEYS_A,
            components={
                "web": unsigned(WEB),
                "worker": rejected(WORKER, (f"{WORKER_DIR}/x.sigstore.json", WEB_BY_A, "subject-mismatch")),
            },
        ),
    ),
    "real-npm-publish-bundle-is-about-another-subject": Row(
        {f"{WEB_DIR}/npm-publish.sigstore.json": NPM_BUNDLE},
        result(
            "fail",
            "invalid-signature",
            f"1 of 1 component(s) not signed by an allowed key: web ({WEB_PINNED}): none of 1 signature "
            f"bundle(s) is valid: {WEB_DIR}/npm-publish.sigstore.json: subject mismatch: the signed "
            f"statement is about pkg:npm/sigstore@1.3.0 (sha512:76176ffa3380…), not {WEB}",
            keys=[{"path": NPM_PUB, "hint": HINT_NPM}],
            components={
                "web": rejected(WEB, (f"{WEB_DIR}/npm-publish.sigstore.json", NPM_BUNDLE, "subject-mismatch"))
            },
        ),
        options={"keys": [NPM_PUB]},
        only_web=True,
    ),
    "real-npm-publish-bundle-with-another-key": Row(
        {f"{WEB_DIR}/npm-publish.sigstore.json": NPM_BUNDLE},
        result(
            "fail",
            "invalid-signature",
            f"1 of 1 component(s) not signed by an allowed key: web ({WEB_PINNED}): none of 1 signature "
            "bundle(s) is valid: "
            + unknown_key(
                f"{WEB_DIR}/npm-publish.sigstore.json", "SHA256:jl3bwswu80PjjokCgh0o2w5c2U4LhQAE57gj9cz1kzA"
            ),
            keys=KEYS_A,
            components={
                "web": rejected(WEB, (f"{WEB_DIR}/npm-publish.sigstore.json", NPM_BUNDLE, "unknown-key"))
            },
        ),
        only_web=True,
    ),
    "key-file-missing": Row(
        {WEB_OK: WEB_BY_A},
        GateResult(
            "signature",
            "error",
            "invalid-key",
            "option keys: trust/image-keys/gone.pub: no such file in the repository",
        ),
        options={"keys": [CI_PUB, "trust/image-keys/gone.pub"]},
    ),
    "key-file-not-a-p256-key": Row(
        {"trust/image-keys/p384.pub": public_pem(KEY_P384.public_key())},
        GateResult(
            "signature",
            "error",
            "invalid-key",
            "option keys: trust/image-keys/p384.pub: not a PEM ECDSA P-256 public key "
            "(trust/image-keys/p384.pub: evidence keys must be ECDSA P-256)",
        ),
        options={"keys": ["trust/image-keys/p384.pub"]},
    ),
    "key-path-outside-the-repository": Row(
        {},
        GateResult(
            "signature",
            "error",
            "invalid-key",
            "option keys: ../ci.pub: '../ci.pub' is not a relative path inside the repository",
        ),
        options={"keys": ["../ci.pub"]},
    ),
    "unknown-option": Row(
        {WEB_OK: WEB_BY_A},
        GateResult(
            "signature", "error", "invalid-options", "unknown option(s) identities, key (known: keys)"
        ),
        options={"keys": [CI_PUB], "key": CI_PUB, "identities": ["ci@example.com"]},
    ),
    "keys-missing": Row(
        {WEB_OK: WEB_BY_A},
        GateResult(
            "signature",
            "error",
            "invalid-options",
            "option keys must list the public key files (PEM, ECDSA P-256) in the repository that may sign "
            "images, e.g. keys: [trust/image-keys/ci.pub]; got None",
        ),
        options={},
    ),
    "keys-not-a-list": Row(
        {WEB_OK: WEB_BY_A},
        GateResult(
            "signature",
            "error",
            "invalid-options",
            "option keys must list the public key files (PEM, ECDSA P-256) in the repository that may sign "
            "images, e.g. keys: [trust/image-keys/ci.pub]; got 'trust/image-keys/ci.pub'",
        ),
        options={"keys": CI_PUB},
    ),
}


def _write(root: Path, files: Mapping[str, bytes]) -> None:
    for path, data in {**KEY_FILES, **files}.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


@pytest.mark.parametrize("row", list(ROWS.values()), ids=list(ROWS))
def test_signature_gate(row: Row, tmp_path: Path) -> None:
    _write(tmp_path, row.files)
    got = signature.evaluate(context(row.options, DirFiles(tmp_path), only_web=row.only_web))
    assert got == row.expected


def test_the_mirror_location_comes_from_the_context(tmp_path: Path) -> None:
    _write(tmp_path, {"offline/data/signatures/sha256-" + "a1" * 32 + "/ci.sigstore.json": WEB_BY_A})
    ctx = context({"keys": [CI_PUB]}, DirFiles(tmp_path), only_web=True)
    got = signature.evaluate(replace(ctx, mirror="offline/data/"))
    path = "offline/data/signatures/sha256-" + "a1" * 32 + "/ci.sigstore.json"
    assert got == result(
        "pass",
        "signed",
        f"all 1 component(s) signed by an allowed key: web ({path}, key {CI_PUB})",
        keys=KEYS_A,
        components={"web": signed(WEB, path, WEB_BY_A)},
    )


def test_without_the_repository_files_the_gate_errs() -> None:
    assert signature.evaluate(context({"keys": [CI_PUB]}, None)) == GateResult(
        "signature", "error", "no-repository", "the repository's files are not available to this gate"
    )


def test_the_result_does_not_depend_on_the_order_of_keys_or_components(tmp_path: Path) -> None:
    _write(tmp_path, {WEB_OK: WEB_BY_A, f"{WORKER_DIR}/release.sigstore.json": WORKER_BY_B})
    files = DirFiles(tmp_path)
    forward = context({"keys": [CI_PUB, RELEASE_PUB]}, files)
    backward_components = dict(reversed(list(forward.release.components.items())))
    backward = replace(
        forward,
        options={"keys": [RELEASE_PUB, CI_PUB]},
        release=forward.release.model_copy(update={"components": backward_components}),
    )
    assert signature.evaluate(backward) == signature.evaluate(forward)


def test_two_components_with_one_digest_share_the_finding(tmp_path: Path) -> None:
    _write(tmp_path, {WEB_OK: WEB_BY_A})
    ctx = context({"keys": [CI_PUB]}, DirFiles(tmp_path), only_web=True)
    components = {
        "web": ctx.release.components["web"],
        "web-canary": ctx.release.components["web"],
    }
    got = signature.evaluate(replace(ctx, release=ctx.release.model_copy(update={"components": components})))
    assert got == result(
        "pass",
        "signed",
        f"all 2 component(s) signed by an allowed key: web ({WEB_OK}, key {CI_PUB}), "
        f"web-canary ({WEB_OK}, key {CI_PUB})",
        keys=KEYS_A,
        components={"web": signed(WEB, WEB_OK, WEB_BY_A), "web-canary": signed(WEB, WEB_OK, WEB_BY_A)},
    )


def test_gates_are_plugins_registered_by_entry_point() -> None:
    found = {
        ep.name: ep.load() for ep in entry_points(group="stella.gates") if ep.name.startswith("signature")
    }
    assert found == {"signature": signature, "signature-registry": signature_registry}
    for gate, name, network in (
        (signature, "signature", False),
        (signature_registry, "signature-registry", True),
    ):
        assert isinstance(gate, Gate)
        assert isinstance(gate, SignatureGate)
        manifest = gate.manifest
        assert (manifest.name, manifest.version, manifest.kinds, manifest.network) == (
            name,
            __version__,
            ("gate",),
            network,
        )
    assert gate_module.__all__ == [
        "GATE",
        "REGISTRY_GATE",
        "STATEMENT_TYPES",
        "SignatureGate",
        "signature",
        "signature_registry",
    ]


# -- signature-registry: referrers through the registries of the context ----------------------------

WEB_REF = parse(f"{WEB_IMAGE}:1.4.0@{WEB}")


def registry_context(
    registries: Callable[[ImageRef], Registry], files: Mapping[str, bytes] | None = None
) -> GateContext:
    return gate_context(
        components={"web": str(WEB_REF)},
        options={"keys": [CI_PUB]},
        files={**KEY_FILES, **(files or {})},
        registries=registries,
    )


def from_registry(where: str, data: bytes) -> dict[str, object]:
    return {**signed(WEB, where, data), "origin": "registry"}


def test_signature_registry_reads_referrers_through_the_registries_of_the_context() -> None:
    registry = MemoryRegistry()
    referrer = registry.attach(WEB_REF, WEB_BY_A)

    got = signature_registry.evaluate(registry_context(by_host(registry)))

    where = f"{WEB_IMAGE}@{referrer}"
    assert got == GateResult(
        "signature-registry",
        "pass",
        "signed",
        f"all 1 component(s) signed by an allowed key: web ({where}, key {CI_PUB})",
        facts={"keys": KEYS_A, "components": {"web": from_registry(where, WEB_BY_A)}},
    )
    assert registry.asked == [
        f"referrers {WEB_PINNED}",
        f"manifest {where}",
        f"blob {WEB_IMAGE}@sha256:{sha(WEB_BY_A)}",
    ]
    assert not registry.closed, "the core's registries are the core's to close"


def test_signature_registry_takes_referrers_in_digest_order_and_explains_the_rejected() -> None:
    registry = MemoryRegistry()
    by_b = registry.attach(WEB_REF, WEB_BY_B)
    about_other = registry.attach(WEB_REF, OTHER_BY_A)
    registry.attach(WEB_REF, b"not a bundle", artifact_type="application/spdx+json")  # not a signature

    got = signature_registry.evaluate(registry_context(by_host(registry)))

    bundles = sorted(
        [
            (f"{WEB_IMAGE}@{by_b}", WEB_BY_B, "unknown-key"),
            (f"{WEB_IMAGE}@{about_other}", OTHER_BY_A, "subject-mismatch"),
        ]
    )
    why = {
        "unknown-key": unknown_key(f"{WEB_IMAGE}@{by_b}", HINT_B),
        "subject-mismatch": (
            f"{WEB_IMAGE}@{about_other}: subject mismatch: the signed statement is about image-0 "
            f"(sha256:{OTHER.removeprefix('sha256:')[:12]}…), not {WEB}"
        ),
    }
    assert got == GateResult(
        "signature-registry",
        "fail",
        "invalid-signature",
        f"1 of 1 component(s) not signed by an allowed key: web ({WEB_PINNED}): none of 2 signature "
        "bundle(s) is valid: " + " | ".join(why[reason] for _, _, reason in bundles),
        facts={"keys": KEYS_A, "components": {"web": rejected(WEB, *bundles)}},
    )


def test_a_valid_mirror_bundle_is_enough_without_asking_the_registry() -> None:
    registry = MemoryRegistry()

    got = signature_registry.evaluate(registry_context(by_host(registry), {WEB_OK: WEB_BY_A}))

    assert (got.status, got.facts["components"]) == ("pass", {"web": signed(WEB, WEB_OK, WEB_BY_A)})
    assert registry.asked == []


class _ResolveOnly:
    """A registry plugin's registry that resolves tags and offers nothing attached to images."""

    def resolve(self, ref: ImageRef) -> str:
        raise AssertionError("the gate resolves nothing")

    def close(self) -> None:
        raise AssertionError("the gate closes nothing of the core's")


def _down() -> Callable[[ImageRef], Registry]:
    registry = MemoryRegistry()
    registry.outage = RegistryUnavailable("registry registry.example.com is unavailable: a test outage")
    return by_host(registry)


# the registries the context offers, and the reason and the error the gate reports
REGISTRY_ERRORS: dict[str, tuple[Callable[[], Callable[[ImageRef], Registry]], str, StellaError]] = {
    "registry-down": (
        _down,
        "registry-unavailable",
        RegistryUnavailable("registry registry.example.com is unavailable: a test outage"),
    ),
    "no-registry-for-the-host": (
        lambda: by_host(MemoryRegistry("other.example.com")),
        "registry-error",
        PluginError("no registry serves registry.example.com in this test"),
    ),
    "registry-without-attachments": (
        lambda: lambda ref: _ResolveOnly(),
        "registry-error",
        PluginError(
            "the registry plugin serving registry.example.com (_ResolveOnly) cannot list the signatures "
            "attached to an image (it does not offer RegistryAttachments)"
        ),
    ),
}


@pytest.mark.parametrize(
    ("registries", "reason", "error"), list(REGISTRY_ERRORS.values()), ids=list(REGISTRY_ERRORS)
)
def test_a_registry_that_cannot_answer_is_an_error(
    registries: Callable[[], Callable[[ImageRef], Registry]], reason: str, error: StellaError
) -> None:
    got = signature_registry.evaluate(registry_context(registries()))

    assert got == GateResult(
        "signature-registry",
        "error",
        reason,
        f"1 of 1 component(s) could not be checked: web ({WEB_PINNED}): {error}",
        facts={
            "keys": KEYS_A,
            "components": {"web": {"digest": WEB, "status": "error", "error": str(error)}},
        },
    )


def test_the_offline_gate_never_asks_a_registry() -> None:
    registry = MemoryRegistry()
    registry.attach(WEB_REF, WEB_BY_A)

    got = signature.evaluate(registry_context(by_host(registry)))

    assert (got.status, got.reason) == ("fail", "unsigned")
    assert registry.asked == []
