"""Benchmark how fast the `stella` command starts: the paths a user or a Git server waits on.

Times, as wall time of a whole process (what a shell or `git push` waits for):
  - `stella --help` (the parser and nothing behind it),
  - `stella validate --repo <copy of example-repo>` (the manifests loaded and validated),
  - `stella hook pre-receive` fed a push that touches no guarded ref (a new branch and a tag: what
    the server runs on almost every push),
and, interleaved with them in the same run, the baseline `python -c pass` (the interpreter's own
start). Medians of several runs, each also as a ratio to the baseline's median, so that figures from a
busy machine still compare. Run: `.venv/bin/python bench/bench_startup.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

EXAMPLE_REPO = Path(__file__).resolve().parent.parent / "example-repo"
TARGET_S = 0.15
"""The start-up time aimed at for each command (`python -c pass` takes about 0.02 s here)."""
BASELINE = "python -c pass"
ZERO = "0" * 40


def _stella() -> list[str]:
    """The installed console script beside this interpreter, else `python -m reconciler.cli`."""
    script = Path(sys.executable).parent / "stella"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "reconciler.cli"]


def _git(root: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "Bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "Bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
    }
    done = subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def prepare(workdir: Path) -> Path:
    """A copy of example-repo/, committed on `main` (the hook reads `stella.yaml` at HEAD)."""
    root = workdir / "repo"
    shutil.copytree(EXAMPLE_REPO, root)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "example")
    return root


def cases(root: Path) -> dict[str, tuple[list[str], str | None]]:
    """name -> (argv, stdin); the first is the baseline."""
    stella = _stella()
    head = _git(root, "rev-parse", "HEAD")
    push = f"{ZERO} {head} refs/heads/feature\n{ZERO} {head} refs/tags/v1\n"
    return {
        BASELINE: ([sys.executable, "-c", "pass"], None),
        "stella --help": ([*stella, "--help"], None),
        "stella validate": ([*stella, "validate", "--repo", str(root)], None),
        "hook pre-receive (no-op)": ([*stella, "hook", "pre-receive", "--repo", str(root)], push),
    }


def _once(argv: list[str], stdin: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    start = time.perf_counter()
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0 or (stdin is not None and (done.stdout or done.stderr)):
        raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return elapsed


@dataclass(frozen=True)
class Row:
    command: str
    median_ms: float
    min_ms: float
    over_baseline: float
    within_target: bool | None
    """Median at most `TARGET_S` (None for the baseline itself)."""


def measure(root: Path, repeats: int) -> list[Row]:
    """Every case once per round, round after round, so that all of them see the same machine load."""
    runs = cases(root)
    for argv, stdin in runs.values():  # warm the page cache and the bytecode caches
        _once(argv, stdin)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (argv, stdin) in runs.items():
            times[name].append(_once(argv, stdin))
    baseline = statistics.median(times[BASELINE])
    rows = []
    for name, measured in times.items():
        median = statistics.median(measured)
        rows.append(
            Row(
                command=name,
                median_ms=round(median * 1000, 1),
                min_ms=round(min(measured) * 1000, 1),
                over_baseline=round(median / baseline, 1),
                within_target=None if name == BASELINE else median <= TARGET_S,
            )
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stella-bench-") as tmp:
        rows = measure(prepare(Path(tmp)), args.repeats)
    if args.output == "json":
        print(json.dumps([asdict(row) for row in rows], indent=2))
        return 0
    print(f"{'command':<28}{'median ms':>12}{'min ms':>10}{'x baseline':>12}{'<= 150 ms':>11}")
    for row in rows:
        target = "" if row.within_target is None else ("yes" if row.within_target else "no")
        print(f"{row.command:<28}{row.median_ms:>12}{row.min_ms:>10}{row.over_baseline:>12}{target:>11}")
    print(f"medians of {args.repeats} runs, interleaved; ratios against `{BASELINE}` of the same run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
