"""The `oci` plugin's client: tags to digests, and reading manifests, blobs and referrers.

Tests marked `registry` push images with skopeo to the real CNCF distribution registry and compare
with what skopeo reports; referrers are attached there with the distribution API (monolithic blob
uploads, manifests, the referrers tag schema: distribution 2.8 has no referrers API). The others talk
to a `ScriptedServer` on loopback: a registry that fails on purpose (5xx, 429, slowness, nothing
listening), that demands authentication, or that has the referrers API.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from stella_oci.distribution import MANIFEST_MEDIA_TYPES, Descriptor, DistributionRegistry, plugin

from reconciler.api import InvalidInput, PluginError, Registry, RegistryOptions, RegistryUnavailable, parse
from tests.support.oci import OCI_INDEX, OCI_MANIFEST, DirFiles
from tests.support.registry import (
    ImagePusher,
    RegistryServer,
    Reply,
    Script,
    ScriptedServer,
    Seen,
    free_port,
    skopeo_digest,
)

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "oci"
FAST = {"timeout": 0.3, "attempts": 3, "backoff": 0.01, "max_delay": 0.05}
MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
USER, PASSWORD, TOKEN = "alice", "pa55-w0rd-s3cret", "tok-9f8e7d-secret"
REFRESH = "refresh-7c6b5a-secret"


@pytest.fixture(autouse=True)
def _no_docker_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's ~/.docker/config.json out of these tests."""
    empty = tmp_path / "docker-config-empty"
    empty.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(empty))


def open_registry(
    host: str,
    *,
    options: Mapping[str, object] | None = None,
    credentials: str | None = None,
    insecure: bool = False,
) -> DistributionRegistry:
    opts = RegistryOptions(host=host, insecure=insecure, credentials=credentials, options=dict(options or {}))
    return plugin.open(opts, DirFiles(Path("/nonexistent")))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def manifest_reply(seen: Seen) -> Reply:
    headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": DIGEST}
    return Reply(200, headers, MANIFEST)


# -- the real registry -------------------------------------------------------------------------


@pytest.mark.registry
def test_tags_resolve_to_what_skopeo_reports(registry: RegistryServer, push_image: ImagePusher) -> None:
    single = push_image("e2e/single", "1.0", content=b"single 1.0\n")
    multi = push_image("e2e/multi", "2.0", content=b"multi 2.0\n", multi_arch=True)

    with open_registry(registry.host) as reg:
        assert isinstance(reg, Registry)
        ours = {p.ref: reg.resolve(parse(p.ref)) for p in (single, multi)}

    assert ours == {single.ref: skopeo_digest(single.ref), multi.ref: skopeo_digest(multi.ref)}
    assert ours == {single.ref: single.digest, multi.ref: multi.digest}
    # a multi-arch tag is its index, not a platform's manifest
    assert ours[multi.ref] not in multi.platforms.values()
    assert sorted(multi.platforms) == ["linux/amd64", "linux/arm64"]


@pytest.mark.registry
def test_digest_references_are_checked_and_returned(
    registry: RegistryServer, push_image: ImagePusher
) -> None:
    multi = push_image("e2e/bydigest", "1.0", content=b"by digest\n", multi_arch=True)
    repo = f"{registry.host}/e2e/bydigest"
    child = multi.platforms["linux/arm64"]

    with open_registry(registry.host) as reg:
        assert reg.resolve(parse(f"{repo}@{multi.digest}")) == multi.digest
        assert reg.resolve(parse(f"{repo}:1.0@{multi.digest}")) == multi.digest
        assert reg.resolve(parse(f"{repo}@{child}")) == child


@pytest.mark.registry
def test_missing_images_are_invalid_input(registry: RegistryServer, push_image: ImagePusher) -> None:
    push_image("e2e/present", "1.0", content=b"present\n")
    host = registry.host
    nowhere = "sha256:" + "0" * 64
    cases = {
        f"{host}/e2e/present:nope": (
            f"image {host}/e2e/present:nope does not exist: repository 'e2e/present' "
            f"in registry {host} has no tag 'nope'"
        ),
        f"{host}/e2e/absent:1.0": (
            f"image {host}/e2e/absent:1.0 does not exist: registry {host} has no repository 'e2e/absent'"
        ),
        f"{host}/e2e/present@{nowhere}": (
            f"image {host}/e2e/present@{nowhere} does not exist: repository 'e2e/present' "
            f"in registry {host} has no manifest {nowhere}"
        ),
    }
    with open_registry(host) as reg:
        for text, message in cases.items():
            with pytest.raises(InvalidInput) as caught:
                reg.resolve(parse(text))
            assert str(caught.value) == message
            assert caught.value.exit_code == 2


