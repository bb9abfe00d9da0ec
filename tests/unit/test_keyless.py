"""stella_sigstore.keyless without a Sigstore instance: the policy file, the signer's configuration
errors, the plugin contract, and offline verification of real public-good bundles.

The real-world bundles and trusted roots are in ../shared/testdata/sigstore/, unedited (altered
variants are made in memory). Signing end to end is in tests/e2e/test_keyless.py.
"""

from __future__ import annotations

import base64
import json
import threading
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from stella_sigstore import __version__
from stella_sigstore.keyless import (
    KEYLESS_POLICY_PATH,
    TRUST_CONFIG_ENV,
    KeylessIdentity,
    KeylessPolicy,
    KeylessSigner,
    VerifiedKeyless,
    bounded,
    keyless,
    load_keyless_policy,
    parse_keyless_policy,
    read_trusted_root,
    verify_keyless,
    witness_path,
)

from reconciler.api import (
    IN_TOTO_PAYLOAD_TYPE,
    BundleError,
    InvalidInput,
    SignerPlugin,
    Transient,
    ValidationFailed,
)
from reconciler.discover import check
from tests.support.oci import DirFiles
from tests.support.sigstore_mock import dummy_token

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "sigstore"
PROD_ROOT = (TESTDATA / "trusted_root.production.json").read_bytes()
STAGING_ROOT = (TESTDATA / "staging-rekor-v2.trusted_root.json").read_bytes()
PROD_DSSE = (TESTDATA / "prod-keyless-dsse-v0.3.sigstore.json").read_bytes()
PROD_PAYLOAD = base64.b64decode(json.loads(PROD_DSSE)["dsseEnvelope"]["payload"])
BEACON = (
    "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/"
    "extremely-dangerous-oidc-beacon.yml@refs/heads/main"
)
GHA = "https://token.actions.githubusercontent.com"

GOOD_POLICY = b"""\
apiVersion: stella/v1
kind: KeylessPolicy
trustedRoot: trust/sigstore/trusted_root.json
identities:
  - san: https://github.com/acme/shop/.github/workflows/release.yml@refs/heads/main
    issuer: https://token.actions.githubusercontent.com
  - {san: release-bot@example.com, issuer: https://accounts.google.com}
"""


def _policy(*identities: tuple[str, str]) -> KeylessPolicy:
    return KeylessPolicy(
        apiVersion="stella/v1",
        kind="KeylessPolicy",
        trustedRoot="trust/sigstore/trusted_root.json",
        identities=[KeylessIdentity(san=san, issuer=issuer) for san, issuer in identities],
    )


PROD_POLICY = _policy((BEACON, GHA))

# --- the policy file ----------------------------------------------------------------------------


def test_a_policy_file_parses() -> None:
    assert parse_keyless_policy(GOOD_POLICY) == _policy(
        ("https://github.com/acme/shop/.github/workflows/release.yml@refs/heads/main", GHA),
        ("release-bot@example.com", "https://accounts.google.com"),
    )


def _with(old: bytes, new: bytes) -> bytes:
    assert old in GOOD_POLICY
    return GOOD_POLICY.replace(old, new)


