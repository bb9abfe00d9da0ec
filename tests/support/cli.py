"""Run the installed `stella` command as a user would: a real process, real exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STELLA = shutil.which("stella", path=str(Path(sys.executable).parent)) or "stella"


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def stella(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> Run:
    done = subprocess.run(
        [STELLA, *map(str, args)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Run(done.returncode, done.stdout, done.stderr)
