"""`reconciler.fleet.config`: fleet.yaml into models, every problem with its file and line; references."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from reconciler.errors import InvalidInput
from reconciler.fleet import Fleet, Tenant, database_url, load_fleet, new_token, resolve_ref, token_hash

DESIGN_EXAMPLE = """\
# fleet.yaml
apiVersion: stella/v1
kind: Fleet
database: env:STELLA_DATABASE_URL
workdir: /var/lib/stella/fleet          # per-tenant clones and caches, 0700 per tenant
tenants:
  - {name: shop, repo: "git://git.example.com/shop.git", signingKey: "file:/etc/stella/shop.pem",
     webhookSecret: "env:SHOP_WEBHOOK_SECRET", pollInterval: 60s}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return path


def test_the_design_example_loads(tmp_path: Path) -> None:
    fleet = load_fleet(_write(tmp_path, DESIGN_EXAMPLE))
    assert fleet == Fleet(
        apiVersion="stella/v1",
        kind="Fleet",
        database="env:STELLA_DATABASE_URL",
        serviceRole="stella_service",
        workdir="/var/lib/stella/fleet",
        tenants=[
            Tenant(
                name="shop",
                repo="git://git.example.com/shop.git",
                signingKey="file:/etc/stella/shop.pem",
                webhookSecret="env:SHOP_WEBHOOK_SECRET",
                pollInterval="60s",
            )
        ],
    )
    assert fleet.tenant("shop") is fleet.tenants[0] and fleet.tenant("blog") is None


def test_defaults(tmp_path: Path) -> None:
    fleet = load_fleet(
        _write(
            tmp_path,
            "apiVersion: stella/v1\nkind: Fleet\nworkdir: /srv/fleet\ntenants:\n"
            "  - {name: a, repo: 'git@git.example.com:a.git', signingKey: env:A_KEY, webhookSecret: env:A_HOOK}\n",
        )
    )
    assert (fleet.database, fleet.serviceRole, fleet.tenants[0].pollInterval) == (
        "env:STELLA_DATABASE_URL",
        "stella_service",
        "60s",
    )


TENANT = "{name: a, repo: /srv/git/a.git, signingKey: env:K, webhookSecret: env:W%s}"
HEAD = "apiVersion: stella/v1\nkind: Fleet\nworkdir: /srv/fleet\ntenants:\n"
PLAIN = TENANT % ""
GOOD = HEAD + "  - " + PLAIN + "\n"

BAD = [
    pytest.param(
        HEAD + "  - " + TENANT % ", colour: red" + "\n",
        5,
        "unknown field 'tenants.0.colour'",
        id="tenant-extra",
    ),
    pytest.param(
        GOOD.replace("stella/v1", "stella/v2"),
        1,
        "apiVersion must be 'stella/v1', not 'stella/v2'",
        id="api-version",
    ),
    pytest.param(
        GOOD.replace("/srv/fleet", "srv/fleet"),
        3,
        "workdir: 'srv/fleet' must be an absolute path",
        id="relative-workdir",
    ),
    pytest.param(
        HEAD + "  - " + PLAIN.replace("/srv/git/a.git", "--upload-pack=evil") + "\n",
        5,
        "tenants.0.repo: '--upload-pack=evil' starts with '-' (it would be read as an option)",
        id="repo-option",
    ),
    pytest.param(
        HEAD + "  - " + PLAIN.replace("/srv/git/a.git", "git/a.git") + "\n",
        5,
        "tenants.0.repo: 'git/a.git' is not a Git URL (git://, https://, ssh://, file://, user@host:path) nor an absolute path",
        id="repo-relative",
    ),
    pytest.param(
        HEAD + "  - " + TENANT % ", pollInterval: 1x" + "\n",
        5,
        "tenants.0.pollInterval: String should match pattern '^[0-9dhms]+$'",
        id="poll-interval",
    ),
    pytest.param(
        HEAD + "  - " + TENANT % ", pollInterval: 60" + "\n",
        5,
        "tenants.0.pollInterval: Input should be a valid string",
        id="poll-number",
    ),
    pytest.param(
        HEAD + "  - " + PLAIN.replace("name: a", "name: ../a") + "\n",
        5,
        "tenants.0.name: String should match pattern",
        id="tenant-name",
    ),
    pytest.param(
        GOOD.replace("tenants:\n", "serviceRole: Stella-Service\ntenants:\n"),
        4,
        "serviceRole: String should match pattern",
        id="role-name",
    ),
    pytest.param(
        HEAD + "  - " + TENANT % "" + "\n  - " + TENANT % "" + "\n", 6, "duplicate tenant 'a'", id="duplicate"
    ),
    pytest.param("- 1\n", None, "the fleet file must be a mapping", id="not-a-mapping"),
    pytest.param(HEAD + "x: &a 1\n", 5, "YAML anchors and aliases are not allowed", id="anchor"),
    pytest.param(HEAD.replace("workdir", "kind"), 3, "duplicate key 'kind'", id="duplicate-key"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD)
def test_bad_fleet_files_name_file_and_line(
    tmp_path: Path, text: str, line: int | None, message: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InvalidInput) as caught:
        load_fleet(path)
    (problem,) = caught.value.problems
    assert (problem.file, problem.line) == (str(path), line)
    assert problem.message.startswith(message), problem.message


def test_resolve_ref(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    assert resolve_ref("env:A", {"A": "value"}) == "value"
    assert resolve_ref(f"file:{secret}", {}) == "s3cret"


def test_resolve_ref_failures_never_show_a_value(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    cases = {
        "env:MISSING": "the key (env:MISSING): environment variable MISSING is not set or empty",
        f"file:{tmp_path}/nope": f"the key (file:{tmp_path}/nope): cannot read it: No such file or directory",
        f"file:{empty}": f"the key (file:{empty}): the file is empty",
        "plain-text": "the key: 'plain-text' is not a reference (use env:NAME or file:/path)",
    }
    found = {}
    for ref in cases:
        with pytest.raises(InvalidInput) as caught:
            resolve_ref(ref, {"OTHER": "hidden-value"}, what="key")
        found[ref] = str(caught.value)
    assert found == cases


def test_the_database_url_variable_wins(tmp_path: Path) -> None:
    fleet = load_fleet(_write(tmp_path, GOOD.replace("workdir", "database: env:DB\nworkdir")))
    assert database_url(fleet, {"DB": "postgresql:///a"}) == "postgresql:///a"
    assert (
        database_url(fleet, {"DB": "postgresql:///a", "STELLA_DATABASE_URL": "postgresql:///b"})
        == "postgresql:///b"
    )
    with pytest.raises(
        InvalidInput, match=r"^the database URL \(env:DB\): environment variable DB is not set"
    ):
        database_url(fleet, {})


def test_tokens_are_random_and_hashed() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100 and all(t.startswith("stl_") and len(t) == 47 for t in tokens)
    assert token_hash("stl_x") == hashlib.sha256(b"stl_x").hexdigest()