BAD_POLICIES = [
    ("unknown-field", GOOD_POLICY + b"extra: 1\n", "trust/keyless.yaml:8: unknown field 'extra'"),
    (
        "unknown-identity-field",
        _with(b"{san: release-bot", b"{email: x, san: release-bot"),
        "trust/keyless.yaml:7: unknown field 'identities.1.email'",
    ),
    (
        "missing-identities",
        GOOD_POLICY.split(b"identities:")[0],
        "trust/keyless.yaml:1: missing required field 'identities'",
    ),
    (
        "no-identities",
        GOOD_POLICY.split(b"identities:")[0] + b"identities: []\n",
        "trust/keyless.yaml:4: identities: List should have at least 1 item after validation, not 0",
    ),
    (
        "issuer-not-a-url",
        _with(b"issuer: https://token.actions.githubusercontent.com", b"issuer: token.actions"),
        "trust/keyless.yaml:6: identities.0.issuer: 'token.actions' is not an OIDC issuer URL "
        "(e.g. https://token.actions.githubusercontent.com)",
    ),
    (
        "san-not-a-string",
        _with(b"san: release-bot@example.com", b"san: 42"),
        "trust/keyless.yaml:7: identities.1.san: Input should be a valid string",
    ),
    (
        "root-outside",
        _with(b"trust/sigstore/trusted_root.json", b"../trusted_root.json"),
        "trust/keyless.yaml:3: trustedRoot: '../trusted_root.json' must be a relative path inside the "
        "repository (no '..', no '/')",
    ),
    (
        "api-version",
        _with(b"apiVersion: stella/v1", b"apiVersion: stella/v2"),
        "trust/keyless.yaml:1: apiVersion must be 'stella/v1', not 'stella/v2'",
    ),
    (
        "kind",
        _with(b"kind: KeylessPolicy", b"kind: Groups"),
        "trust/keyless.yaml:2: kind must be 'KeylessPolicy' here, not 'Groups'",
    ),
    (
        "duplicate-key",
        GOOD_POLICY + b"trustedRoot: trust/other.json\n",
        "trust/keyless.yaml:8: duplicate key 'trustedRoot'",
    ),
    (
        "alias",
        _with(b"issuer: https://token.actions.githubusercontent.com", b"issuer: &gha https://x.example")
        + b"  - {san: other, issuer: *gha}\n",
        "trust/keyless.yaml:6: YAML anchors and aliases are not allowed",
    ),
    (
        "syntax",
        _with(b"identities:\n", b"identities: [\n"),
        "trust/keyless.yaml:5: YAML syntax error: expected the node content, but found '-'",
    ),
    (
        "not-a-mapping",
        b"- apiVersion: stella/v1\n",
        "trust/keyless.yaml: expected a mapping of fields (apiVersion, kind, trustedRoot, identities)",
    ),
    (
        "empty",
        b"",
        "trust/keyless.yaml: expected a mapping of fields (apiVersion, kind, trustedRoot, identities)",
    ),
    (
        "not-utf8",
        GOOD_POLICY + b"# \xff\n",
        f"trust/keyless.yaml: not UTF-8 text (byte {len(GOOD_POLICY) + 2})",
    ),
    (
        "too-big",
        GOOD_POLICY + b"#" * 70_000 + b"\n",
        f"trust/keyless.yaml: file is {len(GOOD_POLICY) + 70_001} bytes, over the 65536-byte limit",
    ),
]


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in BAD_POLICIES], ids=[c[0] for c in BAD_POLICIES])
def test_a_bad_policy_file_is_invalid_input(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_keyless_policy(data)
    assert type(caught.value) is InvalidInput
    assert str(caught.value) == message


def test_every_problem_of_a_policy_is_listed() -> None:
    data = _with(b"issuer: https://accounts.google.com", b"issuer: google") + b"extra: 1\n"
    with pytest.raises(ValidationFailed) as caught:
        parse_keyless_policy(data, source="repo/trust/keyless.yaml")
    assert caught.value.diagnostics() == (
        "repo/trust/keyless.yaml:7: identities.1.issuer: 'google' is not an OIDC issuer URL "
        "(e.g. https://token.actions.githubusercontent.com)\n"
        "repo/trust/keyless.yaml:8: unknown field 'extra'"
    )


def test_the_policy_and_its_root_load_from_the_repository(tmp_path: Path) -> None:
    files = DirFiles(tmp_path)
    assert load_keyless_policy(files) is None
    (tmp_path / "trust").mkdir()
    (tmp_path / KEYLESS_POLICY_PATH).write_bytes(GOOD_POLICY)
    policy = load_keyless_policy(files)
    assert policy is not None
    with pytest.raises(InvalidInput) as caught:
        read_trusted_root(files, policy)
    assert str(caught.value) == (
        "trust/sigstore/trusted_root.json: trusted root not found (named by trust/keyless.yaml)"
    )
    (tmp_path / "trust" / "sigstore").mkdir()
    (tmp_path / "trust" / "sigstore" / "trusted_root.json").write_bytes(PROD_ROOT)
    assert read_trusted_root(files, policy) == PROD_ROOT


# --- offline verification of real public-good bundles --------------------------------------------


def test_a_public_good_dsse_bundle_verifies_offline() -> None:
    verified = verify_keyless(PROD_DSSE, PROD_PAYLOAD, PROD_POLICY, PROD_ROOT, source="prod.sigstore.json")
    assert verified == VerifiedKeyless(
        payload=PROD_PAYLOAD,
        payload_type=IN_TOTO_PAYLOAD_TYPE,
        identity=KeylessIdentity(san=BEACON, issuer=GHA),
        log_index=155690850,
        integrated_time=datetime(2024, 12, 16, 18, 42, 56, tzinfo=UTC),
    )


def test_a_public_good_bundle_by_another_identity_is_rejected() -> None:
    policy = _policy(("https://github.com/acme/shop/.github/workflows/release.yml@refs/heads/main", GHA))
    with pytest.raises(BundleError) as caught:
        verify_keyless(PROD_DSSE, PROD_PAYLOAD, policy, PROD_ROOT, source="prod.sigstore.json")
    assert (caught.value.reason, str(caught.value)) == (
        "identity",
        f"prod.sigstore.json: identity not allowed: the certificate names {BEACON} (issuer {GHA}), which "
        "trust/keyless.yaml does not allow (allowed: "
        f"https://github.com/acme/shop/.github/workflows/release.yml@refs/heads/main (issuer {GHA}))",
    )


def test_a_public_good_bundle_does_not_verify_against_the_staging_root() -> None:
    with pytest.raises(BundleError) as caught:
        verify_keyless(PROD_DSSE, PROD_PAYLOAD, PROD_POLICY, STAGING_ROOT, source="prod.sigstore.json")
    assert caught.value.reason == "not-verified"
    assert str(caught.value).startswith("prod.sigstore.json: keyless verification failed: ")


@pytest.mark.parametrize(
    ("name", "reason", "message"),
    [
        (
            "prod-key-hashedrekord-v0.3.sigstore.json",
            "unsupported",
            "b.json: a key-based bundle, not a keyless one: verify it with the evidence keys",
        ),
        (
            "prod-keyless-hashedrekord-v0.3.sigstore.json",
            "unsupported",
            "b.json: not a DSSE bundle (it has no dsseEnvelope)",
        ),
        ("npm-sigstore-1.3.0-provenance.sigstore.json", "malformed", None),
    ],
    ids=["key-based", "message-signature", "v0.1-without-inclusion-proof"],
)
def test_bundles_it_cannot_take_are_rejected(name: str, reason: str, message: str | None) -> None:
    with pytest.raises(BundleError) as caught:
        verify_keyless((TESTDATA / name).read_bytes(), PROD_PAYLOAD, PROD_POLICY, PROD_ROOT, source="b.json")
    assert caught.value.reason == reason
    if message is not None:
        assert str(caught.value) == message


@pytest.mark.parametrize(
    ("bundle", "message"),
    [
        (b"\xff", "b.json: malformed Sigstore bundle: not JSON: "),
        (b"[]", "b.json: malformed Sigstore bundle: expected a JSON object with verificationMaterial"),
    ],
    ids=["not-utf8", "not-an-object"],
)
def test_malformed_bundles_are_rejected(bundle: bytes, message: str) -> None:
    with pytest.raises(BundleError) as caught:
        verify_keyless(bundle, PROD_PAYLOAD, PROD_POLICY, PROD_ROOT, source="b.json")
    assert caught.value.reason == "malformed"
    assert str(caught.value).startswith(message)


def test_an_unusable_trusted_root_is_invalid_input() -> None:
    with pytest.raises(InvalidInput) as caught:
        verify_keyless(PROD_DSSE, PROD_PAYLOAD, PROD_POLICY, b'{"mediaType": "nope"}', source="b.json")
    assert str(caught.value).startswith(
        "trust/sigstore/trusted_root.json: not a usable Sigstore trusted root: "
    )


# --- the signer: configuration errors, before any network ------------------------------------------

SAN = "https://ci.example.com/shop/release-pipeline@refs/heads/main"
ISSUER = "https://issuer.ci.example.com"
STATEMENT = b'{"_type":"https://in-toto.io/Statement/v1","predicate":{},"predicateType":"https://x.test/v1",'
STATEMENT += b'"subject":[{"digest":{"sha256":"' + b"ab" * 32 + b'"},"name":"x"}]}'
CI_VARIABLES = ("GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "CIRCLECI", "GOOGLE_SERVICE_ACCOUNT_NAME")


@pytest.fixture
def no_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ambient CI credentials (sigstore detects them in the process environment)."""
    for name in CI_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_the_plugin_satisfies_the_signer_contract() -> None:
    assert (keyless.manifest.name, keyless.manifest.version) == ("keyless", __version__)
    assert (keyless.manifest.kinds, keyless.manifest.network) == (("signer",), True)
    assert isinstance(keyless, SignerPlugin)
    assert check(keyless, SignerPlugin, offline=False) is None
    assert check(keyless, SignerPlugin, offline=True) == (
        "plugin 'keyless' needs the network and offline mode is on "
        "(`offline: true` in stella.yaml, or --offline)"
    )
    (ep,) = [ep for ep in entry_points(group="stella.signers") if ep.name == "keyless"]
    assert ep.value == "stella_sigstore.keyless:keyless"
    assert ep.load() is keyless


def test_a_token_from_the_environment_or_a_file(tmp_path: Path) -> None:
    token = dummy_token(SAN, ISSUER)
    (tmp_path / "token").write_text(token + "\n")
    for ref, environ in [
        ("env:SIGSTORE_ID_TOKEN", {"SIGSTORE_ID_TOKEN": token}),
        ("", {"SIGSTORE_ID_TOKEN": token}),
        ("env:CI_TOKEN", {"CI_TOKEN": f" {token}\n"}),
        (f"file:{tmp_path / 'token'}", {}),
    ]:
        signer = keyless.open(ref, environ)
        assert isinstance(signer, KeylessSigner)
        assert repr(signer) == f"KeylessSigner(identity={SAN!r}, issuer={ISSUER!r}, instance='public-good')"


@pytest.mark.usefixtures("no_ci")
@pytest.mark.parametrize(
    ("ref", "environ", "message"),
    [
        (
            "env:SIGSTORE_ID_TOKEN",
            {},
            "no OIDC identity token for keyless signing: environment variable SIGSTORE_ID_TOKEN is not set "
            "and no ambient CI credentials were found; set it to an OIDC token (JWT) whose audience is "
            "'sigstore', or run where the CI system provides one (GitHub Actions with "
            "`permissions: id-token: write`, GitLab CI `id_tokens: SIGSTORE_ID_TOKEN: {aud: sigstore}`, "
            "Buildkite, CircleCI, Google Cloud)",
        ),
        (
            "env:STELLA_SIGNING_KEY",
            {"STELLA_SIGNING_KEY": "/home/ci/.stella/evidence.pem"},
            "environment variable STELLA_SIGNING_KEY does not hold an OIDC identity token (a JWT) (it looks "
            "like a key or a path: the `key:` reference of the key signer, env:STELLA_SIGNING_KEY, does not "
            "apply to the keyless signer); keyless signing needs one whose audience is 'sigstore'",
        ),
        (
            "env:SIGSTORE_ID_TOKEN",
            {"SIGSTORE_ID_TOKEN": dummy_token(SAN, ISSUER, issued_at=1_700_000_000)},
            "environment variable SIGSTORE_ID_TOKEN: unusable OIDC identity token: Identity token is "
            "malformed or missing claims: Signature has expired",
        ),
        (
            "env:SIGSTORE_ID_TOKEN",
            {"SIGSTORE_ID_TOKEN": dummy_token(SAN, ISSUER, audience="kubernetes")},
            "environment variable SIGSTORE_ID_TOKEN: unusable OIDC identity token: Identity token is "
            "malformed or missing claims: Audience doesn't match",
        ),
        (
            "file:/nonexistent/token",
            {},
            "/nonexistent/token: cannot read the OIDC identity token: [Errno 2] No such file or directory: "
            "'/nonexistent/token'",
        ),
        (
            "plugin:vault:ci/token",
            {},
            "identity token reference 'plugin:vault:ci/token': expected env:NAME (a variable holding an OIDC "
            "token, default env:SIGSTORE_ID_TOKEN) or file:/path",
        ),
    ],
    ids=["no-token", "a-key-path", "expired", "wrong-audience", "missing-file", "unsupported-reference"],
)
def test_a_missing_or_unusable_token_is_invalid_input(
    ref: str, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        keyless.open(ref, environ)
    assert str(caught.value) == message
    assert "eyJ" not in str(caught.value)  # no part of a token (a JWT's header starts so) is echoed


def test_an_unusable_trust_config_is_invalid_input(tmp_path: Path) -> None:
    token = {"SIGSTORE_ID_TOKEN": dummy_token(SAN, ISSUER)}
    missing = tmp_path / "missing.json"
    with pytest.raises(InvalidInput) as caught:
        keyless.open("env:SIGSTORE_ID_TOKEN", {**token, TRUST_CONFIG_ENV: str(missing)})
    assert str(caught.value) == (
        f"{missing}: cannot read the Sigstore trust config (STELLA_SIGSTORE_TRUST_CONFIG): "
        f"[Errno 2] No such file or directory: '{missing}'"
    )
    for content in ["{", "{}", json.dumps({"mediaType": "x"}), PROD_ROOT.decode()]:
        (tmp_path / "tc.json").write_text(content)
        with pytest.raises(InvalidInput) as caught:
            keyless.open("env:SIGSTORE_ID_TOKEN", {**token, TRUST_CONFIG_ENV: str(tmp_path / "tc.json")})
        assert str(caught.value).startswith(
            f"{tmp_path / 'tc.json'}: not a usable Sigstore ClientTrustConfig "
            "(STELLA_SIGSTORE_TRUST_CONFIG): "
        )


def test_only_in_toto_statements_are_signed() -> None:
    signer = keyless.open("env:T", {"T": dummy_token(SAN, ISSUER)})
    with pytest.raises(InvalidInput) as caught:
        signer.sign(STATEMENT, "application/json")
    assert str(caught.value) == (
        "keyless signing signs in-toto statements (application/vnd.in-toto+json) only, not 'application/json'"
    )
    with pytest.raises(InvalidInput) as caught:
        signer.sign(b'{"_type": "https://in-toto.io/Statement/v1"}')
    assert str(caught.value).startswith("keyless signing: the payload is not an in-toto statement: ")


def test_witness_paths() -> None:
    assert witness_path("ab" * 32) == f"evidence/{'ab' * 32}.keyless.sigstore.json"
    for bad in ["AB" * 32, "ab" * 31, "../x", ""]:
        with pytest.raises(InvalidInput):
            witness_path(bad)


def test_a_sigstore_call_that_never_answers_is_a_transient_error() -> None:
    """sigstore-python sets no network timeout: each call runs bounded, and a hang costs one thread."""
    stuck = threading.Event()
    with pytest.raises(
        Transient, match=r"^keyless signing: logging the signature in Rekor did not answer within 0.2s$"
    ):
        bounded(lambda: stuck.wait(30), "logging the signature in Rekor", timeout=0.2)
    stuck.set()
    assert bounded(lambda: 42, "anything", timeout=1) == 42
    with pytest.raises(ValueError, match="raised where it ran"):
        bounded(lambda: (_ for _ in ()).throw(ValueError("raised where it ran")), "anything", timeout=1)
