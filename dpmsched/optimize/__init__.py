"""Schedule optimizers; each returns a :class:`~dpmsched.schedules.Schedule`.  (DESIGN.md §2)

Every grid dynamic program in the project goes through :func:`dpmsched.optimize.dp.shortest_paths`.
Submodules are imported on use.
"""
from __future__ import annotations

import importlib
import time

__all__ = ["METHODS", "optimize", "cli_optimize"]

#: method name → "module:function".  Each function is called as ``fn(model, steps, solver=..., **opts)``
#: and returns a Schedule with its objective value, settings and wall time in ``meta``.
#: Hand-made baselines are methods too, so the CLI and the benchmark treat every row alike.
METHODS: dict[str, str] = {
    "karras": "dpmsched.optimize.baselines:karras",
    "uniform-logsnr": "dpmsched.optimize.baselines:uniform_logsnr",
    "uniform-t": "dpmsched.optimize.baselines:uniform_t",
    "quadratic-t": "dpmsched.optimize.baselines:quadratic_t",
    "cosine": "dpmsched.optimize.baselines:cosine",
    "elbo-dp": "dpmsched.optimize.elbo:optimize_elbo_dp",
    "karras-tuned": "dpmsched.optimize.direct:karras_tuned",
    "hand-tuned": "dpmsched.optimize.direct:hand_tuned",
    "huang": "dpmsched.optimize.bound:huang",
    "bound-prop": "dpmsched.optimize.bound:bound_prop",
    "ots": "dpmsched.optimize.ots:ots",
    "gits": "dpmsched.optimize.gits:gits",
    "ays": "dpmsched.optimize.ays:ays",
    "direct": "dpmsched.optimize.direct:direct",
}


def optimize(model, method: str, steps: int, solver: str = "euler", **opts):
    """Run optimizer ``method`` (a key of :data:`METHODS`) for ``model`` and return its Schedule.

    ``model`` is a denoiser from :func:`dpmsched.denoisers.load` (or a name for it).  Records the
    wall time in ``meta["seconds"]`` if the method did not.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    if isinstance(model, str):
        from ..denoisers import load

        model = load(model)
    mod, fn = METHODS[method].split(":")
    t0 = time.perf_counter()
    sched = getattr(importlib.import_module(mod), fn)(model, steps, solver=solver, **opts)
    sched.meta.setdefault("seconds", time.perf_counter() - t0)
    sched.meta.setdefault("method", method)
    sched.meta.setdefault("solver", solver)
    return sched


#: methods that take minutes on a CPU and accept ``progress=True`` (a tqdm bar)
_SLOW = ("direct", "ays")


def _parse_opt(text: str):
    import json

    if "=" not in text:
        raise ValueError(f"--opt expects key=value, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def cli_optimize(argv: list[str]) -> int:
    """``python -m dpmsched optimize --model NAME --method M --steps N [--solver S] [--out FILE.json]``"""
    import argparse

    p = argparse.ArgumentParser(prog="python -m dpmsched optimize", description=cli_optimize.__doc__)
    p.add_argument("--model", required=True, help="model name or checkpoint folder")
    p.add_argument("--method", required=True, help=f"one of {sorted(METHODS)}")
    p.add_argument("--steps", type=int, required=True, help="number of solver steps N")
    p.add_argument("--solver", default="euler", help="solver the schedule is for (default: euler)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="method option (JSON value), repeatable")
    p.add_argument("--out", default="", help="write the schedule JSON here (default: print it)")
    a = p.parse_args(argv)
    opts = dict(_parse_opt(o) for o in a.opt)
    if a.method in _SLOW:
        opts.setdefault("progress", True)              # a progress bar for the slow optimizers
    sched = optimize(a.model, a.method, a.steps, solver=a.solver, **opts)
    text = sched.to_json(a.out or None, indent=1)
    print(text if not a.out else f"wrote {a.out}: {sched}")
    return 0
