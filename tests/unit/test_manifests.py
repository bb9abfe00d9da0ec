"""The loader: every kind of bad input is reported with its file and line, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import Problem, ValidationFailed
from reconciler.manifests import MAX_MANIFEST_BYTES, load_repository
from reconciler.repo import Repo, WorkTree
from tests.support.repos import BASE, DIGEST, PROMOTION, RELEASE, make_repo, write_files


def problems_of(root: Path) -> list[Problem]:
    with pytest.raises(ValidationFailed) as info:
        load_repository(WorkTree(root))
    return info.value.problems


def test_base_repository_is_valid(tmp_path: Path) -> None:
    write_files(tmp_path, BASE)
    repo = load_repository(WorkTree(tmp_path))
    assert sorted(repo.environments) == ["dev", "prod"]
    assert repo.releases["shop-1.0.0"].components["web"].digest == DIGEST
    assert repo.promotions["shop-1.0.0--dev"].environment == "dev"
    assert repo.groups.groups == {"release-managers": ["release-manager@example.com"]}


BILLION_LAUGHS = """\
apiVersion: stella/v1
kind: Release
name: shop-1.0.0
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
components: {web: {image: "x.example.com/a:1"}}
"""

BAD = [
    pytest.param(
        {"environments/dev.yaml": "apiVersion: stella/v1\nkind: Environment\nname: dev\nsoak: [1h\n"},
        [("environments/dev.yaml", 5, "YAML syntax error")],
        id="yaml-syntax",
    ),
    pytest.param(
        {"releases/shop-1.0.0.yaml": RELEASE + "colour: red\n"},
        [("releases/shop-1.0.0.yaml", 6, "unknown field 'colour'")],
        id="unknown-field",
    ),
    pytest.param(
        {"releases/shop-1.0.0.yaml": RELEASE.replace("}", ", tag: x}")},
        [("releases/shop-1.0.0.yaml", 5, "unknown field 'components.web.tag'")],
        id="unknown-nested-field",
    ),
    pytest.param(
        {"promotions/shop-1.0.0--dev.yaml": "apiVersion: stella/v1\nkind: Promotion\nrelease: shop-1.0.0\n"},
        [("promotions/shop-1.0.0--dev.yaml", 1, "missing required field 'environment'")],
        id="missing-field",
    ),
    pytest.param(
        {
            "environments/prod.yaml": "apiVersion: stella/v1\nkind: Environment\nname: prod\n"
            "approvals:\n  required: two\n"
        },
        [("environments/prod.yaml", 5, "approvals.required: Input should be a valid integer")],
        id="wrong-type",
    ),
    pytest.param(
        {"environments/dev.yaml": "apiVersion: stella/v1\nkind: Environment\nname: prod\n"},
        [("environments/dev.yaml", 3, "name 'prod' does not match the file name 'dev'")],
        id="name-mismatch",
    ),
    pytest.param(
        {"environments/dev.yaml": "apiVersion: stella/v1\nkind: Environment\nname: dev\nname: dev\n"},
        [("environments/dev.yaml", 4, "duplicate key 'name'")],
        id="duplicate-key",
    ),
    pytest.param(
        {"releases/shop-1.0.0.yaml": BILLION_LAUGHS},
        [("releases/shop-1.0.0.yaml", 4, "anchors and aliases are not allowed")],
        id="alias-bomb",
    ),
    pytest.param(
        {"releases/shop-1.0.0.yaml": RELEASE + "#" * MAX_MANIFEST_BYTES},
        [("releases/shop-1.0.0.yaml", None, "over the 262144-byte limit")],
        id="too-large",
    ),
    pytest.param(
        {"releases/a..b.yaml": RELEASE.replace("shop-1.0.0", "a..b")},
        [("releases/a..b.yaml", None, "is not a valid name")],
        id="dot-dot-file-name",
    ),
    pytest.param(
        {"releases/bad\x07name.yaml": RELEASE},
        [("releases/bad\\x07name.yaml", None, "is not a valid name")],
        id="control-character-file-name",
    ),
    pytest.param(
        {"promotions/ops@example.com.yaml": PROMOTION},
        [("promotions/ops@example.com.yaml", None, "is not a valid name (1-128 letters, digits, . _ -)")],
        id="name-with-at-sign",
    ),
    pytest.param(
        {f"promotions/{'p' * 129}.yaml": PROMOTION},
        [(f"promotions/{'p' * 129}.yaml", None, "is not a valid name (1-128 letters, digits, . _ -)")],
        id="name-of-129-characters",
    ),
    pytest.param(
        {"approvals/shop-1.0.0--dev/release-manager.yaml": "apiVersion: stella/v1\n"},
        [
            (
                "approvals/shop-1.0.0--dev/release-manager.yaml",
                None,
                "is not an approver identity (an email address)",
            )
        ],
        id="approval-file-not-an-identity",
    ),
    pytest.param(
        {
            "environments/dev.yaml": "apiVersion: stella/v1\nkind: Environment\nname: dev\n"
            "template: ../../etc/passwd\n"
        },
        [("environments/dev.yaml", 4, "must be a relative path inside the repository")],
        id="template-escapes",
    ),
    pytest.param(
        {"environments/dev.yaml": "apiVersion: stella/v2\nkind: Environment\nname: dev\n"},
        [("environments/dev.yaml", 1, "apiVersion must be 'stella/v1'")],
        id="wrong-api-version",
    ),
    pytest.param(
        {"environments/dev.yaml": "apiVersion: stella/v1\nkind: Release\nname: dev\n"},
        [("environments/dev.yaml", 2, "kind must be 'Environment' here, not 'Release'")],
        id="wrong-kind",
    ),
    pytest.param(
        {
            "promotions/shop-1.0.0--dev.yaml": "apiVersion: stella/v1\nkind: Promotion\n"
            "release: shop-1.0.0\nenvironment: qa\n"
        },
        [("promotions/shop-1.0.0--dev.yaml", 4, "unknown environment 'qa'")],
        id="unknown-environment",
    ),
    pytest.param(
        {"releases/shop-1.0.0.yaml": RELEASE.replace(DIGEST, "sha256:abc")},
        [("releases/shop-1.0.0.yaml", 5, "components.web.digest: String should match pattern")],
        id="bad-digest",
    ),
    pytest.param(
        {"releases/shop-1.0.0.yaml": RELEASE.replace("registry.example.com/shop/web", "Bad Image")},
        [("releases/shop-1.0.0.yaml", 5, "invalid image reference")],
        id="bad-image",
    ),
    pytest.param(
        {
            "environments/dev.yaml": "apiVersion: stella/v1\nkind: Environment\nname: dev\n"
            "secrets: {DB_PASSWORD: hunter2}\n"
        },
        [("environments/dev.yaml", 4, "secrets.DB_PASSWORD: String should match pattern")],
        id="secret-value-not-reference",
    ),
    pytest.param(
        {"environments/qa.yml": "apiVersion: stella/v1\nkind: Environment\nname: qa\n"},
        [("environments/qa.yml", None, "use the .yaml extension")],
        id="yml-extension",
    ),
    pytest.param(
        {
            "environments/dev.yaml": "apiVersion: stella/v1\nkind: Environment\nname: dev\n"
            "promotesFrom: prod\n"
        },
        [
            ("environments/dev.yaml", 4, "promotesFrom forms a cycle: dev -> prod -> dev"),
            ("environments/prod.yaml", 4, "promotesFrom forms a cycle: prod -> dev -> prod"),
        ],
        id="promotion-cycle",
    ),
    pytest.param(
        {"environments/dev.yaml": "apiVersion: stella/v1\nkind: Environment\nname: dev\n---\na: 1\n"},
        [("environments/dev.yaml", 4, "YAML syntax error")],
        id="two-documents",
    ),
    pytest.param(
        {
            "environments/prod.yaml": "apiVersion: stella/v1\nkind: Environment\nname: prod\n"
            "approvals: {required: 1, groups: [nobody]}\n"
        },
        [("environments/prod.yaml", 4, "unknown approver group 'nobody'")],
        id="unknown-group",
    ),
    pytest.param(
        {
            "environments/prod.yaml": "apiVersion: stella/v1\nkind: Environment\nname: prod\n"
            "freezeWindows:\n  - {start: 2026-12-20T00:00:00Z, end: 2026-12-01T00:00:00Z}\n"
        },
        [("environments/prod.yaml", 5, "freeze window end must be after its start")],
        id="freeze-window-backwards",
    ),
    pytest.param(
        {"stella.yaml": None},
        [("stella.yaml", None, "missing: every Stella repository has a stella.yaml")],
        id="no-settings",
    ),
    pytest.param(
        {
            "approvals/shop-1.0.0--dev/release-manager@example.com.yaml": "apiVersion: stella/v1\n"
            f"kind: Approval\npromotion: other\nrelease: {DIGEST}\ndecision: approve\n"
        },
        [
            (
                "approvals/shop-1.0.0--dev/release-manager@example.com.yaml",
                3,
                "promotion 'other' does not match its directory 'shop-1.0.0--dev'",
            )
        ],
        id="approval-wrong-promotion",
    ),
]


@pytest.mark.parametrize(("change", "expected"), BAD)
def test_bad_repository(
    tmp_path: Path,
    change: dict[str, str | None],
    expected: list[tuple[str, int | None, str]],
) -> None:
    write_files(tmp_path, {**BASE, **change})
    problems = problems_of(tmp_path)
    got = [(p.file, p.line) for p in problems]
    assert got == [(f, line) for f, line, _ in expected], problems
    for problem, (_, _, fragment) in zip(problems, expected, strict=True):
        assert fragment in problem.message, problem


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            **BASE,
            "environments/dev.yaml": "apiVersion: stella/v1\nkind: Environment\nname: dev\nfoo: 1\n",
            "releases/shop-1.0.0.yaml": RELEASE + "bar: 2\n",
            "promotions/x.yaml": "apiVersion: stella/v1\nkind: Promotion\nrelease: nope\nenvironment: dev\n",
        },
    )
    assert [str(p) for p in problems_of(tmp_path)] == [
        "environments/dev.yaml:4: unknown field 'foo'",
        "promotions/x.yaml:3: unknown release 'nope'",
        "releases/shop-1.0.0.yaml:6: unknown field 'bar'",
    ]


def test_loads_from_a_commit_not_the_work_tree(tmp_path: Path) -> None:
    make_repo(tmp_path)
    write_files(tmp_path, {"environments/dev.yaml": "not: [valid"})  # uncommitted
    repo = Repo(tmp_path)
    commit = repo.resolve_ref("main")
    assert commit is not None
    loaded = load_repository(repo.tree(commit))
    assert loaded.commit == commit
    assert sorted(loaded.environments) == ["dev", "prod"]
