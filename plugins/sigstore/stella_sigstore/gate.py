"""The image signature gates: every component digest must carry a valid signature from an allowed key.

What counts as a signature: a key-based Sigstore bundle (DSSE envelope, as `cosign attest --key
--new-bundle-format` makes) whose signature verifies with one of the allowed public keys AND whose
payload is an in-toto Statement (`https://in-toto.io/Statement/v1` or `v0.1`, payload type
`application/vnd.in-toto+json`) with the component's digest among its subjects (`digest.sha256`).
A valid signature over a statement about something else does not count: that is how a signature is
bound to an image.

Two gates, entry points of group `stella.gates`:

- `signature` (no network): bundles come from the offline mirror in the repository,
  `<mirror>/signatures/sha256-<hex>/*.sigstore.json`, read through `ctx.files`.
- `signature-registry` (network): the same; and for a digest with no valid bundle in the mirror,
  the OCI 1.1 referrers of that digest in its registry (the referrers API, or the referrers tag
  schema `sha256-<hex>` where the registry has none) whose artifactType is the bundle media type,
  each an OCI manifest whose single layer is the bundle.

Registries: the gate reads referrers through the registry the core opened for the image's host
(`ctx.registries`, configured by `stella.yaml`'s `registries:` entry, credentials included), which
must offer `RegistryAttachments`; the core closes it. When the context offers none (the gate run on its
own), it opens the host itself with the `oci` registry plugin (found by its `stella.registries` entry
point) and the defaults of a host `stella.yaml` does not list, and closes it when done.

Options: `keys` (required): paths in the repository of PEM ECDSA P-256 public keys
(e.g. `trust/image-keys/ci.pub`). Anything else is an error.

Reason codes (stable): `signed` (pass); `unsigned` (no bundle at all for some component) and
`invalid-signature` (bundles found, none valid) (fail); `invalid-options`, `invalid-key`,
`no-repository`, `registry-unavailable`, `registry-error` (error: the promotion stays pending;
`registry-error` also when the registry plugin of a host cannot list referrers).
A definite failure of one component wins over a registry error of another. Bundles are tried in a
fixed order (mirror files by name, then referrers by manifest digest), and the first valid one is
recorded in `facts`: so the result depends only on the keys, the mirror and the registry's content.

What it must not do: read the clock (no key or bundle has a validity time here), print, import
another plugin (registries are reached only through the `reconciler.api` Protocols), or crash the
pass: registry failures are `error` results. Transparency-log entries and timestamps that bundles may
carry are not checked (see `reconciler.api.verify_bundle`).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from reconciler.api import (
    BUNDLE_MEDIA_TYPE,
    DIGEST_RE,
    IN_TOTO_PAYLOAD_TYPE,
    BundleError,
    FileSource,
    GateContext,
    GateResult,
    ImageRef,
    InvalidInput,
    LockedComponent,
    PluginManifest,
    ReferenceError,
    RegistryUnavailable,
    StellaError,
    TrustedKey,
    TrustedKeys,
    parse,
    verify_bundle,
)

from . import __version__
from .registries import Registries, bundle_layer

__all__ = [
    "GATE",
    "REGISTRY_GATE",
    "STATEMENT_TYPES",
    "SignatureGate",
    "signature",
    "signature_registry",
]

GATE: Final = "signature"
REGISTRY_GATE: Final = "signature-registry"
STATEMENT_TYPES: Final = frozenset({"https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1"})
"""The in-toto Statement `_type`s a signed payload may have."""

_OPTIONS: Final = ("keys",)
_BUNDLE_SUFFIX: Final = ".sigstore.json"
_EXPLAINED: Final = 3
"""How many rejected bundles a message explains per component (the rest are counted)."""
_FACT_REJECTED: Final = 10
"""How many rejected bundles `facts` lists per component."""
"""The registry plugin the core uses for a host `stella.yaml` does not list."""

Status = Literal["signed", "unsigned", "invalid-signature", "error"]


@dataclass(frozen=True)
class _Signed:
    bundle: str
    origin: Literal["mirror", "registry"]
    sha256: str
    key: TrustedKey


@dataclass(frozen=True)
class _Rejected:
    bundle: str
    sha256: str
    reason: str
    message: str


@dataclass
class _Finding:
    """What was found for one digest."""

    signed: _Signed | None = None
    rejected: list[_Rejected] = field(default_factory=list)
    error: StellaError | None = None
    registry: str | None = None
    """The registry asked, when it was."""

    @property
    def status(self) -> Status:
        if self.signed is not None:
            return "signed"
        if self.error is not None:  # what could not be read might have been the valid one
            return "error"
        if self.rejected:
            return "invalid-signature"
        return "unsigned"


class _Options(Exception):
    """A problem with the gate's options or keys: becomes an `error` result."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class SignatureGate:
    """Fails unless every component digest carries a valid signature bundle from an allowed key.

    With `registry=True` (the `signature-registry` gate) a digest without a valid bundle in the
    mirror is looked up in its registry as OCI 1.1 referrers.
    """

    def __init__(self, *, registry: bool) -> None:
        self._use_registry = registry
        name = REGISTRY_GATE if registry else GATE
        where = "the offline mirror or OCI referrers in the registry" if registry else "the offline mirror"
        self.name = name
        self.manifest = PluginManifest(
            name=name,
            version=__version__,
            kinds=("gate",),
            network=registry,
            description=f"every image digest signed by an allowed key (Sigstore DSSE bundle in {where})",
        )

    def __repr__(self) -> str:
        return f"SignatureGate(registry={self._use_registry})"

    def evaluate(self, ctx: GateContext) -> GateResult:
        try:
            files = ctx.files
            if files is None:
                raise _Options("no-repository", "the repository's files are not available to this gate")
            keys = _load_keys(ctx.options, files)
        except _Options as problem:
            return GateResult(self.name, "error", problem.reason, str(problem))

        mirror = ctx.mirror.strip("/") or "."
        components = sorted(ctx.release.components.items())
        by_digest: dict[str, _Finding] = {}
        registries = Registries(ctx.registries, files)
        try:
            for _, component in components:
                if component.digest not in by_digest:
                    by_digest[component.digest] = self._check(component, keys, files, mirror, registries)
        finally:
            registries.close()
        return self._result(components, by_digest, keys, mirror)

    # -- finding bundles ---------------------------------------------------------------------------

    def _check(
        self,
        component: LockedComponent,
        keys: TrustedKeys,
        files: FileSource,
        mirror: str,
        registries: Registries,
    ) -> _Finding:
        digest = component.digest
        finding = _Finding()
        if not DIGEST_RE.match(digest):  # the models only allow sha256; be safe anyway
            finding.rejected.append(
                _Rejected("-", "", "unsupported-digest", f"{digest} is not a sha256 digest")
            )
            return finding
        directory = _mirror_dir(mirror, digest)
        for name in sorted(files.listdir(directory)):
            if not name.endswith(_BUNDLE_SUFFIX):
                continue
            path = f"{directory}/{name}"
            data = files.read(path)
            if data is None:  # a directory, or gone
                continue
            if _judge(finding, data, path, "mirror", keys, digest):
                return finding
        if self._use_registry:
            try:
                self._check_registry(finding, component, keys, registries)
            except (StellaError, ReferenceError) as exc:
                finding.error = exc if isinstance(exc, StellaError) else InvalidInput(str(exc))
        return finding

    def _check_registry(
        self,
        finding: _Finding,
        component: LockedComponent,
        keys: TrustedKeys,
        registries: Registries,
    ) -> None:
        """Look for a valid bundle among the digest's signature referrers, by manifest digest.

        Failing to list them raises; a referrer that cannot be read is kept as the finding's error
        (it might have been the valid one) and the next one is tried.
        """
        digest = component.digest
        ref = parse(f"{component.image}@{digest}")
        finding.registry = ref.registry
        registry = registries.attachments(ref)
        referrers = registry.referrers(ref, BUNDLE_MEDIA_TYPE)
        for descriptor in sorted(referrers, key=lambda d: d.digest):
            where = f"{ref.written}@{descriptor.digest}"
            manifest_ref = ImageRef(ref.registry, ref.repository, None, descriptor.digest, ref.written)
            try:
                body, _ = registry.manifest(manifest_ref)
                layer, problem = bundle_layer(body, digest)
                if layer is None:
                    message = f"referrer {where}: {problem[1]}"
                    finding.rejected.append(_Rejected(where, _sha256(body), problem[0], message))
                    continue
                data = registry.blob(ref.repository, layer)
            except StellaError as exc:
                finding.error = finding.error or exc
                continue
            if _judge(finding, data, where, "registry", keys, digest):
                return

    # -- the result --------------------------------------------------------------------------------

    def _result(
        self,
        components: Sequence[tuple[str, LockedComponent]],
        by_digest: Mapping[str, _Finding],
        keys: TrustedKeys,
        mirror: str,
    ) -> GateResult:
        facts: dict[str, object] = {
            "keys": [
                {"path": k.source, "hint": k.hint} for k in sorted(keys.values(), key=lambda k: k.source)
            ],
            "components": {name: _facts(c.digest, by_digest[c.digest]) for name, c in components},
        }
        statuses = {name: by_digest[c.digest].status for name, c in components}
        failing = [(n, c) for n, c in components if statuses[n] in ("unsigned", "invalid-signature")]
        erring = [(n, c) for n, c in components if statuses[n] == "error"]
        total = len(components)
        if failing:
            reason = (
                "invalid-signature"
                if any(statuses[n] == "invalid-signature" for n, _ in failing)
                else "unsigned"
            )
            lines = [self._explain(n, c, by_digest[c.digest], mirror) for n, c in (*failing, *erring)]
            message = f"{len(failing)} of {total} component(s) not signed by an allowed key: " + "; ".join(
                lines
            )
            return GateResult(self.name, "fail", reason, message, facts=facts)
        if erring:
            unavailable = any(isinstance(by_digest[c.digest].error, RegistryUnavailable) for _, c in erring)
            reason = "registry-unavailable" if unavailable else "registry-error"
            lines = [self._explain(n, c, by_digest[c.digest], mirror) for n, c in erring]
            message = f"{len(erring)} of {total} component(s) could not be checked: " + "; ".join(lines)
            return GateResult(self.name, "error", reason, message, facts=facts)
        if not components:
            return GateResult(self.name, "pass", "signed", "the release has no components", facts=facts)
        signed = []
        for name, component in components:
            found = by_digest[component.digest].signed
            assert found is not None
            signed.append(f"{name} ({found.bundle}, key {found.key.source})")
        message = f"all {total} component(s) signed by an allowed key: " + ", ".join(signed)
        return GateResult(self.name, "pass", "signed", message, facts=facts)

    def _explain(self, name: str, component: LockedComponent, finding: _Finding, mirror: str) -> str:
        what = f"{name} ({component.pinned})"
        directory = _mirror_dir(mirror, component.digest) + "/"
        status = finding.status
        if status == "unsigned":
            where = f"no bundle in {directory}"
            if self._use_registry:
                where += f" and no signature referrer in registry {finding.registry}"
            return f"{what} is unsigned: {where}"
        count = len(finding.rejected)
        shown = " | ".join(r.message for r in finding.rejected[:_EXPLAINED])
        more = f" | and {count - _EXPLAINED} more" if count > _EXPLAINED else ""
        if status == "error":
            others = f" (and none of the {count} bundle(s) read is valid: {shown}{more})" if count else ""
            return f"{what}: {finding.error}{others}"
        return f"{what}: none of {count} signature bundle(s) is valid: {shown}{more}"


