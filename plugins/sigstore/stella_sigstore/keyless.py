"""Keyless evidence signing with Sigstore, its offline verification, and witnessing.

Signing (`keyless`, entry point `stella.signers`): sigstore-python asks Fulcio for a short-lived
certificate binding an ephemeral key to the signer's OIDC identity, signs the statement as a DSSE
envelope, and logs the signature in Rekor; the result is a Sigstore bundle v0.3 with the certificate and
the log entry's inclusion proof. The identity token comes from a reference (`env:NAME`, default
`env:SIGSTORE_ID_TOKEN`, or `file:/path`), else from ambient CI credentials. The instance is the
public-good one, or a private one described by the ClientTrustConfig file in
`STELLA_SIGSTORE_TRUST_CONFIG`. Signing needs the network; every failure of the services is `Transient`.

Verification (`verify_keyless`, `KeylessVerifier`) is offline: the trusted root is pinned in the
repository (`trustedRoot` of `trust/keyless.yaml`) and the certificate's identity must be one the policy
allows (SAN and OIDC issuer). Failures are `BundleError`s, like those of key-based bundles.

Witnessing (`witness`) signs the exact bytes of an existing statement keylessly; the bundle is stored
beside the key-based one as `evidence/<hex>.keyless.sigstore.json`.

This module is the face of keyless: the `keyless` plugin object, witnessing, and the names other
code imports. The work is done by its siblings: `keyless_trust` (the policy, the pinned trusted root,
the instance's trust config), `keyless_signer` (tokens, Fulcio, Rekor) and `keyless_verifier`
(offline verification).

This module signs exactly the bytes it is given and never re-serialises a payload. It never prints;
verification never touches the network. Importing it (as plugin discovery does in every process) does
not import sigstore: the siblings import it where it is used.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Mapping

from reconciler.api import (
    IN_TOTO_PAYLOAD_TYPE,
    FileSource,
    InvalidInput,
    PluginError,
    PluginManifest,
    Signer,
    TrustFile,
)

from . import __version__
from .keyless_signer import DEFAULT_TOKEN_REF, SIGSTORE_TIMEOUT, KeylessSigner, bounded, identity_token
from .keyless_trust import (
    KEYLESS_POLICY_PATH,
    MAX_POLICY_BYTES,
    TRUST_CONFIG_ENV,
    KeylessIdentity,
    KeylessPolicy,
    load_keyless_policy,
    parse_keyless_policy,
    pinned_root_path,
    read_trusted_root,
    trust_config,
)
from .keyless_verifier import KeylessVerifier, VerifiedKeyless, verify_keyless

__all__ = [
    "DEFAULT_TOKEN_REF",
    "KEYLESS_POLICY_PATH",
    "MAX_POLICY_BYTES",
    "SIGSTORE_TIMEOUT",
    "TRUST_CONFIG_ENV",
    "KeylessIdentity",
    "KeylessPolicy",
    "KeylessSigner",
    "KeylessVerifier",
    "VerifiedKeyless",
    "bounded",
    "identity_token",
    "keyless",
    "load_keyless_policy",
    "parse_keyless_policy",
    "read_trusted_root",
    "trust_config",
    "verify_keyless",
    "witness",
    "witness_path",
]

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# --- the plugin ---------------------------------------------------------------------------------


class _KeylessSignerPlugin:
    """The `keyless` signer plugin (entry point `stella.signers`)."""

    def __init__(self) -> None:
        self.manifest = PluginManifest(
            name="keyless",
            version=__version__,
            kinds=("signer",),
            network=True,
            description="Sigstore keyless: Fulcio certificate for an OIDC identity + Rekor entry",
        )

    def open(self, key: str, environ: Mapping[str, str]) -> KeylessSigner:
        """Check the token and trust config now; the services are contacted at the first `sign`."""
        token = identity_token(key, environ)
        config = trust_config(environ)
        log.debug("keyless signer for %s (issuer %s)", token.identity, token.issuer)
        return KeylessSigner(token, config)

    def trust_files(self, files: FileSource) -> list[TrustFile]:
        """`trust/keyless.yaml`, and the trusted root it pins when it names a plain repository path
        (an unreadable policy still counts: `open_verifier` then says what is wrong with it)."""
        raw = files.read(KEYLESS_POLICY_PATH)
        if raw is None:
            return []
        root = pinned_root_path(raw)
        return [TrustFile(KEYLESS_POLICY_PATH)] + ([TrustFile(root, trusted_root=True)] if root else [])

    def open_verifier(self, files: FileSource) -> _PolicyVerifier | None:
        """A verifier of keyless evidence bundles under the repository's `trust/keyless.yaml` (None
        when the repository has no such policy)."""
        keyless_policy = load_keyless_policy(files)
        if keyless_policy is None:
            return None
        return _PolicyVerifier(KeylessVerifier(keyless_policy, read_trusted_root(files, keyless_policy)))


class _PolicyVerifier:
    """`BundleVerifier` over a `KeylessVerifier`: returns the certificate identity that signed."""

    def __init__(self, verifier: KeylessVerifier) -> None:
        self._verifier = verifier

    def verify(self, bundle: bytes, payload: bytes, *, source: str) -> str:
        matched = self._verifier.verify(bundle, payload, source=source).identity
        return f"{matched.san} ({matched.issuer})"


keyless = _KeylessSignerPlugin()


# --- witnessing ---------------------------------------------------------------------------------


def witness_path(evidence_hex: str) -> str:
    """Where the keyless witness of `evidence/<hex>.json` is stored."""
    if not _HEX64.match(evidence_hex):
        raise InvalidInput(f"{evidence_hex!r} is not an evidence id (64 lowercase hex digits)")
    return f"evidence/{evidence_hex}.keyless.sigstore.json"


def witness(statement: bytes, signer: Signer) -> bytes:
    """A keyless bundle over exactly `statement` (the bytes of `evidence/<hex>.json`), made by `signer`.

    It adds an identity and a transparency-log time to evidence first signed offline with a key; it is
    stored beside the key-based bundle (`witness_path`), which does not change. `InvalidInput` when the
    signer is not keyless; `PluginError` when the bundle does not carry exactly these bytes.
    """
    bundle = signer.sign(statement, IN_TOTO_PAYLOAD_TYPE)
    try:
        doc = json.loads(bundle.decode("utf-8"))
        material = doc["verificationMaterial"]
        signed = base64.b64decode(doc["dsseEnvelope"]["payload"], validate=True)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise PluginError(f"witness: the signer returned no DSSE bundle: {exc}") from exc
    if "publicKey" in material or not material.get("tlogEntries"):
        raise InvalidInput(
            "witness: the signer made a key-based bundle; witnessing needs the keyless signer "
            "(plugin keyless), which adds a certificate and a transparency-log entry"
        )
    if signed != statement:
        raise PluginError("witness: the signer's bundle does not carry the statement's exact bytes")
    return bundle
