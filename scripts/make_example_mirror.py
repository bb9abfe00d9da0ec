"""Regenerate example-repo/mirror/oci/: small, deterministic OCI image layouts for the demo.

Run from the project root: `.venv/bin/python scripts/make_example_mirror.py`. Same bytes every time.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.oci import LayoutBuilder  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "example-repo" / "mirror" / "oci" / "registry.example.com"


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    web = LayoutBuilder(ROOT / "shop" / "web")
    for version in ("1.3.0", "1.4.0"):
        digest = web.image(version, content=f"shop web {version}\n".encode()).digest
        print(f"registry.example.com/shop/web:{version} -> {digest}")
    worker = LayoutBuilder(ROOT / "shop" / "worker")
    for version in ("1.3.0", "1.4.0"):
        index = worker.multi_arch(version, content=f"shop worker {version}\n".encode()).index.digest
        print(f"registry.example.com/shop/worker:{version} -> {index} (multi-arch index)")


if __name__ == "__main__":
    main()
