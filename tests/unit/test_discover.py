"""`discover()` and `check()` on real distributions: entry points written to disk, found by
importlib.metadata, imported by `EntryPoint.load()` (no mocks)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import doctor
from reconciler.discover import check, discover
from reconciler.protocols import (
    PLUGIN_API_VERSION,
    Gate,
    PluginManifest,
    RegistryPlugin,
    SignerPlugin,
    VerifierPlugin,
)
from tests.support.plugins import IMPORT_ERROR, MODULE_PREFIX, write_distribution, write_gate

OFFLINE = "(`offline: true` in stella.yaml, or --offline)"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for throwaway distributions; their modules are forgotten afterwards."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in [m for m in sys.modules if m.startswith(MODULE_PREFIX)]:
        del sys.modules[name]


# variant, why it is refused online, and offline (None: it is usable)
GATES: list[tuple[str, str | None, str | None]] = [
    ("healthy", None, None),
    ("raises", None, None),  # raising is found when it is evaluated, not when it is loaded
    ("hangs", None, None),
    (
        "import-error",
        f"failed to import stella_testplugin_import_error_gate:gate: RuntimeError: {IMPORT_ERROR}",
        f"failed to import stella_testplugin_import_error_gate:gate: RuntimeError: {IMPORT_ERROR}",
    ),
    (
        "old-api",
        f"targets plugin API version 0, this Stella provides version {PLUGIN_API_VERSION}",
        f"targets plugin API version 0, this Stella provides version {PLUGIN_API_VERSION}",
    ),
    ("network", None, f"plugin 'network-gate' needs the network and offline mode is on {OFFLINE}"),
]


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
@pytest.mark.parametrize(("variant", "online_reason", "offline_reason"), GATES, ids=[g[0] for g in GATES])
def test_discover_gate_distributions(
    site: Path, variant: str, online_reason: str | None, offline_reason: str | None, offline: bool
) -> None:
    write_gate(site, variant)
    name = f"{variant}-gate"
    plugins = discover(offline=offline, kinds=("gates",))
    reason = offline_reason if offline else online_reason
    if reason is None:
        gate = plugins.gates[name]
        assert isinstance(gate, Gate)
        assert gate.manifest == PluginManifest(
            name=name,
            version="0.1",
            kinds=("gate",),
            network=variant == "network",
            api_version=1,
            description=f"test gate: {variant}",
        )
        assert ("gates", name) not in plugins.broken
    else:
        assert name not in plugins.gates
        assert plugins.broken[("gates", name)] == reason
        assert plugins.unavailable("gates", name) == f"gate plugin {name!r} is not usable: {reason}"
    # the built-in gates load whatever a third party installs beside them
    assert {"approvals", "environment-order", "freeze-window"} <= set(plugins.gates)
    assert plugins.offline is offline


def test_doctor_sees_what_discover_sees(site: Path) -> None:
    for variant, *_ in GATES:
        write_gate(site, variant)
    for offline in (False, True):
        plugins = discover(offline=offline)
        rows = {(p.kind, p.name): p for p in doctor.scan_plugins(offline=offline) if p.kind in ("gates",)}
        assert {key: row.reason for key, row in rows.items() if row.health != "loaded"} == {
            key: reason for key, reason in plugins.broken.items() if key[0] == "gates"
        }
        assert {name for (_, name), row in rows.items() if row.health == "loaded"} == set(plugins.gates)


def test_a_plugin_without_an_entry_point_is_not_installed() -> None:
    plugins = discover(kinds=("gates",))
    assert plugins.unavailable("gates", "nothing-like-it") == (
        "gate plugin 'nothing-like-it' is not installed (no stella.gates entry point)"
    )


_REGISTRY_WITHOUT_OPEN = """\
from reconciler.protocols import PluginManifest


class _Half:
    manifest = PluginManifest(name="half", version="0.1", kinds=("registry",), network=False)


plugin = _Half()
"""

_SIGNER_WITHOUT_MANIFEST = """\
class _Anonymous:
    def open(self, key, environ):
        raise NotImplementedError


plugin = _Anonymous()
"""


@pytest.mark.parametrize(
    ("group", "kind", "source", "reason"),
    [
        (
            "stella.registries",
            "registries",
            _REGISTRY_WITHOUT_OPEN,
            "does not implement the RegistryPlugin interface",
        ),
        ("stella.signers", "signers", _SIGNER_WITHOUT_MANIFEST, "has no PluginManifest `manifest` attribute"),
        ("stella.signers", "signers", "plugin = None\n", "has no PluginManifest `manifest` attribute"),
        (
            "stella.registries",
            "registries",
            "import stella_testplugin_no_such_module\n",
            "failed to import stella_testplugin_broken:plugin: ModuleNotFoundError: No module named 'stella_testplugin_no_such_module'",
        ),
    ],
    ids=["registry-without-open", "signer-without-manifest", "none", "missing-dependency"],
)
def test_discover_refuses_what_breaks_its_contract(
    site: Path, group: str, kind: str, source: str, reason: str
) -> None:
    write_distribution(
        site,
        "stella-testplugin-broken",
        entry_points={group: {"broken": "stella_testplugin_broken:plugin"}},
        module="stella_testplugin_broken",
        source=source,
    )
    plugins = discover(kinds=(kind,))
    assert plugins.broken == {(kind, "broken"): reason}
    assert "broken" not in getattr(plugins, kind)


_VERIFYING_SIGNER = """\
from reconciler.api import PluginManifest