@pytest.mark.registry
def test_a_moved_tag_resolves_to_its_new_digest(registry: RegistryServer, push_image: ImagePusher) -> None:
    first = push_image("e2e/moving", "stable", content=b"version 1\n")
    with open_registry(registry.host) as reg:
        before = reg.resolve(parse(first.ref))
        second = push_image("e2e/moving", "stable", content=b"version 2\n")
        after = reg.resolve(parse(first.ref))

    assert (before, after) == (first.digest, second.digest)
    assert before != after
    assert after == skopeo_digest(first.ref)


@pytest.mark.registry
def test_one_registry_serves_many_threads(registry: RegistryServer, push_image: ImagePusher) -> None:
    pushed = [push_image("e2e/threads", f"t{n}", content=f"thread {n}\n".encode()) for n in range(4)]
    refs = [p.ref for p in pushed] * 25
    with open_registry(registry.host) as reg, ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda text: reg.resolve(parse(text)), refs))
    assert got == [p.digest for p in pushed] * 25


# -- faults ------------------------------------------------------------------------------------


def test_nothing_listening_is_registry_unavailable() -> None:
    host = f"127.0.0.1:{free_port()}"
    with open_registry(host, options=FAST) as reg, pytest.raises(RegistryUnavailable) as caught:
        reg.resolve(parse(f"{host}/app:1.0"))
    assert re.fullmatch(
        rf"registry {host} is unavailable: resolving {host}/app:1\.0 failed with "
        r"connection failed \(.*[Cc]onnection refused.*\) after 3 attempts",
        str(caught.value),
    ), str(caught.value)
    assert caught.value.exit_code == 3


FAULTS: dict[str, tuple[Script, str]] = {
    "500-always": (
        lambda seen: Reply(500, body=b"boom"),
        "HTTP 500 Internal Server Error",
    ),
    "503-with-retry-after": (
        lambda seen: Reply(503, {"Retry-After": "1"}),
        "HTTP 503 Service Unavailable",
    ),
    "429-always": (
        lambda seen: Reply(429, {"Retry-After": "30"}),
        "HTTP 429 Too Many Requests",
    ),
}


@pytest.mark.parametrize(("script", "last"), FAULTS.values(), ids=FAULTS.keys())
def test_failing_registry_is_retried_then_unavailable(script: Script, last: str) -> None:
    with ScriptedServer(script) as server:
        started = time.monotonic()
        with open_registry(server.host, options=FAST) as reg, pytest.raises(RegistryUnavailable) as caught:
            reg.resolve(parse(f"{server.host}/app:1.0"))
        elapsed = time.monotonic() - started
        assert str(caught.value) == (
            f"registry {server.host} is unavailable: resolving {server.host}/app:1.0 failed with "
            f"{last} after 3 attempts"
        )
        assert [(r.method, r.path) for r in server.requests] == [("HEAD", "/v2/app/manifests/1.0")] * 3
    assert elapsed < 1.0, "Retry-After must be capped by max_delay"


def test_429_then_200_succeeds_on_retry() -> None:
    def script(seen: Seen) -> Reply:
        if len(server.requests) == 1:
            return Reply(429, {"Retry-After": "0"})
        return manifest_reply(seen)

    with ScriptedServer(script) as server, open_registry(server.host, options=FAST) as reg:
        assert reg.resolve(parse(f"{server.host}/app:1.0")) == DIGEST
        assert server.count("HEAD", "/v2/app/manifests/1.0") == 2
        assert len(server.requests) == 2


def test_slow_registry_times_out() -> None:
    options = {**FAST, "timeout": 0.2, "attempts": 2}
    with ScriptedServer(lambda seen: Reply(200, delay=5.0)) as server:
        started = time.monotonic()
        with open_registry(server.host, options=options) as reg, pytest.raises(RegistryUnavailable) as caught:
            reg.resolve(parse(f"{server.host}/app:1.0"))
        elapsed = time.monotonic() - started
        assert server.count("HEAD") == 2
    assert str(caught.value) == (
        f"registry {server.host} is unavailable: resolving {server.host}/app:1.0 failed with "
        "timed out after 0.2 s (ReadTimeout) after 2 attempts"
    )
    assert elapsed < 2.0


