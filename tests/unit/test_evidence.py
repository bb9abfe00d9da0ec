"""evidence.py: subjects of a decision statement, with and without the lock's extra images."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from reconciler.evidence import canonical, decision_statement, sha256_hex, subjects
from reconciler.models import LockedComponent, ReleaseLock
from reconciler.protocols import GateResult

WEB = "sha256:" + "1" * 64
WORKER = "sha256:" + "2" * 64
REDIS = "sha256:" + "3" * 64

RELEASE = ReleaseLock(
    name="shop-1.4.0",
    id="sha256:" + "a" * 64,
    components={
        "worker": LockedComponent(image="registry.example.com/shop/worker", tag="1.4.0", digest=WORKER),
        "web": LockedComponent(image="registry.example.com/shop/web", tag="1.4.0", digest=WEB),
        "web2": LockedComponent(image="registry.example.com/shop/web", tag=None, digest=WEB),
    },
)
COMPONENT_SUBJECTS = [
    {"name": "registry.example.com/shop/web", "digest": {"sha256": "1" * 64}},
    {"name": "registry.example.com/shop/worker", "digest": {"sha256": "2" * 64}},
]
LOCK_IMAGES = [
    f"redis@{REDIS}",
    f"registry.example.com/shop/web@{WEB}",
    f"registry.example.com/shop/worker@{WORKER}",
]


def _statement(**extra: Any) -> dict[str, Any]:
    return decision_statement(
        record_type="release_decision",
        tenant="shop",
        version="0.1.0",
        release=RELEASE,
        environment="prod",
        promotion_id="shop-1.4.0--prod",
        promotion={"reason": "fixes checkout rounding"},
        actors={"requester": {"identity": "dev@example.com"}, "approvers": []},
        result="allow",
        gates=[GateResult("approvals", "pass", "no-approvals-required", "no approvals required")],
        artifacts={"compose.stella.lock.yml": "b" * 64},
        inputs_hex="c" * 64,
        requested_at=datetime(2026, 3, 1, 9, 0, tzinfo=UTC),
        decided_at=datetime(2026, 3, 1, 10, 0, tzinfo=UTC),
        previous=None,
        **extra,
    )


def test_subjects_of_the_components() -> None:
    """Unique by image and digest, sorted; the components' own pinned images add nothing."""
    assert subjects(RELEASE) == COMPONENT_SUBJECTS
    assert subjects(RELEASE, LOCK_IMAGES[1:]) == COMPONENT_SUBJECTS


def test_subjects_with_extra_images() -> None:
    assert subjects(RELEASE, [*LOCK_IMAGES, f"redis@{REDIS}"]) == [
        {"name": "redis", "digest": {"sha256": "3" * 64}},
        *COMPONENT_SUBJECTS,
    ]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        pytest.param(
            "redis:7",
            "subject image 'redis:7' is not pinned by digest alone (repo@sha256:<64 hex>)",
            id="tag",
        ),
        pytest.param(
            f"redis:7@{REDIS}",
            f"subject image 'redis:7@{REDIS}' is not pinned by digest alone (repo@sha256:<64 hex>)",
            id="tag-and-digest",
        ),
        pytest.param(
            "redis@sha256:x", "invalid digest in 'redis@sha256:x': expected sha256:<64 hex>", id="bad-digest"
        ),
    ],
)
def test_subjects_refuse_unpinned_images(image: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        subjects(RELEASE, [image])
    assert str(caught.value) == message


# The sha256 of the statement's canonical bytes, computed before `extra_images` existed: records already
# signed and stored must keep their bytes.
STATEMENT_SHA256 = "10e9394787e4401ae611ed8363558b706c941ffd204b9c5517a6c10ce00f05d8"


def test_statement_without_extra_images_is_unchanged() -> None:
    data = canonical(_statement())
    assert sha256_hex(data) == STATEMENT_SHA256
    assert canonical(_statement(extra_images=())) == data
    assert canonical(_statement(extra_images=LOCK_IMAGES[1:])) == data


def test_statement_with_extra_images() -> None:
    plain, extended = _statement(), _statement(extra_images=LOCK_IMAGES)
    assert extended["subject"] == [{"name": "redis", "digest": {"sha256": "3" * 64}}, *COMPONENT_SUBJECTS]
    assert {**extended, "subject": plain["subject"]} == plain