class _Verifying:
    manifest = PluginManifest(name="verifying", version="0.1", kinds=("signer",), network=False)

    def open(self, key, environ):
        raise NotImplementedError

    def open_verifier(self, files):
        return None


plugin = _Verifying()
"""


def test_signers_that_also_verify_are_found_by_their_protocol(site: Path) -> None:
    write_distribution(
        site,
        "stella-testplugin-verifying",
        entry_points={"stella.signers": {"verifying": "stella_testplugin_verifying:plugin"}},
        module="stella_testplugin_verifying",
        source=_VERIFYING_SIGNER,
    )
    plugins = discover(kinds=("signers",))
    verifiers = plugins.verifiers()
    assert list(verifiers) == ["keyless", "verifying"]  # the key signer verifies through the core
    assert verifiers["keyless"] is plugins.signers["keyless"]
    assert all(isinstance(v, VerifierPlugin) for v in verifiers.values())
    assert not isinstance(plugins.signers["key"], VerifierPlugin)


class _Gate:
    def __init__(self, manifest: object) -> None:
        self.manifest = manifest

    def evaluate(self, ctx: object) -> object:
        raise NotImplementedError


def _manifest(**changes: Any) -> PluginManifest:
    fields: dict[str, Any] = {"name": "g", "version": "1.0", "kinds": ("gate",), "network": False}
    return PluginManifest(**{**fields, **changes})


@pytest.mark.parametrize(
    ("obj", "protocol", "offline", "expected"),
    [
        (_Gate(_manifest()), Gate, False, None),
        (_Gate(_manifest()), Gate, True, None),
        (_Gate(_manifest(network=True)), Gate, False, None),
        (
            _Gate(_manifest(network=True)),
            Gate,
            True,
            f"plugin 'g' needs the network and offline mode is on {OFFLINE}",
        ),
        (
            _Gate(_manifest(api_version=2)),
            Gate,
            False,
            "targets plugin API version 2, this Stella provides version 1",
        ),
        (_Gate({"name": "g"}), Gate, False, "has no PluginManifest `manifest` attribute"),
        (_Gate(_manifest()), RegistryPlugin, False, "does not implement the RegistryPlugin interface"),
        (_Gate(_manifest()), SignerPlugin, False, "does not implement the SignerPlugin interface"),
        # the API version is checked before the interface, and both before the offline setting
        (
            _Gate(_manifest(api_version=0, network=True)),
            RegistryPlugin,
            True,
            "targets plugin API version 0, this Stella provides version 1",
        ),
    ],
    ids=[
        "gate",
        "gate-offline",
        "network-gate-online",
        "network-gate-offline",
        "newer-api",
        "dict-manifest",
        "gate-as-registry",
        "gate-as-signer",
        "version-first",
    ],
)
def test_check(obj: object, protocol: type, offline: bool, expected: str | None) -> None:
    assert check(obj, protocol, offline=offline) == expected


IMPORTS = {
    "exits": ("import sys\nsys.exit(4)\n", "failed to import stella_testplugin_exits:gate: SystemExit: 4"),
    "hangs": (
        "import threading\nthreading.Event().wait(30)\n",
        "importing stella_testplugin_hangs:gate did not finish within 0.3s",
    ),
}


@pytest.mark.parametrize(("source", "reason"), IMPORTS.values(), ids=IMPORTS.keys())
def test_a_plugin_that_exits_or_hangs_at_import_is_refused(
    site: Path, monkeypatch: pytest.MonkeyPatch, source: str, reason: str
) -> None:
    monkeypatch.setattr("reconciler.discover.IMPORT_TIMEOUT", 0.3)
    name = reason.split(":")[0].split()[-1].removeprefix(MODULE_PREFIX)
    write_distribution(
        site,
        f"{name}-gate",
        entry_points={"stella.gates": {f"{name}-gate": f"{MODULE_PREFIX}{name}:gate"}},
        module=f"{MODULE_PREFIX}{name}",
        source=source,
    )
    plugins = discover(kinds=("gates",))  # returns: neither the exit nor the hang stops the core
    assert plugins.broken[("gates", f"{name}-gate")] == reason
    assert "approvals" in plugins.gates
