"""The `signature-registry` gate against the real registry: signatures attached as OCI 1.1 referrers.

Images are pushed with skopeo; a key-signed bundle (`reconciler.sign.KeySigner` over an in-toto
statement about the image's digest) is attached the way clients do for a registry without the
referrers API (distribution 2.8): blob and empty config uploaded, a manifest with `subject` and
`artifactType`, and the referrers tag `sha256-<hex>` holding an index that lists it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric import ec
from stella_sigstore.gate import signature, signature_registry

from reconciler.models import Environment, Promotion, ReleaseLock
from reconciler.protocols import Actor, GateContext, GateResult
from reconciler.sign import KeySigner, key_hint, public_pem
from tests.e2e.test_registry_resolve import push_referrer
from tests.support.oci import DirFiles
from tests.support.registry import ImagePusher, RegistryServer, free_port

KEY = ec.generate_private_key(ec.SECP256R1())
STRANGER = ec.generate_private_key(ec.SECP256R1())
HINT = key_hint(KEY.public_key())
CI_PUB = "trust/image-keys/ci.pub"
OPTIONS = {"keys": [CI_PUB]}
KEYS_FACT = [{"path": CI_PUB, "hint": HINT}]


@pytest.fixture(autouse=True)
def _no_docker_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's ~/.docker/config.json out of these tests."""
    empty = tmp_path / "docker-config-empty"
    empty.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(empty))


def attestation(digest: str, key: ec.EllipticCurvePrivateKey = KEY) -> bytes:
    """A bundle like `cosign attest --key --new-bundle-format` makes, about the image `digest`."""
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "image", "digest": {"sha256": digest.removeprefix("sha256:")}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {"buildDefinition": {"buildType": "https://example.com/ci/v1"}},
    }
    return KeySigner(key).sign(rfc8785.dumps(statement))


def repository(root: Path, files: Mapping[str, bytes] | None = None) -> DirFiles:
    """The user's repository: the allowed key, and `files` (mirror bundles)."""
    for path, data in {CI_PUB: public_pem(KEY.public_key()), **(files or {})}.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return DirFiles(root)


