"""Provenance of a benchmark's result files: the git commit and the exact command that produced them."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

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
