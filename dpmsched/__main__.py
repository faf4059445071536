"""The command line: ``python -m dpmsched <command> [options]``  (DESIGN.md §1).

Each command lives in the module that owns the idea; this table only names it, so that
``python -m dpmsched --help`` stays fast and a command imports only what it needs.
"""
from __future__ import annotations

import importlib
import sys

#: command → (module, function taking argv and returning an exit code, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("dpmsched.batch", "cli_demo", "run every notebook with papermill into runs/ and print a summary"),
    "report": ("dpmsched.sweep", "cli_report", "collect sweep results under runs/ into a markdown table and figures"),
    "sweep": ("dpmsched.sweep", "cli_sweep", "run a notebook over a parameter grid (YAML) in a process pool"),
    "optimize": ("dpmsched.optimize", "cli_optimize", "optimize a schedule for a model and solver; writes JSON"),
    "finetune": ("dpmsched.finetune", "cli_finetune", "Huang Phase-2: finetune a model on its optimized steps, alternating with Phase-1"),
    "sample": ("dpmsched.solvers", "cli_sample", "draw samples with a solver and a schedule; writes .safetensors/.npz/.npy"),
    "train": ("dpmsched.train", "cli_train", "train a shipped model from a YAML config (resumes; writes data/<name>/)"),
    "elbo-table": ("dpmsched.optimize.elbo", "cli_elbo_table",
                   "Watson et al.: bits/dim of even, quadratic and ELBO-DP paths per K; writes JSON"),
    "results": ("dpmsched.results", "cli_results", "regenerate the README results section and figure from benchmarks/schedules.json"),
    "strip": ("dpmsched.batch", "cli_strip", "store notebooks without outputs (--refresh: re-run checked cells)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m dpmsched <command> [options]\n\ncommands:")
        for name, (_, _, text) in sorted(COMMANDS.items()):
            print(f"  {name:<14} {text}")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"unknown command {cmd!r}; expected one of {sorted(COMMANDS)}", file=sys.stderr)
        return 2
    mod, fn, _ = COMMANDS[cmd]
    return int(getattr(importlib.import_module(mod), fn)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
