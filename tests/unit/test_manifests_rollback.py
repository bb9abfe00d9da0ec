"""The loader and rollback promotions: a rollback id (`<release>--<env>--rollback-<n>`) names exactly its
file's release and environment and the file says `rollback: true`; `rollbackApprovals` names known groups.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import Problem, ValidationFailed
from reconciler.manifests import load_repository
from reconciler.repo import WorkTree
from tests.support.repos import BASE, ENV_PROD, write_files

ROLLBACK = "apiVersion: stella/v1\nkind: Promotion\nrelease: shop-1.0.0\nenvironment: prod\nrollback: true\n"
OTHER_RELEASE = "apiVersion: stella/v1\nkind: Release\nname: shop-2.0.0\ncomponents:\n  web: {image: r.example.com/web:2}\n"


def test_rollback_ids_load(tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            **BASE,
            "promotions/shop-1.0.0--prod--rollback-1.yaml": ROLLBACK,
            "promotions/shop-1.0.0--prod--rollback-12.yaml": ROLLBACK,
            "promotions/by-hand.yaml": ROLLBACK,  # any other id may be a rollback too: the gates judge it
        },
    )
    repo = load_repository(WorkTree(tmp_path))
    rollbacks = sorted(pid for pid, p in repo.promotions.items() if p.rollback)
    assert rollbacks == ["by-hand", "shop-1.0.0--prod--rollback-1", "shop-1.0.0--prod--rollback-12"]
    assert repo.promotions["shop-1.0.0--dev"].rollback is False


def test_an_environment_named_like_a_rollback_suffix(tmp_path: Path) -> None:
    env = "apiVersion: stella/v1\nkind: Environment\nname: rollback-1\n"
    promotion = "apiVersion: stella/v1\nkind: Promotion\nrelease: shop-1.0.0\nenvironment: rollback-1\n"
    write_files(
        tmp_path,
        {**BASE, "environments/rollback-1.yaml": env, "promotions/shop-1.0.0--rollback-1.yaml": promotion},
    )
    repo = load_repository(WorkTree(tmp_path))
    assert repo.promotions["shop-1.0.0--rollback-1"].environment == "rollback-1"


BAD = [
    pytest.param(
        "shop-2.0.0--prod--rollback-1",
        ROLLBACK,
        Problem(
            "promotions/shop-2.0.0--prod--rollback-1.yaml",
            3,
            "the rollback id 'shop-2.0.0--prod--rollback-1' names 'shop-2.0.0--prod', but the file promotes "
            "shop-1.0.0 to prod (its id would be shop-1.0.0--prod--rollback-1)",
        ),
        id="another-release",
    ),
    pytest.param(
        "shop-1.0.0--dev--rollback-1",
        ROLLBACK,
        Problem(
            "promotions/shop-1.0.0--dev--rollback-1.yaml",
            3,
            "the rollback id 'shop-1.0.0--dev--rollback-1' names 'shop-1.0.0--dev', but the file promotes "
            "shop-1.0.0 to prod (its id would be shop-1.0.0--prod--rollback-1)",
        ),
        id="another-environment",
    ),
    pytest.param(
        "shop-1.0.0--prod--rollback-1",
        ROLLBACK.replace("rollback: true", "rollback: false"),
        Problem(
            "promotions/shop-1.0.0--prod--rollback-1.yaml",
            5,
            "'shop-1.0.0--prod--rollback-1' is a rollback id: the file must say rollback: true",
        ),
        id="not-a-rollback",
    ),
    pytest.param(
        "shop-1.0.0--prod--rollback-1",
        ROLLBACK.replace("rollback: true\n", ""),
        Problem(
            "promotions/shop-1.0.0--prod--rollback-1.yaml",
            2,
            "'shop-1.0.0--prod--rollback-1' is a rollback id: the file must say rollback: true",
        ),
        id="rollback-missing",
    ),
]


@pytest.mark.parametrize(("stem", "text", "expected"), BAD)
def test_a_rollback_id_names_its_own_promotion(
    tmp_path: Path, stem: str, text: str, expected: Problem
) -> None:
    write_files(
        tmp_path, {**BASE, "releases/shop-2.0.0.yaml": OTHER_RELEASE, f"promotions/{stem}.yaml": text}
    )
    with pytest.raises(ValidationFailed) as info:
        load_repository(WorkTree(tmp_path))
    assert info.value.problems == [expected]


def test_a_bad_rollback_id_holds_up_only_itself(tmp_path: Path) -> None:
    bad = "promotions/shop-2.0.0--prod--rollback-1.yaml"
    write_files(tmp_path, {**BASE, bad: ROLLBACK})
    repo = load_repository(WorkTree(tmp_path), contain=True)
    assert sorted(repo.promotions) == ["shop-1.0.0--dev"]
    assert [p.file for p in repo.problems] == [bad]


def test_rollback_approvals_name_known_groups(tmp_path: Path) -> None:
    prod = ENV_PROD + "rollbackApprovals: {required: 1, groups: [release-managers, oncall]}\n"
    write_files(tmp_path, {**BASE, "environments/prod.yaml": prod})
    with pytest.raises(ValidationFailed) as info:
        load_repository(WorkTree(tmp_path))
    assert info.value.problems == [
        Problem(
            "environments/prod.yaml",
            7,
            "unknown approver group 'oncall' (groups live in trust/groups.yaml)",
        )
    ]
