"""Fakes of the plugin interfaces, for the tests of plugins (and of Stella): part of the public API.

Beside the interfaces they stand for, as httpx ships `MockTransport`:

- `MemoryFiles`: a `FileSource` over files held in a dict (a repository without Git or a disk);
- `gate_context()`: a `GateContext` with sensible defaults (a one-component release lock, the `prod`
  environment, its promotion, a verified requester, a fixed time); override any field;
- `MemoryRegistry`: a `Registry` with `RegistryAttachments` and `RegistryProbe` over manifests and
  blobs held in memory, with helpers to push images and attach artifacts (OCI 1.1 referrers), and
  `by_host()` to hand registries to a gate as the core does (`GateContext.registries`);
- `FakeSigner`: a `Signer` with a fresh in-memory P-256 key whose bundles `verify_bundle` accepts
  under `trusted_keys()`, recording what it signed.

What it must not do: touch the network, the disk, Git or the clock; these fakes hold everything in
memory and are deterministic except for ECDSA signatures (randomised, as real ones are).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import InvalidInput, PluginError, StellaError
from ..evidence import release_id
from ..models import Environment, Promotion, ReleaseLock
from ..protocols import (
    IN_TOTO_PAYLOAD_TYPE,
    Actor,
    Descriptor,
    FileSource,
    GateContext,
    Registry,
    RegistryPing,
)
from ..reference import DIGEST_RE, ImageRef, parse
from ..sign import BUNDLE_MEDIA_TYPE, KeySigner, TrustedKeys, public_pem

__all__ = [
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

NOW: Final = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
"""The time `gate_context()` decides at, unless told otherwise."""
DEFAULT_IMAGE: Final = "registry.example.com/shop/web:1.0@sha256:" + "a1" * 32
"""The one component (`web`) of the release `gate_context()` builds, unless told otherwise."""
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
EMPTY_CONFIG: Final = "application/vnd.oci.empty.v1+json"
_LAYER: Final = "application/vnd.oci.image.layer.v1.tar"


def sha256_digest(data: bytes) -> str:
    """`sha256:<hex>` of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


# --- files ---------------------------------------------------------------------------------------


class MemoryFiles:
    """A read-only `FileSource` over `{path: bytes}` (POSIX paths relative to the repository root).

    Directories are implied by the paths. Like the core's sources, a path that leaves the repository
    (absolute, or with `..`) raises ValueError; a directory reads as None.
    """

    def __init__(self, files: Mapping[str, bytes] | None = None) -> None:
        self._files = {self._normal(path): data for path, data in (files or {}).items()}

    @staticmethod
    def _normal(path: str) -> str:
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts:
            raise ValueError(f"{path!r} is not a relative path inside the repository")
        return "/".join(part for part in pure.parts if part != ".")

    def read(self, path: str) -> bytes | None:
        return self._files.get(self._normal(path))

    def listdir(self, path: str) -> list[str]:
        directory = self._normal(path)
        prefix = f"{directory}/" if directory else ""
        return sorted({p[len(prefix) :].split("/")[0] for p in self._files if p.startswith(prefix)})


# --- gate contexts -------------------------------------------------------------------------------


def gate_context(
    *,
    components: Mapping[str, str] | None = None,
    options: Mapping[str, Any] | None = None,
    files: FileSource | Mapping[str, bytes] | None = None,
    environment: str | Environment = "prod",
    release: str = "shop-1.0",
    requester: Actor | None = None,
    now: datetime = NOW,
    **fields: Any,
) -> GateContext:
    """A `GateContext` for promoting `release` to `environment`, with defaults for everything.

    `components` maps a component name to its pinned image (`registry/repo:tag@sha256:…`; default: `web`
    at `DEFAULT_IMAGE`); the lock's id is computed as the core computes it. `files` may be a mapping
    (served by `MemoryFiles`; default: no files). `requester` defaults to a verified
    `dev@example.com`. Any other `GateContext` field (`history`, `approvals`, `groups`, `mirror`,
    `offline`, `registries`, ...) is passed through `fields`.
    """
    locked = {}
    for name, text in (components or {"web": DEFAULT_IMAGE}).items():
        ref = parse(text)
        if ref.digest is None:
            raise ValueError(f"component {name}: {text!r} has no digest (a release lock pins every image)")
        locked[name] = {"image": ref.repo, "tag": ref.tag, "digest": ref.digest}
    lock = ReleaseLock.model_validate(
        {
            "name": release,
            "id": release_id(release, {name: f"{c['image']}@{c['digest']}" for name, c in locked.items()}),
            "components": locked,
        }
    )
    env = environment
    if not isinstance(env, Environment):
        env = Environment.model_validate({"apiVersion": "stella/v1", "kind": "Environment", "name": env})
    promotion = Promotion.model_validate(
        {"apiVersion": "stella/v1", "kind": "Promotion", "release": release, "environment": env.name}
    )
    source = MemoryFiles(files) if isinstance(files, Mapping) else files
    ctx = GateContext(
        now=now,
        promotion_id=f"{release}--{env.name}",
        promotion=promotion,
        release=lock,
        environment=env,
        options=dict(options or {}),
        requester=requester or Actor(identity="dev@example.com", verified=True),
        files=source if source is not None else MemoryFiles(),
    )
    return replace(ctx, **fields) if fields else ctx


