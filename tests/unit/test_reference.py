"""Image reference parsing, table-driven."""

from __future__ import annotations

import pytest

from reconciler.reference import ReferenceError, parse

D = "sha256:" + "0" * 64

GOOD = [
    ("registry.example.com/shop/web:1.4.0", "registry.example.com", "shop/web", "1.4.0", None),
    ("127.0.0.1:5000/app:1.0", "127.0.0.1:5000", "app", "1.0", None),
    ("localhost/app", "localhost", "app", "latest", None),
    ("nginx", "docker.io", "library/nginx", "latest", None),
    ("org/app:v2", "docker.io", "org/app", "v2", None),
    (f"127.0.0.1:5000/app@{D}", "127.0.0.1:5000", "app", None, D),
    (f"r.example.com/a/b:t@{D}", "r.example.com", "a/b", "t", D),
]


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), GOOD, ids=[g[0] for g in GOOD])
def test_parse(text: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    ref = parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


BAD = {
    "empty": "",
    "space": "a b",
    "uppercase-path": "registry.example.com/Shop/web:1",
    "bad-digest": "x.example.com/a@sha256:abc",
    "bad-tag": "x.example.com/a:-x",
    "control": "x.example.com/a\x00:1",
    "dot-dot": "x.example.com/../a:1",
}


@pytest.mark.parametrize("text", BAD.values(), ids=BAD.keys())
def test_invalid(text: str) -> None:
    with pytest.raises(ReferenceError):
        parse(text)


@pytest.mark.parametrize(
    ("text", "loopback"),
    [
        ("127.0.0.1:5000/a", True),
        ("127.9.9.9/a", True),
        ("localhost:5000/a", True),
        ("[::1]:5000/a", True),
        ("registry.example.com/a", False),
        ("10.0.0.1:5000/a", False),
    ],
)
def test_loopback(text: str, loopback: bool) -> None:
    assert parse(text).is_loopback is loopback


def test_repo_is_the_reference_without_tag() -> None:
    ref = parse("registry.example.com/shop/web:1.4.0").with_digest(D)
    assert ref.repo == "registry.example.com/shop/web"
    assert ref.pinned == f"registry.example.com/shop/web@{D}"
