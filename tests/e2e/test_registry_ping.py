"""`DistributionRegistry.ping()` (`RegistryProbe`): the `GET /v2/` that `stella doctor` asks of a registry.

The real CNCF distribution registry answers it anonymously; `ScriptedServer`s play registries that
demand Bearer or Basic authentication, fail, hang, or are not registries at all. Every case asserts
the whole `RegistryPing` and the requests made: one attempt each, never retried, nothing raised for
what the registry answers, and no secret in the answer.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from stella_oci.distribution import DistributionRegistry, plugin

from reconciler.api import (
    PluginError,
    Registry,
    RegistryAttachments,
    RegistryOptions,
    RegistryPing,
    RegistryProbe,
    parse,
)
from tests.support.oci import DirFiles
from tests.support.registry import RegistryServer, Reply, ScriptedServer, Seen, free_port

FAST = {"timeout": 0.3, "attempts": 3, "backoff": 0.01, "max_delay": 0.05}
USER, PASSWORD, TOKEN = "alice", "pa55-w0rd-s3cret", "tok-9f8e7d-secret"
CREDENTIALS = "env:STELLA_TEST_REGISTRY_AUTH"
WRONG = "env:STELLA_TEST_WRONG_AUTH"


@pytest.fixture(autouse=True)
def _isolated_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No Docker login of the developer's; the entry's credentials are alice's."""
    empty = tmp_path / "docker-config-empty"
    empty.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(empty))
    monkeypatch.setenv("STELLA_TEST_REGISTRY_AUTH", f"{USER}:{PASSWORD}")
    monkeypatch.setenv("STELLA_TEST_WRONG_AUTH", f"{USER}:wrong-{PASSWORD}")


def open_registry(host: str, *, credentials: str | None = None) -> DistributionRegistry:
    options = RegistryOptions(host=host, credentials=credentials, options=FAST)
    return plugin.open(options, DirFiles(Path("/nonexistent")))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- the real registry -------------------------------------------------------------------------


@pytest.mark.registry
@pytest.mark.parametrize("credentials", [None, CREDENTIALS], ids=["anonymous", "credentials-unasked"])
def test_the_real_registry_is_healthy(registry: RegistryServer, credentials: str | None) -> None:
    with open_registry(registry.host, credentials=credentials) as reg:
        assert isinstance(reg, Registry)
        assert isinstance(reg, RegistryAttachments)
        assert isinstance(reg, RegistryProbe)
        answer = reg.ping(3.0)
    assert answer == RegistryPing(f"GET http://{registry.host}/v2/", healthy=True, status=200)


# -- scripted registries -----------------------------------------------------------------------


def bearer_registry(seen: Seen) -> Reply:
    """Tokens from `/token` for alice only; `/v2/` with that token; a Bearer challenge otherwise."""
    if seen.path.startswith("/token"):
        if seen.headers.get("authorization") != basic(USER, PASSWORD):
            return Reply(401, body=b'{"details":"bad credentials"}')
        return Reply(200, {"Content-Type": "application/json"}, json.dumps({"token": TOKEN}).encode())
    if seen.headers.get("authorization") == f"Bearer {TOKEN}":
        return Reply(200, {"Content-Type": "application/json"}, b"{}")
    host = seen.headers["host"]
    challenge = f'Bearer realm="http://{host}/token",service="test-registry"'
    return Reply(401, {"WWW-Authenticate": challenge}, b'{"errors":[{"code":"UNAUTHORIZED"}]}')


def basic_registry(seen: Seen) -> Reply:
    if seen.headers.get("authorization") == basic(USER, PASSWORD):
        return Reply(200, {"Content-Type": "application/json"}, b"{}")
    return Reply(401, {"WWW-Authenticate": 'Basic realm="test registry"'})


def failing_token_endpoint(seen: Seen) -> Reply:
    return Reply(500) if seen.path.startswith("/token") else bearer_registry(seen)


Sent = list[tuple[str, str | None]]
"""(path, Authorization) of every request, in order."""

PLAIN = "GET {url}"
AS_ALICE = f"GET {{url}} with the credentials from {CREDENTIALS}"
AS_WRONG = f"GET {{url}} with the credentials from {WRONG}"
TOKEN_REQUEST = ("/token?service=test-registry", basic(USER, PASSWORD))  # no scope, as docker login