def context(files: DirFiles, components: Mapping[str, tuple[str, str]]) -> GateContext:
    """A promotion to prod of a release whose components are `name: (image without tag, digest)`."""
    return GateContext(
        now=datetime(2026, 12, 1, 10, 0, tzinfo=UTC),
        promotion_id="shop-1.0--prod",
        promotion=Promotion.model_validate(
            {"apiVersion": "stella/v1", "kind": "Promotion", "release": "shop-1.0", "environment": "prod"}
        ),
        release=ReleaseLock.model_validate(
            {
                "name": "shop-1.0",
                "id": "sha256:" + "1" * 64,
                "components": {
                    name: {"image": image, "tag": "1.0", "digest": digest}
                    for name, (image, digest) in components.items()
                },
            }
        ),
        environment=Environment.model_validate(
            {"apiVersion": "stella/v1", "kind": "Environment", "name": "prod"}
        ),
        options=OPTIONS,
        requester=Actor(identity="dev@example.com", verified=True),
        files=files,
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mirror_dir(digest: str) -> str:
    return "mirror/signatures/" + digest.replace(":", "-")


def from_registry(digest: str, bundle: str, data: bytes) -> dict[str, Any]:
    return {
        "digest": digest,
        "status": "signed",
        "bundle": bundle,
        "origin": "registry",
        "sha256": sha(data),
        "key": HINT,
        "keyPath": CI_PUB,
    }


@pytest.mark.registry
def test_a_signature_referrer_passes_and_an_unsigned_image_fails(
    registry: RegistryServer, push_image: ImagePusher, tmp_path: Path
) -> None:
    web = push_image("sig/web", "1.0", content=b"signed web\n")
    worker = push_image("sig/worker", "1.0", content=b"unsigned worker\n")
    bundle = attestation(web.digest)
    referrer = push_referrer(registry.url, "sig/web", web.digest, bundle)
    files = repository(tmp_path)
    web_image, worker_image = f"{registry.host}/sig/web", f"{registry.host}/sig/worker"
    web_fact = from_registry(web.digest, f"{web_image}@{referrer}", bundle)

    signed = signature_registry.evaluate(context(files, {"web": (web_image, web.digest)}))
    assert signed == GateResult(
        "signature-registry",
        "pass",
        "signed",
        f"all 1 component(s) signed by an allowed key: web ({web_image}@{referrer}, key {CI_PUB})",
        facts={"keys": KEYS_FACT, "components": {"web": web_fact}},
    )

    both = {"web": (web_image, web.digest), "worker": (worker_image, worker.digest)}
    unsigned = signature_registry.evaluate(context(files, both))
    assert unsigned == GateResult(
        "signature-registry",
        "fail",
        "unsigned",
        f"1 of 2 component(s) not signed by an allowed key: worker ({worker_image}@{worker.digest}) is "
        f"unsigned: no bundle in {mirror_dir(worker.digest)}/ and no signature referrer in registry "
        f"{registry.host}",
        facts={
            "keys": KEYS_FACT,
            "components": {"web": web_fact, "worker": {"digest": worker.digest, "status": "unsigned"}},
        },
    )

    # the offline gate never asks the registry
    offline = signature.evaluate(context(files, {"web": (web_image, web.digest)}))
    assert (offline.status, offline.reason) == ("fail", "unsigned")


@pytest.mark.registry
def test_referrers_by_another_key_or_about_another_image_do_not_count(
    registry: RegistryServer, push_image: ImagePusher, tmp_path: Path
) -> None:
    app = push_image("sig/app", "1.0", content=b"app\n")
    other = push_image("sig/app", "other", content=b"another image\n")
    by_stranger = attestation(app.digest, STRANGER)
    about_other = attestation(other.digest)
    first = push_referrer(registry.url, "sig/app", app.digest, by_stranger)
    second = push_referrer(registry.url, "sig/app", app.digest, about_other)
    image = f"{registry.host}/sig/app"

    got = signature_registry.evaluate(context(repository(tmp_path), {"app": (image, app.digest)}))

    rejected = {
        f"{image}@{first}": (
            by_stranger,
            "unknown-key",
            f"{image}@{first}: unknown key: the hint {key_hint(STRANGER.public_key())!r} names no trusted "
            "key, and the signature verifies with none of the 1 trusted key(s)",
        ),
        f"{image}@{second}": (
            about_other,
            "subject-mismatch",
            f"{image}@{second}: subject mismatch: the signed statement is about image "
            f"(sha256:{other.digest.removeprefix('sha256:')[:12]}…), not {app.digest}",
        ),
    }
    order = sorted(rejected, key=lambda where: where.rsplit("@", 1)[1])  # referrers go by digest
    assert got == GateResult(
        "signature-registry",
        "fail",
        "invalid-signature",
        f"1 of 1 component(s) not signed by an allowed key: app ({image}@{app.digest}): none of 2 "
        "signature bundle(s) is valid: " + " | ".join(rejected[where][2] for where in order),
        facts={
            "keys": KEYS_FACT,
            "components": {
                "app": {
                    "digest": app.digest,
                    "status": "invalid-signature",
                    "rejected": [
                        {"bundle": where, "sha256": sha(rejected[where][0]), "reason": rejected[where][1]}
                        for where in order
                    ],
                    "rejectedCount": 2,
                }
            },
        },
    )


def test_a_valid_mirror_bundle_is_enough_without_asking_the_registry(tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens there: asking would be an error
    digest = "sha256:" + "e" * 64
    bundle = attestation(digest)
    path = f"{mirror_dir(digest)}/ci.sigstore.json"
    files = repository(tmp_path, {path: bundle})

    got = signature_registry.evaluate(context(files, {"web": (f"{host}/shop/web", digest)}))

    assert got == GateResult(
        "signature-registry",
        "pass",
        "signed",
        f"all 1 component(s) signed by an allowed key: web ({path}, key {CI_PUB})",
        facts={
            "keys": KEYS_FACT,
            "components": {
                "web": {
                    "digest": digest,
                    "status": "signed",
                    "bundle": path,
                    "origin": "mirror",
                    "sha256": sha(bundle),
                    "key": HINT,
                    "keyPath": CI_PUB,
                }
            },
        },
    )


def test_an_unreachable_registry_is_an_error_not_a_crash(tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}"
    digest = "sha256:" + "d" * 64

    got = signature_registry.evaluate(context(repository(tmp_path), {"web": (f"{host}/shop/web", digest)}))

    assert (got.gate, got.status, got.reason) == ("signature-registry", "error", "registry-unavailable")
    pinned = f"{host}/shop/web@{digest}"
    error = got.message.removeprefix(f"1 of 1 component(s) could not be checked: web ({pinned}): ")
    assert error.startswith(
        f"registry {host} is unavailable: listing the referrers of {pinned} failed with connection failed ("
    ), got.message
    assert error.endswith(") after 4 attempts"), got.message
    assert got.facts == {
        "keys": KEYS_FACT,
        "components": {"web": {"digest": digest, "status": "error", "error": error}},
    }
