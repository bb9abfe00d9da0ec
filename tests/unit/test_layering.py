"""The import contracts of pyproject.toml (`[tool.importlinter]`), checked by the real `lint-imports`.

The project's code keeps them; and each contract breaks, naming the import at fault, when a copy of the
code gets one forbidden import: a plugin importing a private core module, a plugin importing another
plugin, the pure middle importing Git.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = {
    "reconciler": ROOT / "reconciler",
    "stella_oci": ROOT / "plugins" / "oci" / "stella_oci",
    "stella_scan": ROOT / "plugins" / "scan" / "stella_scan",
    "stella_sigstore": ROOT / "plugins" / "sigstore" / "stella_sigstore",
}
PUBLIC_API = "Plugins import only the public API, reconciler.api"
INDEPENDENT = "Plugins are independent of each other"
PURE = "The pure middle (policy, render, evidence, decision, ledger) does no I/O"


def lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_code_keeps_every_contract() -> None:
    got = lint_imports(ROOT)
    assert got.returncode == 0, got.stdout + got.stderr
    for contract in (PUBLIC_API, INDEPENDENT, PURE):
        assert f"{contract} KEPT" in got.stdout, got.stdout


# file to change, the import added to it, the contract it breaks, and the link lint-imports names
BREAKS = {
    "plugin-imports-private-core": (
        "stella_scan/gate.py",
        "import reconciler.loop",
        PUBLIC_API,
        "stella_scan.gate -> reconciler.loop",
    ),
    "plugin-imports-private-models": (
        "stella_oci/layout.py",
        "from reconciler.models import ReleaseLock",
        PUBLIC_API,
        "stella_oci.layout -> reconciler.models",
    ),
    "plugin-imports-another-plugin": (
        "stella_sigstore/gate.py",
        "import stella_oci.distribution",
        INDEPENDENT,
        "stella_sigstore.gate -> stella_oci.distribution",
    ),
    "pure-middle-imports-git": (
        "reconciler/policy.py",
        "import pygit2",
        PURE,
        "reconciler.policy -> pygit2",
    ),
}


@pytest.mark.parametrize(("path", "line", "contract", "link"), list(BREAKS.values()), ids=list(BREAKS))
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, path: str, line: str, contract: str, link: str
) -> None:
    source = tmp_path / "src"
    for name, package in PACKAGES.items():
        shutil.copytree(package, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    changed = source / path
    text = changed.read_text()
    anchor = "from __future__ import annotations\n"
    assert anchor in text, f"{path} has no `{anchor.strip()}` to add the import after"
    changed.write_text(text.replace(anchor, f"{anchor}\n{line}  # the forbidden import\n", 1))

    got = lint_imports(tmp_path, pythonpath=source)

    assert got.returncode == 1, got.stdout + got.stderr
    assert f"{contract} BROKEN" in got.stdout, got.stdout
    assert link in got.stdout, got.stdout
    others = {PUBLIC_API, INDEPENDENT, PURE} - {contract}
    assert all(f"{other} KEPT" in got.stdout for other in others), got.stdout
    origins = _origins(tmp_path, source)
    assert all(Path(o).is_relative_to(source) for o in origins), f"not the copies: {origins}"


def _origins(cwd: Path, pythonpath: Path) -> list[str]:
    """Where the root packages are imported from with that PYTHONPATH (the copies, not the project)."""
    code = f"import importlib.util as u; print(*(u.find_spec(n).origin for n in {sorted(PACKAGES)!r}))"
    got = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(pythonpath)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return got.stdout.split()