# --- options and keys --------------------------------------------------------------------------------


def _load_keys(options: Mapping[str, Any], files: FileSource) -> TrustedKeys:
    unknown = sorted(str(key) for key in options if key not in _OPTIONS)
    if unknown:
        raise _Options(
            "invalid-options", f"unknown option(s) {', '.join(unknown)} (known: {', '.join(_OPTIONS)})"
        )
    paths = options.get("keys")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p.strip() for p in paths):
        raise _Options(
            "invalid-options",
            f"option keys must list the public key files (PEM, ECDSA P-256) in the repository that may "
            f"sign images, e.g. keys: [trust/image-keys/ci.pub]; got {paths!r}",
        )
    loaded: list[TrustedKey] = []
    for path in paths:
        try:
            data = files.read(path)
        except ValueError as exc:  # not a path inside the repository
            raise _Options("invalid-key", f"option keys: {path}: {exc}") from exc
        if data is None:
            raise _Options("invalid-key", f"option keys: {path}: no such file in the repository")
        try:
            loaded.extend(TrustedKeys.from_files([(path, data)]).values())
        except InvalidInput as exc:
            raise _Options(
                "invalid-key", f"option keys: {path}: not a PEM ECDSA P-256 public key ({exc.message})"
            ) from exc
    return TrustedKeys(loaded)


