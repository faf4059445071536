"""Where a number came from: the git commit of the code and the machine that ran it.

Used by checkpoint configs (:mod:`dpmsched.checkpoints`) and every benchmark script, so that each recorded
number names the code and the machine that produced it in one format.
"""
from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["git_commit", "machine", "timestamp"]

_HERE = Path(__file__).resolve().parent


def git_commit(default: str = "unknown", short: bool = False) -> str:
    """The current git commit of the repository holding this package (``default`` outside git, e.g. an
    installed wheel); ``short``: the abbreviated hash.  A ``+modified`` suffix says that the package or the
    benchmark scripts differ from that commit (uncommitted changes), so a recorded number is never
    attributed to code that did not produce it."""
    try:
        out = subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"],
                             cwd=_HERE, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip()
        if out.returncode != 0 or not commit:
            return default
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", str(_HERE), str(_HERE.parent / "benchmarks")],
                              cwd=_HERE, capture_output=True, timeout=10)
        return commit + ("+modified" if diff.returncode == 1 else "")
    except (OSError, subprocess.SubprocessError):
        return default


def timestamp() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def machine(threads: int | None = None) -> dict:
    """The machine a measurement ran on, as a flat dict: ``platform`` (e.g. "x86_64 Linux"), ``python``,
    ``torch``, ``cpus`` (os.cpu_count), ``threads`` (torch threads, or the given number), ``device``
    (the CUDA device name if one is visible, else "cpu")."""
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"platform": f"{platform.machine()} {platform.system()}", "python": platform.python_version(),
            "torch": torch.__version__, "cpus": os.cpu_count(),
            "threads": int(threads if threads is not None else torch.get_num_threads()), "device": dev}
