"""``python -m dpmsched optimize``: the schedule of one method for a model and a solver, as JSON."""
from __future__ import annotations

from .. import solvers
from ..files import atomic_write_text
from ..models import load
from ..optimize import METHODS, SLOW_METHODS, optimize
from .common import ArgumentParser, parse_opts, positive_int

__all__ = ["main", "MAX_STEPS"]

#: above this many steps the command asks for --yes (a DP over that many steps takes long; the JSON grows)
MAX_STEPS = 1000


def main(argv: list[str]) -> int:
    """``python -m dpmsched optimize --model NAME --method M --steps N [--solver S] [--opt k=v] [--out FILE.json]``"""
    p = ArgumentParser(prog="python -m dpmsched optimize", description=main.__doc__)
    p.add_argument("--model", required=True, help="model name or checkpoint folder")
    p.add_argument("--method", required=True, choices=sorted(METHODS), metavar="METHOD",
                   help=f"one of {sorted(METHODS)}")
    p.add_argument("--steps", type=positive_int, required=True, help="number of solver steps N")
    p.add_argument("--solver", default="euler", help="solver the schedule is for (default: euler)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="method option (JSON value), repeatable")
    p.add_argument("--out", default="", help="write the schedule JSON here (default: print it)")
    p.add_argument("--yes", action="store_true", help=f"allow more than {MAX_STEPS} steps")
    a = p.parse_args(argv)
    if a.steps > MAX_STEPS and not a.yes:
        p.error(f"--steps {a.steps} is far beyond a few-step schedule (more than {MAX_STEPS}); pass --yes to run it")
    solvers.get(a.solver)                              # an unknown solver fails before any work
    opts = parse_opts(a.opt)
    if a.method in SLOW_METHODS:
        opts.setdefault("progress", True)              # a progress bar for the slow optimizers
    sched = optimize(load(a.model), a.method, a.steps, solver=a.solver, **opts)
    text = sched.to_json(indent=1)
    if a.out:
        atomic_write_text(a.out, text)
        print(f"wrote {a.out}: {sched}")
    else:
        print(text)
    return 0