ANSWERS: dict[str, tuple[Callable[[Seen], Reply], str | None, RegistryPing, Sent]] = {
    "open": (
        lambda seen: Reply(200, {"Content-Type": "application/json"}, b"{}"),
        CREDENTIALS,
        RegistryPing(PLAIN, healthy=True, status=200),
        [("/v2/", None)],
    ),
    "bearer-before-login": (
        bearer_registry,
        None,
        RegistryPing(PLAIN, healthy=True, status=401),
        [("/v2/", None)],
    ),
    "basic-before-login": (
        basic_registry,
        None,
        RegistryPing(PLAIN, healthy=True, status=401),
        [("/v2/", None)],
    ),
    "bearer-with-credentials": (
        bearer_registry,
        CREDENTIALS,
        RegistryPing(AS_ALICE, healthy=True, status=200),
        [("/v2/", None), TOKEN_REQUEST, ("/v2/", f"Bearer {TOKEN}")],
    ),
    "basic-with-credentials": (
        basic_registry,
        CREDENTIALS,
        RegistryPing(AS_ALICE, healthy=True, status=200),
        [("/v2/", None), ("/v2/", basic(USER, PASSWORD))],
    ),
    "bearer-wrong-credentials": (
        bearer_registry,
        WRONG,
        RegistryPing(
            AS_WRONG,
            healthy=False,
            error=f"registry {{host}} refused the credentials from {WRONG} for {{url}} (HTTP 401): "
            "check that they are valid",
        ),
        [("/v2/", None), ("/token?service=test-registry", basic(USER, f"wrong-{PASSWORD}"))],
    ),
    "basic-wrong-credentials": (
        basic_registry,
        WRONG,
        RegistryPing(AS_WRONG, healthy=False, status=401),
        [("/v2/", None), ("/v2/", basic(USER, f"wrong-{PASSWORD}"))],
    ),
    "token-endpoint-failing": (
        failing_token_endpoint,
        CREDENTIALS,
        RegistryPing(
            AS_ALICE,
            healthy=False,
            error="registry {host} is unavailable: checking {url} failed with HTTP 500 Internal Server "
            "Error after 1 attempt",
        ),
        [("/v2/", None), TOKEN_REQUEST],
    ),
    "401-without-challenge": (
        lambda seen: Reply(401),
        CREDENTIALS,
        RegistryPing(PLAIN, healthy=False, status=401),
        [("/v2/", None)],
    ),
    "not-a-registry": (
        lambda seen: Reply(404, {"Content-Type": "text/plain"}, b"404 page not found"),
        None,
        RegistryPing(PLAIN, healthy=False, status=404),
        [("/v2/", None)],
    ),
    "503-not-retried": (
        lambda seen: Reply(503, {"Retry-After": "1"}),
        None,
        RegistryPing(PLAIN, healthy=False, status=503),
        [("/v2/", None)],
    ),
}


@pytest.mark.parametrize(("script", "credentials", "expected", "sent"), ANSWERS.values(), ids=ANSWERS.keys())
def test_ping_reports_what_the_registry_answered(
    script: Callable[[Seen], Reply], credentials: str | None, expected: RegistryPing, sent: Sent
) -> None:
    with ScriptedServer(script) as server, open_registry(server.host, credentials=credentials) as reg:
        answer = reg.ping(3.0)
        requests = [(r.path, r.headers.get("authorization")) for r in server.requests]
    fill = {"host": server.host, "url": f"http://{server.host}/v2/"}
    assert answer == RegistryPing(
        expected.request.format(**fill),
        healthy=expected.healthy,
        status=expected.status,
        error=expected.error.format(**fill),
    )
    assert requests == sent
    shown = f"{answer.request} {answer.error}"
    assert PASSWORD not in shown and TOKEN not in shown


def test_ping_keeps_no_authentication_for_later_calls() -> None:
    """The token ping got is not reused: resolve learns its own challenge and scope."""
    with (
        ScriptedServer(bearer_registry) as server,
        open_registry(server.host, credentials=CREDENTIALS) as reg,
    ):
        assert reg.ping(3.0).healthy
        server.requests.clear()
        reg.resolve(parse(f"{server.host}/app:1.0"))
        sent = [(r.method, r.path, r.headers.get("authorization")) for r in server.requests]
    assert sent == [
        ("HEAD", "/v2/app/manifests/1.0", None),
        ("GET", "/token?scope=repository%3Aapp%3Apull&service=test-registry", basic(USER, PASSWORD)),
        ("HEAD", "/v2/app/manifests/1.0", f"Bearer {TOKEN}"),
        ("GET", "/v2/app/manifests/1.0", f"Bearer {TOKEN}"),  # the scripted registry sends no digest
    ]


def test_nothing_listening_is_unhealthy_after_one_attempt() -> None:
    host = f"127.0.0.1:{free_port()}"
    with open_registry(host) as reg:
        answer = reg.ping(3.0)
    assert (answer.request, answer.healthy, answer.status) == (f"GET http://{host}/v2/", False, None)
    assert re.fullmatch(r"ConnectError: .*[Cc]onnection refused.*", answer.error), answer.error


@pytest.mark.parametrize("timeout", [None, 0.1], ids=["entry-timeout", "given"])
def test_a_slow_registry_times_out_once(timeout: float | None) -> None:
    with ScriptedServer(lambda seen: Reply(200, delay=5.0)) as server:
        started = time.monotonic()
        with open_registry(server.host) as reg:
            answer = reg.ping(timeout)
        elapsed = time.monotonic() - started
        assert server.count("GET", "/v2/") == 1
    assert answer == RegistryPing(
        f"GET http://{server.host}/v2/", healthy=False, error="ReadTimeout: timed out"
    )
    assert elapsed < (timeout or FAST["timeout"]) + 1.0


def test_ping_after_close_is_refused() -> None:
    reg = open_registry("127.0.0.1:5000")
    reg.close()
    with pytest.raises(PluginError, match=r"^registry 127\.0\.0\.1:5000 was used after close\(\)$"):
        reg.ping(3.0)