def test_without_digest_header_the_manifest_bytes_are_hashed() -> None:
    body = (TESTDATA / "trivy-test.oci.manifest.json").read_bytes()

    def script(seen: Seen) -> Reply:
        if seen.method == "HEAD":
            return Reply(405)
        return Reply(200, {"Content-Type": OCI_MANIFEST}, body)

    with ScriptedServer(script) as server, open_registry(server.host, options=FAST) as reg:
        digest = reg.resolve(parse(f"{server.host}/trivy/test:latest"))
        accepted = server.requests[0].headers["accept"]
    assert digest == "sha256:afb744871f99e0ff8e6f253244836ed34c5d805fdb096d3a205ffaf5e9073cab"
    assert [(r.method, r.path) for r in server.requests] == [
        ("HEAD", "/v2/trivy/test/manifests/latest"),
        ("GET", "/v2/trivy/test/manifests/latest"),
    ]
    assert [t.strip() for t in accepted.split(",")] == list(MANIFEST_MEDIA_TYPES)


def test_a_registry_lying_about_the_digest_is_refused() -> None:
    other = "sha256:" + "1" * 64

    def script(seen: Seen) -> Reply:
        if seen.method == "HEAD":
            return Reply(200)  # no digest header: forces the GET
        return Reply(200, {"Docker-Content-Digest": other}, MANIFEST)

    with (
        ScriptedServer(script) as server,
        open_registry(server.host, options=FAST) as reg,
        pytest.raises(RegistryUnavailable) as caught,
    ):
        reg.resolve(parse(f"{server.host}/app:1.0"))
    assert str(caught.value) == (
        f"registry {server.host} served a manifest for {server.host}/app:1.0 whose sha256 is "
        f"{DIGEST}, but said it is {other}"
    )


# -- authentication ----------------------------------------------------------------------------