# --- one bundle ---------------------------------------------------------------------------------------


def _judge(
    finding: _Finding,
    data: bytes,
    source: str,
    origin: Literal["mirror", "registry"],
    keys: TrustedKeys,
    digest: str,
) -> bool:
    """Record `data` as the signature or as rejected (with why); True when it is a valid signature."""
    sha = _sha256(data)
    try:
        verified = verify_bundle(data, keys, source=source)
    except BundleError as exc:
        finding.rejected.append(_Rejected(source, sha, exc.reason, str(exc)))
        return False
    problem = _statement_problem(verified.payload_type, verified.payload, digest)
    if problem is not None:
        reason, why = problem
        finding.rejected.append(_Rejected(source, sha, reason, f"{source}: {why}"))
        return False
    finding.signed = _Signed(source, origin, sha, keys[verified.hint])
    return True


def _statement_problem(payload_type: str, payload: bytes, digest: str) -> tuple[str, str] | None:
    """Why a verified payload does not sign `digest` (reason code, text), or None when it does."""
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        return "not-a-statement", f"the payload type is {payload_type!r}, not {IN_TOTO_PAYLOAD_TYPE!r}"
    try:
        statement = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "not-a-statement", "the signed payload is not JSON"
    kind = statement.get("_type") if isinstance(statement, dict) else None
    if kind not in STATEMENT_TYPES:
        return "not-a-statement", f"the signed payload is not an in-toto Statement (_type {kind!r})"
    subjects = statement.get("subject")
    if not isinstance(subjects, list):
        return "not-a-statement", "the signed statement has no subject list"
    wanted = digest.removeprefix("sha256:")
    for subject in subjects:
        digests = subject.get("digest") if isinstance(subject, dict) else None
        value = digests.get("sha256") if isinstance(digests, dict) else None
        if isinstance(value, str) and value.lower() == wanted:
            return None
    return "subject-mismatch", (
        f"subject mismatch: the signed statement is about {_describe(subjects)}, not {digest}"
    )


