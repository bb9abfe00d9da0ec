"""Release locks: the id, and every way a release file can disagree with its lock."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.evidence import release_id
from reconciler.models import Release
from reconciler.resolve import check_lock, lock

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def release(components: dict[str, Any]) -> Release:
    return Release.model_validate(
        {"apiVersion": "stella/v1", "kind": "Release", "name": "app-1", "components": components}
    )


LOCKED = lock(release({"web": {"image": "r.example.com/shop/web:1.0"}}), {"web": A})


def test_lock_id_is_the_hash_of_name_and_pinned_components() -> None:
    assert LOCKED.id == release_id("app-1", {"web": f"r.example.com/shop/web@{A}"})
    assert LOCKED.components["web"].model_dump() == {
        "image": "r.example.com/shop/web",
        "tag": "1.0",
        "digest": A,
    }


CHANGES = [
    pytest.param({"web": {"image": "r.example.com/shop/web:1.0"}}, [], id="unchanged"),
    pytest.param({"web": {"image": "r.example.com/shop/web:1.0", "digest": A}}, [], id="digest-written-in"),
    pytest.param(
        {"web": {"image": "r.example.com/shop/web:1.0", "digest": B}},
        [f"web: digest changed from {A} to {B}"],
        id="digest",
    ),
    pytest.param(
        {"web": {"image": "r.example.com/shop/web:1.1"}}, ["web: tag changed from 1.0 to 1.1"], id="tag"
    ),
    pytest.param(
        {"web": {"image": "r.example.com/shop/api:1.0"}},
        ["web: image changed from r.example.com/shop/web to r.example.com/shop/api"],
        id="image",
    ),
    pytest.param(
        {"web": {"image": "r.example.com/shop/web:1.0"}, "db": {"image": "r.example.com/db:1"}},
        ["components changed from ['web'] to ['db', 'web']"],
        id="component-added",
    ),
]


@pytest.mark.parametrize(("components", "expected"), CHANGES)
def test_check_lock(components: dict[str, Any], expected: list[str]) -> None:
    assert check_lock(release(components), LOCKED) == expected
