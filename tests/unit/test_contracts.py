"""Contract tests: schemas match the models, built-in plugins load and satisfy their Protocols."""

from __future__ import annotations

from pathlib import Path

from reconciler import schemas
from reconciler.discover import check, discover
from reconciler.protocols import PluginManifest, RegistryPlugin

ROOT = Path(__file__).resolve().parents[2]


def test_schemas_are_generated_from_the_models() -> None:
    generated = schemas.generate()
    committed = {p.name: p.read_text() for p in (ROOT / "schemas").glob("*.schema.json")}
    assert committed == generated, "schemas/ drifted from the models: run `make schemas`"


def test_builtin_registry_plugins_load() -> None:
    plugins = discover()
    assert {"oci", "oci-layout"} <= set(plugins.registries)
    assert not plugins.broken
    for name, plugin in plugins.registries.items():
        assert isinstance(plugin, RegistryPlugin), name
        assert plugin.manifest.kinds == ("registry",)


def test_offline_refuses_network_plugins_by_name() -> None:
    plugins = discover(offline=True)
    assert "oci" not in plugins.registries
    assert "oci-layout" in plugins.registries
    reason = plugins.broken[("registries", "oci")]
    assert "'oci' needs the network" in reason and "offline: true" in reason


class _WrongVersion:
    manifest = PluginManifest("old", "0.1", ("registry",), network=False, api_version=0)

    def open(self, options: object, files: object) -> object:
        raise NotImplementedError


class _NoManifest:
    pass


def test_plugin_checks() -> None:
    assert "plugin API version 0" in (check(_WrongVersion(), RegistryPlugin, offline=False) or "")
    assert "no PluginManifest" in (check(_NoManifest(), RegistryPlugin, offline=False) or "")


def test_public_api_is_pinned() -> None:
    import reconciler

    assert sorted(reconciler.__all__) == sorted(
        [
            "PLUGIN_API_VERSION",
            "Actor",
            "ApprovalRecord",
            "FileSource",
            "Gate",
            "GateContext",
            "GateResult",
            "ImageRef",
            "InvalidInput",
            "PluginError",
            "PluginManifest",
            "PriorDecision",
            "Problem",
            "Registry",
            "RegistryOptions",
            "RegistryPlugin",
            "RegistryUnavailable",
            "Signer",
            "SignerPlugin",
            "StellaError",
            "Transient",
            "ValidationFailed",
            "Waiting",
            "__version__",
        ]
    )
    for name in reconciler.__all__:
        assert getattr(reconciler, name) is not None


def test_every_builtin_gate_and_signer_loads() -> None:
    plugins = discover()
    assert {"environment-order", "freeze-window", "approvals", "quota", "vulnerability", "signature"} <= set(
        plugins.gates
    )
    assert {"key", "keyless"} <= set(plugins.signers)
    assert not plugins.broken, plugins.broken


def test_discovering_the_plugins_imports_neither_sigstore_nor_httpx() -> None:
    """Every process imports every installed plugin at start-up; most never sign keylessly nor reach a
    registry, so those libraries (about 0.25 s of imports) are imported where they are used."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from reconciler.discover import GROUPS, discover\n"
        "discover(kinds=tuple(GROUPS))\n"
        "heavy = {'sigstore', 'sigstore_models', 'id', 'httpx', 'httpcore', 'tuf'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
