"""`stella reconcile --interval S`: passes on a schedule until SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.cli import STELLA
from tests.support.pipeline import RELEASE_130, example_workspace, promotion
from tests.support.repos import commit_all, write_files


def _eventually(check: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Poll `check` (bounded): the loop's passes are asynchronous by design."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_interval_loop_decides_new_promotions_and_stops_on_sigterm(tmp_path: Path) -> None:
    ws = example_workspace(tmp_path)
    loop = subprocess.Popen(
        [STELLA, "reconcile", "--interval", "0.5", "--repo", str(ws.root), "-o", "json"],
        env={**os.environ, **ws.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def statements() -> int:
            files = (
                ws.git("ls-tree", "-r", "--name-only", "refs/heads/stella/evidence")
                if _has_evidence()
                else ""
            )
            return sum(
                1 for f in files.splitlines() if f.startswith("evidence/") and not f.endswith("sigstore.json")
            )

        def _has_evidence() -> bool:
            return bool(ws.git("for-each-ref", "refs/heads/stella/evidence"))

        assert _eventually(lambda: statements() == 2)
        write_files(
            ws.root,
            {
                "releases/shop-1.3.0.yaml": RELEASE_130,
                "promotions/shop-1.3.0--dev.yaml": promotion("shop-1.3.0", "dev"),
            },
        )
        commit_all(ws.root, "another promotion while the loop runs")
        assert _eventually(lambda: statements() == 3)
    finally:
        loop.send_signal(signal.SIGTERM)
        out, err = loop.communicate(timeout=30)
    assert loop.returncode == 0, err
    assert '"decision": "allow"' in out
