"""`reconciler.api` and its fakes for plugin authors (`reconciler.api.testing`).

The public API's names are pinned (removing or changing one bumps `API_VERSION`). Each fake satisfies
the Protocols it stands for, and behaves as the real thing does where a plugin can tell: errors of a
registry, paths of a repository, bundles a verifier accepts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

import reconciler.api as api
from reconciler.api import (
    API_VERSION,
    BUNDLE_MEDIA_TYPE,
    IN_TOTO_PAYLOAD_TYPE,
    Actor,
    BundleError,
    Descriptor,
    Environment,
    FileSource,
    InvalidInput,
    LockedComponent,
    PluginError,
    Registry,
    RegistryAttachments,
    RegistryPing,
    RegistryProbe,
    RegistryUnavailable,
    Signer,
    parse,
    verify_bundle,
)
from reconciler.api import testing as fakes
from reconciler.api.testing import NOW, FakeSigner, MemoryFiles, MemoryRegistry, by_host, gate_context
from reconciler.evidence import release_id
from reconciler.protocols import PLUGIN_API_VERSION

DIGEST = "sha256:" + "a1" * 32


def test_the_public_api_is_pinned() -> None:
    assert API_VERSION == PLUGIN_API_VERSION == 1
    assert sorted(api.__all__) == sorted(
        [
            "ACCEPTED_BUNDLE_MEDIA_TYPES",
            "API_VERSION",
            "BUNDLE_MEDIA_TYPE",
            "CONFIG_FILES_LABEL",
            "CONFIG_LABEL",
            "DIGEST_RE",
            "IN_TOTO_PAYLOAD_TYPE",
            "PLUGIN_API_VERSION",
            "Actor",
            "AgentDiagnosis",
            "AgentPlugin",
            "AgentTarget",
            "ApprovalRecord",
            "BundleError",
            "BundleVerifier",
            "DeployStep",
            "Descriptor",
            "DoctorCheck",
            "DoctorPlugin",
            "DoctorStatus",
            "Engine",
            "Environment",
            "FileSource",
            "Gate",
            "GateContext",
            "GateResult",
            "GateStatus",
            "ImageRef",
            "InvalidInput",
            "LockedComponent",
            "PluginError",
            "PluginManifest",
            "PriorDecision",
            "Problem",
            "Promotion",
            "ReferenceError",
            "Registry",
            "RegistryAttachments",
            "RegistryOptions",
            "RegistryPing",
            "RegistryPlugin",
            "RegistryProbe",
            "RegistryUnavailable",
            "RunningContainer",
            "ReleaseLock",
            "RepoPath",
            "Signer",
            "SignerPlugin",
            "StellaError",
            "Transient",
            "TrustFile",
            "TrustMaterial",
            "TrustedKey",
            "TrustedKeys",
            "ValidationFailed",
            "VerifierPlugin",
            "Waiting",
            "as_utc",
            "parse",
            "rfc3339",
            "verify_bundle",
        ]
    )
    assert sorted(fakes.__all__) == sorted(
        [
            "DEFAULT_IMAGE",
            "EMPTY_CONFIG",
            "NOW",
            "OCI_INDEX",
            "OCI_MANIFEST",
            "FakeSigner",
            "MemoryFiles",
            "MemoryRegistry",
            "by_host",
            "gate_context",
            "sha256_digest",
        ]
    )
    for module in (api, fakes):
        for name in module.__all__:
            assert getattr(module, name) is not None, name


# -- MemoryFiles ----------------------------------------------------------------------------------

FILES = MemoryFiles({"stella.yaml": b"a", "trust/keys/ci.pub": b"b", "./trust/allowed_signers": b"c"})


@pytest.mark.parametrize(
    ("path", "read", "listed"),
    [
        ("stella.yaml", b"a", []),
        ("./trust/keys/ci.pub", b"b", []),
        ("trust/allowed_signers", b"c", []),
        ("trust", None, ["allowed_signers", "keys"]),
        ("trust/keys/", None, ["ci.pub"]),
        ("", None, ["stella.yaml", "trust"]),
        (".", None, ["stella.yaml", "trust"]),
        ("missing", None, []),
    ],
    ids=["file", "dot-prefix", "stored-with-dot", "directory", "trailing-slash", "root", "dot", "missing"],
)
def test_memory_files(path: str, read: bytes | None, listed: list[str]) -> None:
    files: FileSource = FILES
    assert (files.read(path), files.listdir(path)) == (read, listed)


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside", "trust/../../outside"])
def test_memory_files_refuse_paths_outside_the_repository(path: str) -> None:
    with pytest.raises(ValueError, match="not a relative path inside the repository"):
        FILES.read(path)


# -- gate_context ---------------------------------------------------------------------------------


def test_gate_context_defaults() -> None:
    ctx = gate_context()
    pinned = "registry.example.com/shop/web@sha256:" + "a1" * 32
    assert (ctx.now, ctx.promotion_id, ctx.options, ctx.mirror, ctx.offline) == (
        NOW,
        "shop-1.0--prod",
        {},
        "mirror",
        False,
    )
    assert (ctx.promotion.release, ctx.promotion.environment, ctx.environment.name) == (
        "shop-1.0",
        "prod",
        "prod",
    )
    assert ctx.release.name == "shop-1.0"
    assert ctx.release.id == release_id("shop-1.0", {"web": pinned})
    assert ctx.release.components == {
        "web": LockedComponent(image="registry.example.com/shop/web", tag="1.0", digest="sha256:" + "a1" * 32)
    }
    assert ctx.requester == Actor(identity="dev@example.com", verified=True)
    assert (ctx.history, ctx.approvals, dict(ctx.groups), ctx.registries) == ((), (), {}, None)
    assert ctx.files is not None and ctx.files.listdir("") == []


def test_gate_context_overrides() -> None:
    environment = Environment.model_validate(
        {"apiVersion": "stella/v1", "kind": "Environment", "name": "staging", "promotesFrom": "dev"}
    )
    registry = MemoryRegistry()
    registries = by_host(registry)
    ctx = gate_context(
        components={"api": f"localhost:5000/shop/api@{DIGEST}", "db": f"docker.io/library/redis:7@{DIGEST}"},
        options={"keys": ["trust/ci.pub"]},
        files={"trust/ci.pub": b"key"},
        environment=environment,
        release="shop-2.0",
        requester=Actor(identity=None, reason="unsigned", code="unsigned"),
        mirror="offline",
        offline=True,
        registries=registries,
    )
    assert (ctx.promotion_id, ctx.environment, ctx.promotion.environment) == (
        "shop-2.0--staging",
        environment,
        "staging",
    )
    assert {name: c.pinned for name, c in ctx.release.components.items()} == {
        "api": f"localhost:5000/shop/api@{DIGEST}",
        "db": f"docker.io/library/redis@{DIGEST}",
    }
    assert ctx.release.components["api"].tag is None
    assert ctx.files is not None and ctx.files.read("trust/ci.pub") == b"key"
    assert (ctx.options, ctx.mirror, ctx.offline, ctx.registries) == (
        {"keys": ["trust/ci.pub"]},
        "offline",
        True,
        registries,
    )
    assert ctx.requester.identity is None
    assert replace(ctx, offline=False).offline is False


def test_gate_context_refuses_what_a_lock_cannot_hold() -> None:
    with pytest.raises(ValueError, match="has no digest"):
        gate_context(components={"web": "registry.example.com/shop/web:1.0"})
    with pytest.raises(TypeError):
        gate_context(no_such_field=1)


# -- MemoryRegistry -------------------------------------------------------------------------------


def test_memory_registry_satisfies_the_registry_protocols() -> None:
    registry = MemoryRegistry()
    assert isinstance(registry, Registry)
    assert isinstance(registry, RegistryAttachments)
    assert isinstance(registry, RegistryProbe)


def test_memory_registry_serves_what_was_pushed() -> None:
    registry = MemoryRegistry()
    image = registry.push_image("shop/web", "1.0", b"web\n")
    by_tag = parse("registry.example.com/shop/web:1.0")

    assert registry.resolve(by_tag) == image.digest
    assert registry.resolve(image) == image.digest
    body, media_type = registry.manifest(by_tag)
    assert (media_type, "sha256:" + hashlib.sha256(body).hexdigest()) == (fakes.OCI_MANIFEST, image.digest)
    layer = json.loads(body)["layers"][0]
    assert registry.blob("shop/web", layer["digest"]) == b"web\n"

    bundle = b'{"mediaType": "' + BUNDLE_MEDIA_TYPE.encode() + b'"}'
    referrer = registry.attach(image, bundle)
    sbom = registry.attach(image, b"{}", artifact_type="application/spdx+json")
    referrer_body, _ = registry.manifest(image.with_digest(referrer))
    assert registry.referrers(image, BUNDLE_MEDIA_TYPE) == [
        Descriptor(fakes.OCI_MANIFEST, referrer, len(referrer_body), BUNDLE_MEDIA_TYPE)
    ]
    assert [d.digest for d in registry.referrers(image)] == [referrer, sbom]
    manifest = json.loads(referrer_body)
    assert manifest["subject"] == {"mediaType": fakes.OCI_MANIFEST, "digest": image.digest, "size": len(body)}
    assert manifest["artifactType"] == BUNDLE_MEDIA_TYPE
    assert registry.blob("shop/web", manifest["layers"][0]["digest"]) == bundle
    assert registry.asked[:2] == [f"resolve {by_tag}", f"resolve {image}"]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda r: r.resolve(parse("registry.example.com/shop/web:2.0")), InvalidInput, "does not exist"),
        (
            lambda r: r.manifest(parse(f"registry.example.com/shop/web@{DIGEST}")),
            InvalidInput,
            "does not exist",
        ),
        (lambda r: r.blob("shop/web", DIGEST), InvalidInput, "does not exist"),
        (lambda r: r.blob("shop/web", "sha256:short"), InvalidInput, "is not sha256"),
        (lambda r: r.referrers(parse("registry.example.com/shop/web:1.0")), InvalidInput, "has no digest"),
        (lambda r: r.resolve(parse("other.example.com/shop/web:1.0")), InvalidInput, "is not on registry"),
    ],
    ids=["no-tag", "no-manifest", "no-blob", "bad-digest", "referrers-of-a-tag", "another-host"],
)
def test_memory_registry_errors_are_a_registry_plugins(call: object, error: type, message: str) -> None:
    registry = MemoryRegistry()
    registry.push_image("shop/web", "1.0")
    with pytest.raises(error, match=message):
        call(registry)  # type: ignore[operator]


def test_memory_registry_outage_and_close() -> None:
    registry = MemoryRegistry()
    image = registry.push_image("shop/web", "1.0")
    assert registry.ping(3.0) == RegistryPing(
        "GET memory://registry.example.com/v2/", healthy=True, status=200
    )

    registry.outage = RegistryUnavailable("registry registry.example.com is unavailable: down for a test")
    with pytest.raises(RegistryUnavailable, match="down for a test"):
        registry.referrers(image)
    assert registry.ping(3.0) == RegistryPing(
        "GET memory://registry.example.com/v2/",
        healthy=False,
        error="RegistryUnavailable: registry registry.example.com is unavailable: down for a test",
    )

    registry.outage = None
    registry.close()
    with pytest.raises(PluginError, match="used after close"):
        registry.resolve(image)


def test_by_host_serves_each_host_from_its_registry() -> None:
    one, other = MemoryRegistry("one.example.com"), MemoryRegistry("localhost:5000")
    registries = by_host(one, other)
    assert registries(parse("one.example.com/a:1")) is one
    assert registries(parse("localhost:5000/b:1")) is other
    with pytest.raises(PluginError, match=r"no registry serves third\.example\.com"):
        registries(parse("third.example.com/c:1"))


# -- FakeSigner -----------------------------------------------------------------------------------


def test_fake_signer_bundles_verify_with_its_key_only() -> None:
    signer, stranger = FakeSigner(), FakeSigner()
    assert isinstance(signer, Signer)
    payload = b'{"_type":"https://in-toto.io/Statement/v1","subject":[]}'

    bundle = signer.sign(payload)
    other = signer.sign(b"hello", "text/plain")

    verified = verify_bundle(bundle, signer.trusted_keys("trust/ci.pub"), source="bundle")
    assert (verified.payload, verified.payload_type, verified.hint, verified.source) == (
        payload,
        IN_TOTO_PAYLOAD_TYPE,
        signer.hint,
        "trust/ci.pub",
    )
    assert signer.signed == [(payload, IN_TOTO_PAYLOAD_TYPE), (b"hello", "text/plain")]
    assert verify_bundle(other, signer.trusted_keys(), source="other").payload == b"hello"
    with pytest.raises(BundleError) as caught:
        verify_bundle(bundle, stranger.trusted_keys(), source="bundle")
    assert caught.value.reason == "unknown-key"
    assert signer.public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
