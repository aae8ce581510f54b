"""Provenance of a benchmark's result files: the git commit and the exact command that produced them, and writing
the files with it."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def provenance(argv: list[str] | None = None) -> dict[str, str]:
    """{"commit", "command"} of this run; the commit says "+uncommitted changes" when tracked files differ from it.

    Args:
        argv: the script's arguments (default `sys.argv[1:]`); the script is `sys.argv[0]` relative to the repo.
    """
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        commit = "unknown (not a git checkout)"
    elif _git("status", "--porcelain", "--untracked-files=no"):
        commit += "+uncommitted changes"
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT) if sys.argv and sys.argv[0] else "?"
    args = sys.argv[1:] if argv is None else argv
    return {"commit": commit, "command": shlex.join(["python", script, *args])}


def provenance_line(record: dict[str, str]) -> str:
    """One Markdown line for the top of a results table."""
    return f"Produced by `{record['command']}` at commit {record['commit']}."


def write_results(out_dir, name: str, summary: dict, table: str, title: str | None = None) -> None:
    """NAME.md (a `# title` line when given, `provenance_line(summary["provenance"])`, the table) and NAME.json (the
    summary) under `out_dir` (created if missing); the table is printed too.

    Args:
        out_dir: the results folder, e.g. docs/results.
        name: the files' name without the suffix.
        summary: the results, with the run's `provenance()` under "provenance".
        table: the Markdown table of the results.
        title: the Markdown page's heading.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    heading = f"# {title}\n\n" if title else ""
    (out / f"{name}.md").write_text(f"{heading}{provenance_line(summary['provenance'])}\n\n{table}")
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table, flush=True)
