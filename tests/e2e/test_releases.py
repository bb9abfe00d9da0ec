"""Releases against the real registry: `release create`, locks on the evidence branch, immutability."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from reconciler.evidence import canonical, release_id
from reconciler.sign import generate_key
from tests.support.cli import stella
from tests.support.registry import (
    ImagePusher,
    RegistryServer,
    Reply,
    ScriptedServer,
    free_port,
    skopeo_digest,
)
from tests.support.repos import SETTINGS, commit_all, git, make_repo

pytestmark = pytest.mark.registry

ENV = "apiVersion: stella/v1\nkind: Environment\nname: dev\n"


def _repo(tmp_path: Path, release_body: str | None = None) -> Path:
    """A repository with an evidence key (the first pass signs the genesis of its policy)."""
    key = tmp_path / "keys" / "evidence.pem"
    generate_key(key)
    files: dict[str, str | bytes | None] = {
        "stella.yaml": SETTINGS,
        "environments/dev.yaml": ENV,
        "trust/evidence-keys/test.pub": key.with_name("evidence.pem.pub").read_bytes(),
    }
    if release_body:
        files["releases/app-1.0.yaml"] = release_body
    return make_repo(tmp_path / "repo", files)


def _signing(root: Path) -> dict[str, str]:
    return {"STELLA_SIGNING_KEY": str(root.parent / "keys" / "evidence.pem")}


def _lock(root: Path, name: str) -> dict[str, object]:
    raw = git(root, "show", f"refs/heads/stella/evidence:releases/{name}.json")
    return json.loads(raw)  # type: ignore[no-any-return]


def test_release_create_resolves_to_skopeo_digests(
    tmp_path: Path, registry: RegistryServer, push_image: ImagePusher
) -> None:
    web = push_image("shop/web", "1.0", content=b"web 1.0\n")
    worker = push_image("shop/worker", "1.0", content=b"worker 1.0\n", multi_arch=True)
    root = _repo(tmp_path)
    run = stella(
        "release", "create", "app-1.0", f"web={web.ref}", f"worker={worker.ref}", "--repo", root, "-o", "json"
    )
    assert run.code == 0, run.err
    written = yaml.safe_load((root / "releases" / "app-1.0.yaml").read_text())
    assert written == {
        "apiVersion": "stella/v1",
        "kind": "Release",
        "name": "app-1.0",
        "components": {
            "web": {"image": web.ref, "digest": skopeo_digest(web.ref)},
            "worker": {"image": worker.ref, "digest": skopeo_digest(worker.ref)},
        },
    }
    assert written["components"]["worker"]["digest"] == worker.digest  # the index, not a child
    expected_id = release_id(
        "app-1.0",
        {
            "web": f"{registry.host}/shop/web@{web.digest}",
            "worker": f"{registry.host}/shop/worker@{worker.digest}",
        },
    )
    assert run.json()["release"]["id"] == expected_id
    again = stella("release", "create", "app-1.0", f"web={web.ref}", "--repo", root)
    assert again.code == 2 and "already exists" in again.err


def test_tag_moved_after_locking_leaves_the_release_unchanged(
    tmp_path: Path, registry: RegistryServer, push_image: ImagePusher
) -> None:
    first = push_image("shop/api", "2.0", content=b"api first\n")
    body = (
        f"apiVersion: stella/v1\nkind: Release\nname: app-1.0\ncomponents:\n  api: {{image: {first.ref}}}\n"
    )
    root = _repo(tmp_path, body)
    run = stella("reconcile", "--once", "--repo", root, "-o", "json", env=_signing(root))
    assert run.code == 0, run.err
    lock = _lock(root, "app-1.0")
    pinned = {"api": f"{registry.host}/shop/api@{first.digest}"}
    assert lock == {
        "name": "app-1.0",
        "id": release_id("app-1.0", pinned),
        "components": {"api": {"image": f"{registry.host}/shop/api", "tag": "2.0", "digest": first.digest}},
    }
    raw = git(root, "show", "refs/heads/stella/evidence:releases/app-1.0.json").encode()
    assert raw == canonical(lock)

    moved = push_image("shop/api", "2.0", content=b"api second\n")
    assert moved.digest != first.digest and skopeo_digest(first.ref) == moved.digest
    head = git(root, "rev-parse", "refs/heads/stella/evidence")
    again = stella("reconcile", "--once", "--repo", root, env=_signing(root))
    assert again.code == 0, again.err
    assert "nothing new" in again.out
    assert git(root, "rev-parse", "refs/heads/stella/evidence") == head
    assert _lock(root, "app-1.0") == lock


def test_release_edited_to_other_digests_is_rejected(
    tmp_path: Path, registry: RegistryServer, push_image: ImagePusher
) -> None:
    first = push_image("shop/db", "1", content=b"db one\n")
    body = f"apiVersion: stella/v1\nkind: Release\nname: app-1.0\ncomponents:\n  db: {{image: {first.ref}}}\n"
    root = _repo(tmp_path, body)
    assert stella("reconcile", "--once", "--repo", root, env=_signing(root)).code == 0
    other = "sha256:" + "b" * 64
    (root / "releases" / "app-1.0.yaml").write_text(body.replace("}", f", digest: {other}}}"))
    commit_all(root, "edit release digests")
    head = git(root, "rev-parse", "refs/heads/stella/evidence")
    run = stella("reconcile", "--once", "--repo", root, env=_signing(root))
    assert run.code == 2
    assert "releases/app-1.0.yaml: release 'app-1.0' was locked as" in run.out
    assert f"db: digest changed from {first.digest} to {other}" in run.out
    assert "create a new release" in run.out
    assert git(root, "rev-parse", "refs/heads/stella/evidence") == head


def test_missing_tag_is_exit_2(tmp_path: Path, registry: RegistryServer) -> None:
    root = _repo(tmp_path)
    run = stella("release", "create", "app-1.0", f"web={registry.host}/shop/nothing:1", "--repo", root)
    assert run.code == 2
    assert "Traceback" not in run.err and "shop/nothing" in run.err
    assert not (root / "releases" / "app-1.0.yaml").exists()


@pytest.mark.parametrize("status", [500, 429], ids=["500", "429"])
def test_unhealthy_registry_is_exit_3(tmp_path: Path, status: int) -> None:
    root = _repo(tmp_path)
    settings = (
        SETTINGS + "registries:\n  - {host: 'HOST', options: {attempts: 2, backoff: 0.01, timeout: 2}}\n"
    )

    with ScriptedServer(lambda seen: Reply(status, {"Retry-After": "0"}, b"{}")) as server:
        (root / "stella.yaml").write_text(settings.replace("HOST", server.host))
        commit_all(root, "registry settings")
        run = stella("release", "create", "app-1.0", f"web={server.host}/shop/web:1", "--repo", root)
    assert run.code == 3, run.err
    assert "Traceback" not in run.err
    assert str(status) in run.err and server.host in run.err


def test_registry_down_is_exit_3(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    host = f"127.0.0.1:{free_port()}"
    settings = SETTINGS + f"registries:\n  - {{host: '{host}', options: {{attempts: 2, backoff: 0.01}}}}\n"
    (root / "stella.yaml").write_text(settings)
    run = stella("release", "create", "app-1.0", f"web={host}/shop/web:1", "--repo", root)
    assert run.code == 3
    assert "Traceback" not in run.err and host in run.err