# --- registries ----------------------------------------------------------------------------------


class MemoryRegistry:
    """One registry host held in memory: a `Registry`, with `RegistryAttachments` and `RegistryProbe`.

    Fill it with `push_blob`, `push_manifest`, `push_image` and `attach`; read it through the Protocols
    as a plugin would. Errors are those of a real registry plugin: what does not exist is
    `InvalidInput`, a reference to another host too, a call after `close()` is `PluginError`, and while
    `outage` is set every read raises it (e.g. `RegistryUnavailable`). `asked` lists what was asked
    (`"referrers registry.example.com/shop/web@sha256:…"`), to check what a plugin did or did not ask.
    Safe to call from several threads.
    """

    def __init__(self, host: str = "registry.example.com") -> None:
        self.host = host
        self.outage: StellaError | None = None
        self.closed = False
        self.asked: list[str] = []
        self._lock = threading.Lock()
        self._blobs: dict[tuple[str, str], bytes] = {}
        self._manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self._tags: dict[tuple[str, str], str] = {}
        self._referrers: dict[tuple[str, str], list[Descriptor]] = {}

    def __repr__(self) -> str:
        return f"MemoryRegistry({self.host!r})"

    # -- filling it --------------------------------------------------------------------------------

    def push_blob(self, repository: str, data: bytes) -> str:
        """Store a blob; its digest."""
        digest = sha256_digest(data)
        with self._lock:
            self._blobs[(repository, digest)] = data
        return digest

    def push_manifest(
        self, repository: str, body: bytes, *, media_type: str = OCI_MANIFEST, tag: str | None = None
    ) -> str:
        """Store a manifest (exact bytes), tagged `tag` if given; its digest. A manifest with a
        `subject` is listed among that subject's referrers, as OCI 1.1 registries do."""
        digest = sha256_digest(body)
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        subject = doc.get("subject") if isinstance(doc, dict) else None
        with self._lock:
            self._manifests[(repository, digest)] = (body, media_type)
            if tag is not None:
                self._tags[(repository, tag)] = digest
            if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
                artifact_type = doc.get("artifactType") if isinstance(doc, dict) else None
                descriptor = Descriptor(
                    media_type, digest, len(body), artifact_type if isinstance(artifact_type, str) else None
                )
                self._referrers.setdefault((repository, subject["digest"]), []).append(descriptor)
        return digest

    def push_image(self, repository: str, tag: str, content: bytes = b"stella test image\n") -> ImageRef:
        """Store a one-layer image tagged `tag`; its reference, pinned to the manifest's digest."""
        config = self.push_blob(repository, b"{}")
        layer = self.push_blob(repository, content)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": EMPTY_CONFIG, "digest": config, "size": 2},
            "layers": [{"mediaType": _LAYER, "digest": layer, "size": len(content)}],
        }
        digest = self.push_manifest(repository, _canonical(manifest), tag=tag)
        return parse(f"{self.host}/{repository}:{tag}@{digest}")

    def attach(
        self,
        subject: ImageRef,
        data: bytes,
        *,
        artifact_type: str = BUNDLE_MEDIA_TYPE,
        layer_type: str | None = None,
    ) -> str:
        """Attach `data` to `subject` (which must have a digest) as clients do for OCI 1.1: an image
        manifest with `subject`, `artifactType` and one layer holding `data` (of media type
        `layer_type`, by default `artifact_type`). The referrer manifest's digest."""
        if subject.digest is None:
            raise ValueError(f"{subject} has no digest: artifacts are attached to a digest")
        repository = subject.repository
        layer = self.push_blob(repository, data)
        config = self.push_blob(repository, b"{}")
        with self._lock:
            stored = self._manifests.get((repository, subject.digest))
        body, media_type = stored if stored is not None else (b"", OCI_MANIFEST)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": EMPTY_CONFIG, "digest": config, "size": 2},
            "layers": [{"mediaType": layer_type or artifact_type, "digest": layer, "size": len(data)}],
            "subject": {"mediaType": media_type, "digest": subject.digest, "size": len(body)},
        }
        return self.push_manifest(repository, _canonical(manifest))

    # -- Registry --------------------------------------------------------------------------------

    def resolve(self, ref: ImageRef) -> str:
        self._ask("resolve", ref)
        return self._digest(ref)

    def close(self) -> None:
        self.closed = True

    # -- RegistryAttachments ---------------------------------------------------------------------

    def referrers(self, ref: ImageRef, artifact_type: str | None = None) -> list[Descriptor]:
        self._ask("referrers", ref)
        if ref.digest is None:
            raise InvalidInput(f"{ref} has no digest: referrers are listed for a digest")
        with self._lock:
            found = list(self._referrers.get((ref.repository, ref.digest), ()))
        return [d for d in found if artifact_type is None or d.artifact_type == artifact_type]

    def manifest(self, ref: ImageRef) -> tuple[bytes, str]:
        self._ask("manifest", ref)
        digest = self._digest(ref)
        with self._lock:
            return self._manifests[(ref.repository, digest)]

    def blob(self, repository: str, digest: str) -> bytes:
        self._ask("blob", f"{self.host}/{repository}@{digest}")
        if not DIGEST_RE.match(digest):
            raise InvalidInput(f"blob digest {digest!r} is not sha256:<64 lowercase hex>")
        with self._lock:
            data = self._blobs.get((repository, digest))
        if data is None:
            raise InvalidInput(f"blob {digest} of {self.host}/{repository} does not exist")
        return data

    # -- RegistryProbe ---------------------------------------------------------------------------

    def ping(self, timeout: float) -> RegistryPing:
        request = f"GET memory://{self.host}/v2/"
        if self.outage is not None:
            return RegistryPing(request, healthy=False, error=f"{type(self.outage).__name__}: {self.outage}")
        return RegistryPing(request, healthy=True, status=200)

    # -- helpers ---------------------------------------------------------------------------------

    def _ask(self, what: str, ref: ImageRef | str) -> None:
        if self.closed:
            raise PluginError(f"registry {self.host} was used after close()")
        if isinstance(ref, ImageRef) and ref.registry != self.host:
            raise InvalidInput(f"{ref} is not on registry {self.host}, which this entry serves")
        with self._lock:
            self.asked.append(f"{what} {ref}")
        if self.outage is not None:
            raise self.outage

    def _digest(self, ref: ImageRef) -> str:
        with self._lock:
            digest = ref.digest or self._tags.get((ref.repository, ref.tag or ""))
            known = digest is not None and (ref.repository, digest) in self._manifests
        if digest is None or not known:
            raise InvalidInput(f"{ref} does not exist in registry {self.host}")
        return digest


