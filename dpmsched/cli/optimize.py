"""``python -m dpmsched optimize``: the schedule of one method for a model and a solver, as JSON."""
from __future__ import annotations

import sys

from .. import solvers
from ..denoisers import model_range
from ..files import atomic_write_text
from ..models import load
from ..optimize import METHODS, SLOW_METHODS, optimize
from ..optimize.teacher import endpoint_error, reference_endpoints
from ..schedules import Schedule
from .common import ArgumentParser, add_guidance_arguments, apply_guidance, parse_opts, positive_int

__all__ = ["main", "MAX_STEPS", "heldout_comparison"]

#: above this many steps the command asks for --yes (a DP over that many steps takes long; the JSON grows)
MAX_STEPS = 1000


def heldout_comparison(model, sched, solver: str, used_seeds, n: int = 256) -> str:
    """One line: the schedule's endpoint RMSE on ``n`` held-out latents (a seed none of ``used_seeds``) next to
    EDM's Karras-ρ7 on the same latents — what the user gained."""
    seed = next(s for s in range(1, 100) if s not in used_seeds)
    z, x_ref = reference_endpoints(model, n=n, seed=seed)
    lo, hi = model_range(model)
    e = endpoint_error(model, sched, z, x_ref, solver)
    k = endpoint_error(model, Schedule.karras(sched.steps, lo, hi), z, x_ref, solver)
    return (f"held-out ({n} latents, seed {seed}), {solver} with {sched.steps} steps: {sched.name} RMSE {e:.4g} vs "
            f"Karras-rho7 {k:.4g} ({e / k:.2f}x); chosen from {sched.meta.get('choice')}"
            + (", polished" if sched.meta.get("polished") else "")
            + (f"; {sched.meta['seconds']:.1f} s" if "seconds" in sched.meta else ""))


def main(argv: list[str]) -> int:
    """``python -m dpmsched optimize --model NAME --method M --steps N [--solver S] [--opt k=v] [--out FILE.json]
    [--labels 0,1,... [--guidance W]]`` (a guided model's schedule: the guided denoiser is what the solver integrates)"""
    p = ArgumentParser(prog="python -m dpmsched optimize", description=main.__doc__)
    p.add_argument("--model", required=True, help="model name or checkpoint folder")
    p.add_argument("--method", required=True, choices=sorted(METHODS), metavar="METHOD",
                   help=f"one of {sorted(METHODS)}")
    p.add_argument("--steps", type=positive_int, required=True, help="number of solver steps N")
    p.add_argument("--solver", default="euler", help="solver the schedule is for (default: euler)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="method option (JSON value), repeatable")
    p.add_argument("--out", default="", help="write the schedule JSON here (default: print it)")
    add_guidance_arguments(p)
    p.add_argument("--yes", action="store_true", help=f"allow more than {MAX_STEPS} steps")
    a = p.parse_args(argv)
    if a.steps > MAX_STEPS and not a.yes:
        p.error(f"--steps {a.steps} is far beyond a few-step schedule (more than {MAX_STEPS}); pass --yes to run it")
    solvers.get(a.solver)                              # an unknown solver fails before any work
    opts = parse_opts(a.opt)
    if a.method in SLOW_METHODS:
        opts.setdefault("progress", True)              # a progress bar for the slow optimizers
    model = apply_guidance(load(a.model), a)
    sched = optimize(model, a.method, a.steps, solver=a.solver, **opts)
    if a.method == "auto":
        print(heldout_comparison(model, sched, a.solver, {int(sched.meta["seed"]), int(sched.meta["val_seed"])}),
              file=sys.stderr)
    text = sched.to_json(indent=1)
    if a.out:
        atomic_write_text(a.out, text)
        print(f"wrote {a.out}: {sched}")
    else:
        print(text)
    return 0
