"""Tags to digests through the `oci` plugin: against the real registry, and against scripted faults.

Tests marked `registry` push images with skopeo to the real CNCF distribution registry and compare
with what skopeo reports. The others talk to a `ScriptedServer` on loopback: a registry that fails
on purpose (5xx, 429, slowness, nothing listening) or that demands authentication.
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

import pytest
from stella_oci.distribution import MANIFEST_MEDIA_TYPES, DistributionRegistry, plugin

from reconciler.errors import InvalidInput, RegistryUnavailable
from reconciler.protocols import Registry, RegistryOptions
from reconciler.reference import parse
from tests.support.oci import OCI_MANIFEST, DirFiles
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