def by_host(*registries: MemoryRegistry) -> Callable[[ImageRef], Registry]:
    """`GateContext.registries` as the core fills it: each image's host served by its registry.
    A host none of `registries` serves is `PluginError` (the core: no usable registry plugin)."""
    hosts = {registry.host: registry for registry in registries}

    def registry(ref: ImageRef) -> Registry:
        found = hosts.get(ref.registry)
        if found is None:
            raise PluginError(f"no registry serves {ref.registry} in this test")
        return found

    return registry


# --- signers -------------------------------------------------------------------------------------


class FakeSigner:
    """A `Signer` with a fresh P-256 key held in memory: real key-based Sigstore bundles (DSSE), so
    `verify_bundle(bundle, signer.trusted_keys(), ...)` accepts them; `signed` records each
    (payload, payload type) in order. `public_pem` is the public key file to put in a test
    repository (e.g. at `trust/image-keys/ci.pub`)."""

    def __init__(self) -> None:
        self._signer = KeySigner(ec.generate_private_key(ec.SECP256R1()))
        self.hint: str = self._signer.hint
        self.public_pem: bytes = public_pem(self._signer.public_key)
        self.signed: list[tuple[bytes, str]] = []

    def __repr__(self) -> str:
        return f"FakeSigner(hint={self.hint!r})"

    def sign(self, payload: bytes, payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> bytes:
        self.signed.append((payload, payload_type))
        return self._signer.sign(payload, payload_type)

    def trusted_keys(self, source: str = "trust/keys/fake.pub") -> TrustedKeys:
        """Its public key as the only trusted key, named `source`."""
        return TrustedKeys.from_files([(source, self.public_pem)])
