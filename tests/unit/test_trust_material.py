"""The core carries a verifier plugin's trust material without knowing what it means: the plugin names
its files (`TrustMaterial`); the core reads them, in that order, for audit workers and packets."""

from __future__ import annotations

import pytest
from stella_sigstore.keyless import keyless as keyless_plugin

from reconciler.api import TrustFile, TrustMaterial
from reconciler.api.testing import MemoryFiles
from reconciler.audit.keyless import keyless_files, trust_files

POLICY = b"apiVersion: stella/v1\nkind: KeylessPolicy\ntrustedRoot: trust/sigstore/trusted_root.json\n"


def test_the_keyless_plugin_names_its_policy_and_the_root_it_pins() -> None:
    assert isinstance(keyless_plugin, TrustMaterial)
    files = MemoryFiles({"trust/keyless.yaml": POLICY, "trust/sigstore/trusted_root.json": b"{}"})
    assert keyless_plugin.trust_files(files) == [
        TrustFile("trust/keyless.yaml"),
        TrustFile("trust/sigstore/trusted_root.json", trusted_root=True),
    ]
    assert keyless_plugin.trust_files(MemoryFiles({"trust/allowed_signers": b""})) == []


@pytest.mark.parametrize(
    "root",
    ["/etc/passwd", "../outside.json", "trust/../../x", "C:/root.json", "a\\b.json", ""],
)
def test_a_root_path_that_could_leave_the_repository_is_not_carried(root: str) -> None:
    files = MemoryFiles({"trust/keyless.yaml": f"trustedRoot: {root!r}\n".encode()})
    assert keyless_plugin.trust_files(files) == [TrustFile("trust/keyless.yaml")]


def test_an_unreadable_policy_is_still_carried_so_the_verifier_can_say_why() -> None:
    files = MemoryFiles({"trust/keyless.yaml": b"{ not: yaml: ["})
    assert keyless_plugin.trust_files(files) == [TrustFile("trust/keyless.yaml")]


def test_the_core_reads_what_the_installed_plugins_name() -> None:
    files = MemoryFiles(
        {
            "trust/keyless.yaml": POLICY,
            "trust/sigstore/trusted_root.json": b"{}",
            "trust/allowed_signers": b"someone",
        }
    )
    assert [f.path for f in trust_files(files)] == ["trust/keyless.yaml", "trust/sigstore/trusted_root.json"]
    assert keyless_files(files) == (
        ("trust/keyless.yaml", POLICY),
        ("trust/sigstore/trusted_root.json", b"{}"),
    )