def _describe(subjects: list[Any]) -> str:
    """`name (alg:hexprefix…)` for the first few subjects of a statement."""
    if not subjects:
        return "no subject"
    parts = []
    for subject in subjects[:_EXPLAINED]:
        if not isinstance(subject, dict):
            parts.append("a malformed subject")
            continue
        name = subject.get("name")
        digests = subject.get("digest")
        pairs = (
            [f"{alg}:{str(value)[:12]}…" for alg, value in sorted(digests.items())]
            if isinstance(digests, dict)
            else []
        )
        label = str(name) if isinstance(name, str) and name else "an unnamed subject"
        parts.append(f"{label} ({', '.join(pairs) or 'no digest'})")
    more = f" and {len(subjects) - _EXPLAINED} more" if len(subjects) > _EXPLAINED else ""
    return ", ".join(parts) + more


# --- small helpers --------------------------------------------------------------------------------


def _mirror_dir(mirror: str, digest: str) -> str:
    return posixpath.join(mirror, "signatures", digest.replace(":", "-", 1))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _facts(digest: str, finding: _Finding) -> dict[str, object]:
    facts: dict[str, object] = {"digest": digest, "status": finding.status}
    if finding.signed is not None:
        signed = finding.signed
        facts.update(
            bundle=signed.bundle,
            origin=signed.origin,
            sha256=signed.sha256,
            key=signed.key.hint,
            keyPath=signed.key.source,
        )
        return facts
    if finding.rejected:
        facts["rejected"] = [
            {"bundle": r.bundle, "sha256": r.sha256, "reason": r.reason}
            for r in finding.rejected[:_FACT_REJECTED]
        ]
        facts["rejectedCount"] = len(finding.rejected)
    if finding.error is not None:
        facts["error"] = str(finding.error)
    return facts


signature = SignatureGate(registry=False)
"""The entry point object (`stella.gates`: `signature`): bundles from the offline mirror."""

signature_registry = SignatureGate(registry=True)
"""The entry point object (`stella.gates`: `signature-registry`): the mirror, then OCI referrers."""