class TokenRegistry:
    """A registry demanding Bearer tokens from its own `/token` realm, as distribution does."""

    def __init__(self, *, anonymous: bool = False) -> None:
        self.anonymous = anonymous
        self.server = ScriptedServer(self.answer)

    def answer(self, seen: Seen) -> Reply:
        if seen.path.startswith("/token") and seen.method == "POST":  # OAuth2 refresh token grant
            form = parse_qs(seen.body.decode())
            if form.get("grant_type") != ["refresh_token"] or form.get("refresh_token") != [REFRESH]:
                return Reply(401)
            body = json.dumps({"access_token": TOKEN, "expires_in": 300}).encode()
            return Reply(200, {"Content-Type": "application/json"}, body)
        if seen.path.startswith("/token"):
            if not self.anonymous and seen.headers.get("authorization") != basic(USER, PASSWORD):
                return Reply(401, body=b'{"details":"bad credentials"}')
            body = json.dumps({"token": TOKEN, "expires_in": 300}).encode()
            return Reply(200, {"Content-Type": "application/json"}, body)
        if seen.headers.get("authorization") != f"Bearer {TOKEN}":
            challenge = (
                f'Bearer realm="{self.server.url}/token",service="test-registry",scope="repository:app:pull"'
            )
            return Reply(401, {"WWW-Authenticate": challenge}, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
        return manifest_reply(seen)


@pytest.fixture
def token_registry() -> Iterator[TokenRegistry]:
    registry = TokenRegistry()
    with registry.server:
        yield registry


def _env_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str | None:
    monkeypatch.setenv("STELLA_TEST_REGISTRY_AUTH", f"{USER}:{PASSWORD}")
    return "env:STELLA_TEST_REGISTRY_AUTH"


def _file_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str | None:
    path = tmp_path / "registry-auth"
    path.write_text(f"{USER}:{PASSWORD}\n")
    return f"file:{path}"


def _docker_config(host: str) -> Callable[[Path, pytest.MonkeyPatch], str | None]:
    def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str | None:
        config = tmp_path / "docker"
        config.mkdir()
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        (config / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(config))
        return None

    return setup


@pytest.mark.parametrize("source", ["env", "file", "docker-config"])
def test_bearer_token_is_fetched_with_credentials_used_and_cached(
    source: str, token_registry: TokenRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = token_registry.server
    setups = {
        "env": _env_credentials,
        "file": _file_credentials,
        "docker-config": _docker_config(server.host),
    }
    credentials = setups[source](tmp_path, monkeypatch)

    with open_registry(server.host, credentials=credentials, options=FAST) as reg:
        first = reg.resolve(parse(f"{server.host}/app:1.0"))
        second = reg.resolve(parse(f"{server.host}/app:2.0"))

    assert (first, second) == (DIGEST, DIGEST)
    token_requests = [r for r in server.requests if r.path.startswith("/token")]
    assert len(token_requests) == 1, "the token is cached per scope"
    query = parse_qs(urlsplit(token_requests[0].path).query)
    assert query == {"scope": ["repository:app:pull"], "service": ["test-registry"]}
    assert token_requests[0].headers["authorization"] == basic(USER, PASSWORD)
    manifests = [
        (r.method, r.path, r.headers.get("authorization"))
        for r in server.requests
        if r.path.startswith("/v2/")
    ]
    assert manifests == [
        ("HEAD", "/v2/app/manifests/1.0", None),
        ("HEAD", "/v2/app/manifests/1.0", f"Bearer {TOKEN}"),
        ("HEAD", "/v2/app/manifests/2.0", f"Bearer {TOKEN}"),
    ]


def test_docker_identity_token_is_exchanged_for_a_bearer_token(
    token_registry: TokenRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = token_registry.server
    config = tmp_path / "docker"
    config.mkdir()
    auths = {f"https://{server.host}/v1/": {"auth": "", "identitytoken": REFRESH}}
    (config / "config.json").write_text(json.dumps({"auths": auths}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))

    with open_registry(server.host, options=FAST) as reg:
        assert reg.resolve(parse(f"{server.host}/app:1.0")) == DIGEST

    token_requests = [(r.method, r.path) for r in server.requests if r.path.startswith("/token")]
    assert token_requests == [("POST", "/token")]
    form = parse_qs(server.requests[1].body.decode())
    assert form == {
        "grant_type": ["refresh_token"],
        "refresh_token": [REFRESH],
        "client_id": ["stella"],
        "scope": ["repository:app:pull"],
        "service": ["test-registry"],
    }


def test_anonymous_bearer_token() -> None:
    registry = TokenRegistry(anonymous=True)
    with registry.server as server, open_registry(server.host, options=FAST) as reg:
        assert reg.resolve(parse(f"{server.host}/app:1.0")) == DIGEST
        token_requests = [r for r in server.requests if r.path.startswith("/token")]
        assert [r.headers.get("authorization") for r in token_requests] == [None]


def test_wrong_credentials_are_invalid_input_without_the_secret(
    token_registry: TokenRegistry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    monkeypatch.setenv("STELLA_TEST_REGISTRY_AUTH", f"{USER}:wrong-{PASSWORD}")
    host = token_registry.server.host
    with (
        open_registry(host, credentials="env:STELLA_TEST_REGISTRY_AUTH", options=FAST) as reg,
        pytest.raises(InvalidInput) as caught,
    ):
        reg.resolve(parse(f"{host}/app:1.0"))
    assert str(caught.value) == (
        f"registry {host} refused the credentials from env:STELLA_TEST_REGISTRY_AUTH for "
        f"{host}/app:1.0 (HTTP 401): check that they are valid and allow repository:app:pull"
    )
    assert PASSWORD not in caplog.text and TOKEN not in caplog.text


def test_missing_credentials_are_invalid_input(token_registry: TokenRegistry) -> None:
    host = token_registry.server.host
    with open_registry(host, options=FAST) as reg, pytest.raises(InvalidInput) as caught:
        reg.resolve(parse(f"{host}/app:1.0"))
    assert str(caught.value).startswith(
        f"registry {host} requires credentials to pull {host}/app:1.0 (HTTP 401) and none are configured"
    )


def test_basic_auth_is_sent_after_the_challenge_and_then_up_front(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def script(seen: Seen) -> Reply:
        if seen.headers.get("authorization") != basic(USER, PASSWORD):
            return Reply(401, {"WWW-Authenticate": 'Basic realm="test registry"'})
        return manifest_reply(seen)

    monkeypatch.setenv("STELLA_TEST_REGISTRY_AUTH", f"{USER}:{PASSWORD}")
    with (
        ScriptedServer(script) as server,
        open_registry(server.host, credentials="env:STELLA_TEST_REGISTRY_AUTH") as reg,
    ):
        assert reg.resolve(parse(f"{server.host}/app:1.0")) == DIGEST
        assert reg.resolve(parse(f"{server.host}/other:2.0")) == DIGEST
        sent = [(r.path, r.headers.get("authorization")) for r in server.requests]
    assert sent == [
        ("/v2/app/manifests/1.0", None),
        ("/v2/app/manifests/1.0", basic(USER, PASSWORD)),
        ("/v2/other/manifests/2.0", basic(USER, PASSWORD)),
    ]


# -- configuration -----------------------------------------------------------------------------

SCHEMES = {
    "ipv4-loopback": ("127.0.0.1:5000", False, "http://127.0.0.1:5000"),
    "other-127": ("127.8.9.10:5000", False, "http://127.8.9.10:5000"),
    "localhost": ("localhost:5000", False, "http://localhost:5000"),
    "ipv6-loopback": ("[::1]:5000", False, "http://[::1]:5000"),
    "remote": ("registry.example.com", False, "https://registry.example.com"),
    "remote-insecure": ("registry.example.com:5000", True, "http://registry.example.com:5000"),
    "private-address": ("10.0.0.1:5000", False, "https://10.0.0.1:5000"),
    "docker-hub": ("docker.io", False, "https://registry-1.docker.io"),
}


@pytest.mark.parametrize(("host", "insecure", "url"), SCHEMES.values(), ids=SCHEMES.keys())
def test_scheme_follows_docker(host: str, insecure: bool, url: str) -> None:
    with open_registry(host, insecure=insecure) as reg:
        assert reg.url == url


BAD_CONFIG = {
    "zero-timeout": (
        {"options": {"timeout": 0}},
        "registry 127.0.0.1:5000: option timeout must be greater than 0, not 0",
    ),
    "zero-attempts": (
        {"options": {"attempts": 0}},
        "registry 127.0.0.1:5000: option attempts must be an integer >= 1, not 0",
    ),
    "bool-attempts": (
        {"options": {"attempts": True}},
        "registry 127.0.0.1:5000: option attempts must be an integer >= 1, not True",
    ),
    "text-backoff": (
        {"options": {"backoff": "1s"}},
        "registry 127.0.0.1:5000: option backoff must be a number, not '1s'",
    ),
    "unknown-option": (
        {"options": {"retries": 3}},
        "registry 127.0.0.1:5000: unknown option(s) retries (known: attempts, backoff, max_delay, timeout)",
    ),
    "unknown-reference": (
        {"credentials": "vault:registry"},
        "credentials reference 'vault:registry' is not understood: use env:NAME or file:/path",
    ),
    "unset-variable": (
        {"credentials": "env:STELLA_TEST_UNSET_VARIABLE"},
        "credentials env:STELLA_TEST_UNSET_VARIABLE: environment variable "
        "STELLA_TEST_UNSET_VARIABLE is not set",
    ),
    "missing-file": (
        {"credentials": "file:/nonexistent/stella-auth"},
        "credentials file:/nonexistent/stella-auth: cannot read the file (No such file or directory)",
    ),
}


@pytest.mark.parametrize(("config", "message"), BAD_CONFIG.values(), ids=BAD_CONFIG.keys())
def test_bad_configuration_is_invalid_input(config: dict[str, object], message: str) -> None:
    options = config.get("options")
    credentials = config.get("credentials")
    with pytest.raises(InvalidInput) as caught:
        open_registry(
            "127.0.0.1:5000",
            options=options if isinstance(options, dict) else None,
            credentials=credentials if isinstance(credentials, str) else None,
        )
    assert str(caught.value) == message


def test_credentials_without_a_colon_are_refused_without_echoing_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STELLA_TEST_REGISTRY_AUTH", "just-a-secret-token")
    with pytest.raises(InvalidInput) as caught:
        open_registry("127.0.0.1:5000", credentials="env:STELLA_TEST_REGISTRY_AUTH")
    assert str(caught.value) == ("credentials env:STELLA_TEST_REGISTRY_AUTH: expected the form user:password")


def test_a_reference_on_another_host_is_refused() -> None:
    with open_registry("127.0.0.1:5000") as reg, pytest.raises(InvalidInput) as caught:
        reg.resolve(parse("registry.example.com/app:1.0"))
    assert str(caught.value) == (
        "registry.example.com/app:1.0 is not on registry 127.0.0.1:5000, which this entry serves"
    )


# -- reading what is attached to images: manifest, blob, referrers -------------------------------

BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
EMPTY_CONFIG_TYPE = "application/vnd.oci.empty.v1+json"


def upload_blob(client: httpx.Client, repository: str, data: bytes, media_type: str) -> dict[str, object]:
    """A monolithic upload (POST opens the session, one PUT carries the bytes); the blob's descriptor."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    opened = client.post(f"/v2/{repository}/blobs/uploads/")
    assert opened.status_code == 202, opened.text
    location = httpx.URL(opened.headers["location"]).copy_merge_params({"digest": digest})
    done = client.put(location, content=data, headers={"Content-Type": "application/octet-stream"})
    assert done.status_code == 201, done.text
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def put_manifest(client: httpx.Client, repository: str, reference: str, body: bytes, media_type: str) -> str:
    """PUT a manifest (by digest or tag); its digest, as the registry reports it."""
    put = client.put(
        f"/v2/{repository}/manifests/{reference}", content=body, headers={"Content-Type": media_type}
    )
    assert put.status_code == 201, put.text
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    assert put.headers["docker-content-digest"] == digest
    return digest


def push_referrer(
    registry_url: str,
    repository: str,
    subject_digest: str,
    blob: bytes,
    *,
    artifact_type: str = BUNDLE_TYPE,
    layer_type: str = BUNDLE_TYPE,
) -> str:
    """Attach `blob` to `subject_digest` as an OCI 1.1 referrer, the way clients do for registries
    without the referrers API: push the blob, an empty config and a manifest whose `subject` is the
    image, then add it to the index tagged `sha256-<hex>` (the referrers tag schema). Its digest."""
    with httpx.Client(base_url=registry_url, trust_env=False) as client:
        accept = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
        subject = client.get(f"/v2/{repository}/manifests/{subject_digest}", headers=accept)
        assert subject.status_code == 200, subject.text
        config = upload_blob(client, repository, b"{}", EMPTY_CONFIG_TYPE)
        layer = upload_blob(client, repository, blob, layer_type)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": config,
            "layers": [layer],
            "subject": {
                "mediaType": subject.headers["content-type"],
                "digest": subject_digest,
                "size": len(subject.content),
            },
        }
        body = json.dumps(manifest, sort_keys=True).encode()
        digest = put_manifest(client, repository, digest_of(body), body, OCI_MANIFEST)
        tag = subject_digest.replace(":", "-")
        existing = client.get(f"/v2/{repository}/manifests/{tag}", headers={"Accept": OCI_INDEX})
        index = (
            existing.json() if existing.status_code == 200 else {"schemaVersion": 2, "mediaType": OCI_INDEX}
        )
        entries = [
            *index.get("manifests", []),
            {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body)},
        ]
        entries[-1]["artifactType"] = artifact_type
        index["manifests"] = entries
        put_manifest(client, repository, tag, json.dumps(index).encode(), OCI_INDEX)
        return digest


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.registry
def test_manifest_blob_and_referrers_through_the_tag_schema(
    registry: RegistryServer, push_image: ImagePusher
) -> None:
    image = push_image("e2e/attached", "1.0", content=b"attached\n")
    bare = push_image("e2e/attached", "bare", content=b"nothing attached\n")
    repo = f"{registry.host}/e2e/attached"
    bundle = b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}\n'
    first = push_referrer(registry.url, "e2e/attached", image.digest, bundle)
    second = push_referrer(
        registry.url, "e2e/attached", image.digest, b"an sbom\n", artifact_type="application/spdx+json"
    )

    with open_registry(registry.host) as reg:
        body, media_type = reg.manifest(parse(f"{repo}@{image.digest}"))
        by_tag = reg.manifest(parse(image.ref))
        referrer, referrer_type = reg.manifest(parse(f"{repo}@{first}"))
        layer = json.loads(referrer)["layers"][0]
        blob = reg.blob("e2e/attached", layer["digest"])
        bundles = reg.referrers(parse(f"{repo}@{image.digest}"), BUNDLE_TYPE)
        everything = reg.referrers(parse(f"{repo}:1.0@{image.digest}"))
        none = reg.referrers(parse(f"{repo}@{bare.digest}"), BUNDLE_TYPE)
        no_repository = reg.referrers(parse(f"{registry.host}/e2e/absent@{image.digest}"))

    assert (digest_of(body), media_type) == (image.digest, OCI_MANIFEST)
    assert by_tag == (body, OCI_MANIFEST)
    assert (digest_of(referrer), referrer_type) == (first, OCI_MANIFEST)
    assert blob == bundle
    assert bundles == [Descriptor(OCI_MANIFEST, first, len(referrer), BUNDLE_TYPE)]
    assert [(d.digest, d.artifact_type) for d in everything] == [
        (first, BUNDLE_TYPE),
        (second, "application/spdx+json"),
    ]
    assert none == [] and no_repository == []


@pytest.mark.registry
def test_missing_blobs_and_manifests_are_invalid_input(
    registry: RegistryServer, push_image: ImagePusher
) -> None:
    image = push_image("e2e/holes", "1.0", content=b"holes\n")
    nowhere = "sha256:" + "0" * 64
    host = registry.host
    with open_registry(host) as reg:
        with pytest.raises(InvalidInput) as blob:
            reg.blob("e2e/holes", nowhere)
        with pytest.raises(InvalidInput) as manifest:
            reg.manifest(parse(f"{host}/e2e/holes@{nowhere}"))
        with pytest.raises(InvalidInput) as no_digest:
            reg.referrers(parse(image.ref))
        with pytest.raises(InvalidInput) as bad_digest:
            reg.blob("e2e/holes", "sha256:ABC")
    assert str(blob.value) == (
        f"blob {nowhere} of {host}/e2e/holes does not exist "
        f"(the registry said BLOB_UNKNOWN: blob unknown to registry)"
    )
    assert str(manifest.value) == (
        f"image {host}/e2e/holes@{nowhere} does not exist: repository 'e2e/holes' in registry {host} "
        f"has no manifest {nowhere}"
    )
    assert str(no_digest.value) == f"{image.ref} has no digest: referrers are listed for a digest"
    assert str(bad_digest.value) == "blob digest 'sha256:ABC' is not sha256:<64 lowercase hex>"


REFERRER_A = {
    "mediaType": OCI_MANIFEST,
    "digest": "sha256:" + "a" * 64,
    "size": 10,
    "artifactType": BUNDLE_TYPE,
}
REFERRER_B = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "b" * 64, "size": 20, "artifactType": "x/sbom"}
REFERRER_C = {
    "mediaType": OCI_MANIFEST,
    "digest": "sha256:" + "c" * 64,
    "size": 30,
    "artifactType": BUNDLE_TYPE,
    "annotations": {"dev.sigstore.bundle.predicateType": "https://slsa.dev/provenance/v1"},
}
MALFORMED = {"mediaType": OCI_MANIFEST, "digest": "md5:abc", "size": 1}


def index_reply(*entries: dict[str, object], link: str | None = None) -> Reply:
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(entries)}).encode()
    headers = {"Content-Type": OCI_INDEX, **({"Link": link} if link else {})}
    return Reply(200, headers, body)


def test_the_referrers_api_is_used_paged_and_filtered_when_the_registry_has_it() -> None:
    def script(seen: Seen) -> Reply:
        if seen.path.startswith(f"/v2/app/referrers/{DIGEST}?artifactType="):
            return index_reply(
                REFERRER_A, REFERRER_B, MALFORMED, link=f'</v2/app/referrers/{DIGEST}?n=2>; rel="next"'
            )
        if seen.path == f"/v2/app/referrers/{DIGEST}?n=2":
            return index_reply(REFERRER_C)
        return Reply(404)

    with ScriptedServer(script) as server, open_registry(server.host, options=FAST) as reg:
        found = reg.referrers(parse(f"{server.host}/app@{DIGEST}"), BUNDLE_TYPE)
        asked = [(r.path, r.headers["accept"]) for r in server.requests]
    assert found == [
        Descriptor(OCI_MANIFEST, "sha256:" + "a" * 64, 10, BUNDLE_TYPE),
        Descriptor(
            OCI_MANIFEST,
            "sha256:" + "c" * 64,
            30,
            BUNDLE_TYPE,
            {"dev.sigstore.bundle.predicateType": "https://slsa.dev/provenance/v1"},
        ),
    ]
    assert asked == [
        (
            f"/v2/app/referrers/{DIGEST}?artifactType=application%2Fvnd.dev.sigstore.bundle.v0.3%2Bjson",
            OCI_INDEX,
        ),
        (f"/v2/app/referrers/{DIGEST}?n=2", OCI_INDEX),
    ]


def test_without_the_referrers_api_the_tag_schema_is_read() -> None:
    tag = DIGEST.replace(":", "-")

    def script(seen: Seen) -> Reply:
        if seen.path == f"/v2/app/manifests/{tag}":
            return index_reply(REFERRER_A, REFERRER_B)
        return Reply(404, {"Content-Type": "text/plain"}, b"404 page not found")

    with ScriptedServer(script) as server, open_registry(server.host, options=FAST) as reg:
        found = reg.referrers(parse(f"{server.host}/app@{DIGEST}"))
        paths = [r.path for r in server.requests]
    assert [(d.digest, d.artifact_type) for d in found] == [
        ("sha256:" + "a" * 64, BUNDLE_TYPE),
        ("sha256:" + "b" * 64, "x/sbom"),
    ]
    assert paths == [f"/v2/app/referrers/{DIGEST}", f"/v2/app/manifests/{tag}"]


BAD_READS: dict[str, tuple[Script, Callable[[DistributionRegistry, str], object], str]] = {
    "blob-with-other-bytes": (
        lambda seen: Reply(200, {}, b"other bytes"),
        lambda reg, host: reg.blob("app", DIGEST),
        "registry {host} served blob {digest} of {host}/app whose sha256 is {other}: "
        "it does not serve the content it names",
    ),
    "blob-too-large": (
        lambda seen: Reply(200, {}, MANIFEST),
        lambda reg, host: reg.blob("app", DIGEST, max_bytes=10),
        "registry {host} answered more than 10 bytes for blob {digest} of {host}/app",
    ),
    "manifest-with-other-bytes": (
        lambda seen: Reply(200, {"Content-Type": OCI_MANIFEST}, b'{"schemaVersion":2}'),
        lambda reg, host: reg.manifest(parse(f"{host}/app@{DIGEST}")),
        "registry {host} answered {other_manifest} when asked for {host}/app@{digest}: "
        "it does not serve the content it names",
    ),
    "referrers-not-an-index": (
        lambda seen: Reply(200, {"Content-Type": "application/json"}, b'{"errors": []}'),
        lambda reg, host: reg.referrers(parse(f"{host}/app@{DIGEST}")),
        "registry {host} answered the referrers of {host}/app@{digest} with something that is not an "
        "OCI image index",
    ),
    "next-link-elsewhere": (
        lambda seen: index_reply(
            REFERRER_A, link='<https://elsewhere.example.com/v2/app/referrers/x>; rel="next"'
        ),
        lambda reg, host: reg.referrers(parse(f"{host}/app@{DIGEST}")),
        "registry {host} sent a next link for the referrers of {host}/app@{digest} to another origin: "
        "https://elsewhere.example.com",
    ),
    "referrers-unavailable": (
        lambda seen: Reply(503),
        lambda reg, host: reg.referrers(parse(f"{host}/app@{DIGEST}")),
        "registry {host} is unavailable: listing the referrers of {host}/app@{digest} failed with "
        "HTTP 503 Service Unavailable after 3 attempts",
    ),
    "blob-unavailable": (
        lambda seen: Reply(500),
        lambda reg, host: reg.blob("app", DIGEST),
        "registry {host} is unavailable: fetching blob {digest} of {host}/app failed with "
        "HTTP 500 Internal Server Error after 3 attempts",
    ),
    "manifest-unavailable": (
        lambda seen: Reply(502),
        lambda reg, host: reg.manifest(parse(f"{host}/app@{DIGEST}")),
        "registry {host} is unavailable: fetching the manifest of {host}/app@{digest} failed with "
        "HTTP 502 Bad Gateway after 3 attempts",
    ),
}


@pytest.mark.parametrize(("script", "call", "message"), BAD_READS.values(), ids=BAD_READS.keys())
def test_bad_reads_are_registry_unavailable(
    script: Script, call: Callable[[DistributionRegistry, str], object], message: str
) -> None:
    """Bytes that do not match their digest, too many bytes, no index, a foreign next link, 5xx."""
    with (
        ScriptedServer(script) as server,
        open_registry(server.host, options=FAST) as reg,
        pytest.raises(RegistryUnavailable) as caught,
    ):
        call(reg, server.host)
    expected = message.format(
        host=server.host,
        digest=DIGEST,
        other=digest_of(b"other bytes"),
        other_manifest=digest_of(b'{"schemaVersion":2}'),
    )
    assert str(caught.value) == expected


def test_reads_after_close_are_refused() -> None:
    reg = open_registry("127.0.0.1:5000")
    reg.close()
    for call in (
        lambda: reg.manifest(parse(f"127.0.0.1:5000/app@{DIGEST}")),
        lambda: reg.blob("app", DIGEST),
        lambda: reg.referrers(parse(f"127.0.0.1:5000/app@{DIGEST}")),
    ):
        with pytest.raises(PluginError, match=r"^registry 127\.0\.0\.1:5000 was used after close\(\)$"):
            call()
