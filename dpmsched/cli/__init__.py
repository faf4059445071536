"""The command line: ``python -m dpmsched <command> [options]`` (also installed as ``dpmsched``).

The top of the package: each command is a module here that parses its arguments and calls the library; no
library module imports this package.  A user error — a bad argument, a missing or corrupt file, an unknown
name, an invalid schedule, a NaN — prints one line ``dpmsched <command>: error: …`` and exits 2; ``--debug``
(anywhere on the line) shows the full traceback instead.  Other exceptions are bugs and keep their traceback.
"""
from __future__ import annotations

import importlib
import sys

__all__ = ["COMMANDS", "USER_ERRORS", "main"]

#: command → (module under dpmsched.cli, function taking argv and returning an exit code, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("notebooks", "demo", "run every notebook with papermill into runs/ and print a summary"),
    "strip": ("notebooks", "strip", "store notebooks without outputs (--refresh: re-run checked cells)"),
    "student": ("notebooks", "student", "copies of the notebooks without the worked solutions, for a class (runs/student/)"),
    "sweep": ("sweep", "sweep", "run a notebook over a parameter grid (YAML) in a process pool or on a Dask cluster"),
    "report": ("sweep", "report", "collect sweep results under runs/ into a markdown table and figures"),
    "optimize": ("optimize", "main", "optimize a schedule for a model and solver; writes JSON"),
    "sample": ("sample", "main", "draw samples with a solver and a schedule; writes .safetensors/.npz/.npy"),
    "finetune": ("finetune", "main", "Huang Phase-2: finetune a model on its optimized steps, alternating with Phase-1"),
    "train": ("train", "main", "train a shipped model from a YAML config (resumes; writes data/<name>/)"),
    "elbo-table": ("elbo", "main", "Watson et al.: bits/dim of even, quadratic and ELBO-DP paths per K; writes JSON"),
    "results": ("results", "main", "regenerate the README results section and figure from benchmarks/schedules.json"),
}

#: exceptions that mean "the input was wrong", shown as one line (ImportError: a missing optional extra)
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
               FloatingPointError, ImportError)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (0 ok, 1 some runs failed, 2 a user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m dpmsched <command> [options] [--debug]\n\ncommands:")
        for name, (_, _, text) in sorted(COMMANDS.items()):
            print(f"  {name:<14} {text}")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"dpmsched: error: unknown command {cmd!r}; expected one of {sorted(COMMANDS)}", file=sys.stderr)
        return 2
    mod, fn, _ = COMMANDS[cmd]
    try:
        return int(getattr(importlib.import_module(f"{__name__}.{mod}"), fn)(rest) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"dpmsched {cmd}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"dpmsched {cmd}: error: {msg}  (--debug shows the traceback)", file=sys.stderr)
        return 2
