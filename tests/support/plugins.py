"""Throwaway plugin distributions on disk, found through real entry points.

`write_distribution()` writes what an installer would leave in `site-packages`: a
`<name>-<version>.dist-info/` directory with `METADATA` and `entry_points.txt`, and the plugin's module
beside it. With that directory on `sys.path` (or `PYTHONPATH` for the real `stella` command),
`importlib.metadata.entry_points()` finds the entry points and `EntryPoint.load()` imports the module:
the same path every real plugin takes.

`write_gate()` makes one gate plugin of a kind listed in `GATE_VARIANTS`: healthy, broken at import,
raising, hanging past the core's gate timeout, targeting the wrong plugin API version, or declaring
that it needs the network. `write_doctor_check()` makes a third-party `stella.doctor` plugin.
Module names all start with `MODULE_PREFIX`, so a test can drop them from `sys.modules` afterwards.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

MODULE_PREFIX = "stella_testplugin_"

HANG_SECONDS = 600
"""How long the hanging gate sleeps: far past any gate timeout a test sets (`STELLA_GATE_TIMEOUT`)."""

IMPORT_ERROR = "stella test plugin: broken at import"
EVALUATE_ERROR = "stella test plugin: evaluate exploded"


@dataclass(frozen=True)
class Distribution:
    """One written distribution: its name, version, module and entry points (group -> name -> target)."""

    name: str
    version: str
    module: str
    entry_points: dict[str, dict[str, str]]


_GATE_HEADER = """\
from reconciler.protocols import GateContext, GateResult, PluginManifest


class _Gate:
    manifest = PluginManifest(
        name={name!r},
        version={version!r},
        kinds=("gate",),
        network={network!r},
        api_version={api_version!r},
        description={description!r},
    )

    def evaluate(self, ctx: GateContext) -> GateResult:
"""

_GATE_BODIES = {
    "healthy": 'return GateResult(self.manifest.name, "pass", "fine", "nothing to object to")',
    "network": 'return GateResult(self.manifest.name, "pass", "fine", "looked it up online")',
    "old-api": 'return GateResult(self.manifest.name, "pass", "fine", "from an older Stella")',
    "raises": f"raise RuntimeError({EVALUATE_ERROR!r})",
    "hangs": f"import time\n\ntime.sleep({HANG_SECONDS})\nreturn GateResult(self.manifest.name, 'pass', 'late', 'too late')",
}

GATE_VARIANTS = ("healthy", "import-error", "raises", "hangs", "old-api", "network")
"""Every kind of gate `write_gate` can make."""


def _module_name(name: str) -> str:
    return MODULE_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", name)


def write_distribution(
    root: Path,
    name: str,
    *,
    entry_points: dict[str, dict[str, str]],
    module: str,
    source: str,
    version: str = "0.1",
) -> Distribution:
    """Write distribution `name` into `root`: dist-info (METADATA, entry_points.txt) and `module`.py."""
    root.mkdir(parents=True, exist_ok=True)
    normalized = re.sub(r"[-_.]+", "_", name)
    info = root / f"{normalized}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: a Stella test plugin\n"
    )
    sections = []
    for group, points in entry_points.items():
        lines = [f"[{group}]", *(f"{ep} = {target}" for ep, target in points.items())]
        sections.append("\n".join(lines) + "\n")
    (info / "entry_points.txt").write_text("\n".join(sections))
    (info / "top_level.txt").write_text(module + "\n")
    (root / f"{module}.py").write_text(source)
    return Distribution(name, version, module, entry_points)


def gate_source(variant: str, name: str, *, version: str = "0.1") -> str:
    """The module source of a gate plugin of `variant` (see `GATE_VARIANTS`) whose object is `gate`."""
    if variant not in GATE_VARIANTS:
        raise ValueError(f"unknown gate variant {variant!r}; known: {', '.join(GATE_VARIANTS)}")
    if variant == "import-error":
        return f"raise RuntimeError({IMPORT_ERROR!r})\n"
    header = _GATE_HEADER.format(
        name=name,
        version=version,
        network=variant == "network",
        api_version=0 if variant == "old-api" else 1,
        description=f"test gate: {variant}",
    )
    body = textwrap.indent(_GATE_BODIES[variant], " " * 8)
    return f"{header}{body}\n\n\ngate = _Gate()\n"


def write_gate(root: Path, variant: str, name: str | None = None) -> Distribution:
    """Write a gate plugin distribution of `variant` into `root`; its entry point is `name` (default:
    `<variant>-gate`) in group `stella.gates`."""
    name = name or f"{variant}-gate"
    module = _module_name(name)
    return write_distribution(
        root,
        f"stella-testplugin-{name}",
        entry_points={"stella.gates": {name: f"{module}:gate"}},
        module=module,
        source=gate_source(variant, name),
    )


def write_doctor_check(root: Path, name: str, *, raises: bool = False) -> Distribution:
    """Write a `stella.doctor` plugin `name`: its check reports one warning about the repository, or
    raises when `raises` is true."""
    module = _module_name(name)
    body = (
        f"raise RuntimeError({EVALUATE_ERROR!r})"
        if raises
        else "return [{'name': 'custom-' + self.manifest.name, 'status': 'warn',"
        " 'message': 'looked at ' + Path(repo_path).name, 'details': ['a detail']}]"
    )
    source = f"""\
from pathlib import Path

from reconciler.protocols import PluginManifest


class _Check:
    manifest = PluginManifest(
        name={name!r}, version="0.1", kinds=("doctor",), network=False, description="test doctor check"
    )

    def check(self, repo_path):
        {body}


check = _Check()
"""
    return write_distribution(
        root,
        f"stella-testplugin-{name}",
        entry_points={"stella.doctor": {name: f"{module}:check"}},
        module=module,
        source=source,
    )
