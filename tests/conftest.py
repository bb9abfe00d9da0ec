"""Fixtures shared by all tests. Keep this file small: the logic lives in `tests/support/`.

- `registry` (session): the real CNCF distribution registry on 127.0.0.1 (`.host`, `.url`).
- `push_image`: `push_image(repository, tag, content=..., multi_arch=False)` builds a deterministic
  image and pushes it to `registry` with skopeo; returns a `Pushed` (`.ref`, `.digest`).
- `postgres` (session): a throwaway PostgreSQL cluster (or `STELLA_TEST_DATABASE_URL`'s server).
- `pg_database`: a fresh database on it per test (`.url` as the superuser, `.role`: a service role name
  of its own), dropped afterwards with that role.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pipeline import CREATED
from tests.support.postgres import PostgresServer, ScratchDatabase, external_postgres, start_postgres
from tests.support.registry import ImagePusher, RegistryServer, ToolMissing, require_tools, start_registry


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    missing = None
    try:
        require_tools()
    except ToolMissing as exc:
        missing = str(exc)
    if missing:
        pytest.fail(missing, pytrace=False)
    server = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def push_image(registry: RegistryServer, tmp_path: Path) -> ImagePusher:
    return ImagePusher(registry, tmp_path)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = external_postgres()
    if server is None:
        missing = None
        try:
            server = start_postgres()
        except ToolMissing as exc:
            missing = str(exc)
        if missing or server is None:
            pytest.fail(missing or "no PostgreSQL", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_database(postgres: PostgresServer) -> Iterator[ScratchDatabase]:
    database = postgres.new_database()
    try:
        yield database
    finally:
        database.drop()


@pytest.fixture(scope="session", autouse=True)
def replay_every_record() -> Iterator[None]:
    """At the end of the session, `stella replay --all` is identical on every record the tests made."""
    yield
    failures = []
    for ws in CREATED:
        if ws.tampered or not ws.root.exists():
            continue
        if not ws.git("for-each-ref", "refs/heads/stella/evidence"):
            continue
        run = ws.stella("replay", "--all", "-o", "json")
        if run.code != 0:
            failures.append(f"{ws.root}: {run.out or run.err}")
    assert not failures, "\n".join(failures)
