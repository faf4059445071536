"""``python -m dpmsched sweep`` (a notebook over a parameter grid) and ``report`` (its table and figures)."""
from __future__ import annotations

import sys
from pathlib import Path

from ..batch import DEFAULT_CELL_TIMEOUT
from ..executors import DASK_EXTRA, EXECUTORS
from ..report import write_report
from ..sweep import Terminated, load_grid, run_sweep
from .common import ArgumentParser, nonnegative_float, positive_int

__all__ = ["sweep", "report"]


def sweep(argv: list[str]) -> int:
    """``python -m dpmsched sweep GRID.yaml [--out runs] [--workers 2] [--executor local|dask] [--scheduler ADDR]
    [--figures]``: run a notebook over a grid."""
    p = ArgumentParser(prog="python -m dpmsched sweep", description=sweep.__doc__)
    p.add_argument("grid", help="YAML file with 'notebook', 'grid' and optionally 'fixed' (see sweeps/example.yaml)")
    p.add_argument("--out", default="runs", help="output folder (default: runs); with dask on a cluster it must "
                   "be on a filesystem the workers share")
    p.add_argument("--workers", type=positive_int, default=2,
                   help="notebooks run at a time: local processes, or the Dask LocalCluster's workers (default: 2)")
    p.add_argument("--executor", choices=sorted(EXECUTORS), default="local",
                   help="local: a process pool on this machine (default); dask: each run a task on a "
                        f"dask.distributed cluster ({DASK_EXTRA})")
    p.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="with --executor dask: the scheduler of your cluster (e.g. dask-jobqueue on Slurm); "
                        "default: a LocalCluster of --workers processes on 127.0.0.1")
    p.add_argument("--figures", action="store_true", help="save each run's figures to runs/<nb>/<hash>.figures/")
    p.add_argument("--cell-timeout", type=nonnegative_float, default=DEFAULT_CELL_TIMEOUT,
                   help=f"seconds one cell may run before its run fails (default: {DEFAULT_CELL_TIMEOUT:g}; 0: no limit)")
    a = p.parse_args(argv)
    if a.scheduler and a.executor != "dask":
        p.error("--scheduler needs --executor dask")
    notebook, runs = load_grid(a.grid)        # a bad grid file: one line naming it (dpmsched.cli)
    try:
        res = run_sweep(notebook, runs, a.out, a.workers, a.figures, log=lambda s: print(s, flush=True),
                        cell_timeout=a.cell_timeout or None, executor=a.executor, scheduler=a.scheduler,
                        progress=True)
    except Terminated:
        return 143
    except KeyboardInterrupt:
        return 130
    return 1 if res["failed"] else 0


def report(argv: list[str]) -> int:
    """``python -m dpmsched report RUNS_DIR [--keys a,b.c] [--out FILE]``: table + figure per notebook."""
    p = ArgumentParser(prog="python -m dpmsched report", description=report.__doc__)
    p.add_argument("folder", nargs="?", default="runs", help="folder the sweeps wrote into (default: runs)")
    p.add_argument("--keys", default="", help="comma-separated result keys (nested: a.b); default: top-level numbers")
    p.add_argument("--out", default=None, help="markdown file (default: FOLDER/report.md)")
    a = p.parse_args(argv)
    keys = [k.strip() for k in a.keys.split(",") if k.strip()] or None
    text = write_report(a.folder, keys, a.out)
    print(text)
    print(f"written: {a.out or Path(a.folder) / 'report.md'}", file=sys.stderr)
    return 0
