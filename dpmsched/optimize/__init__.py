"""Schedule optimizers; each returns a :class:`~dpmsched.schedules.Schedule`.

Every grid dynamic program in the project goes through :func:`dpmsched.optimize.dp.shortest_paths`.
Submodules are imported on use.
"""
from __future__ import annotations

import importlib
import inspect
import time

from .. import solvers
from ..models import load

__all__ = ["METHODS", "SLOW_METHODS", "optimize", "method_function", "check_method_options"]

#: method name → "module:function".  Each function is called as ``fn(model, steps, solver=..., **opts)``
#: and returns a Schedule with its objective value, settings and wall time in ``meta``.
#: Hand-made baselines are methods too, so the CLI and the benchmark treat every row alike.
METHODS: dict[str, str] = {
    "karras": "dpmsched.optimize.baselines:karras",
    "uniform-logsnr": "dpmsched.optimize.baselines:uniform_logsnr",
    "uniform-t": "dpmsched.optimize.baselines:uniform_t",
    "quadratic-t": "dpmsched.optimize.baselines:quadratic_t",
    "cosine": "dpmsched.optimize.baselines:cosine",
    "elbo-dp": "dpmsched.optimize.elbo_dp:optimize_elbo_dp",
    "karras-tuned": "dpmsched.optimize.direct:karras_tuned",
    "hand-tuned": "dpmsched.optimize.direct:hand_tuned",
    "huang": "dpmsched.optimize.bound:huang",
    "bound-prop": "dpmsched.optimize.bound:bound_prop",
    "bound-step": "dpmsched.optimize.bound_step:bound_step",
    "ots": "dpmsched.optimize.ots:ots",
    "gits": "dpmsched.optimize.gits:gits",
    "ays": "dpmsched.optimize.ays:ays",
    "direct": "dpmsched.optimize.direct:direct",
    "auto": "dpmsched.optimize.auto:auto",
}


#: methods that take minutes on a CPU and accept ``progress=True`` (a tqdm bar)
SLOW_METHODS = ("direct", "ays")


def method_function(method: str):
    """The optimizer function registered as ``method`` in :data:`METHODS`."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    mod, fn = METHODS[method].split(":")
    return getattr(importlib.import_module(mod), fn)


def _kind_ok(value, default) -> bool:
    """Does ``value`` have the type of the option's ``default`` (bool ≠ int; an int is a valid float)?"""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True             # strings (may also take a Schedule), None, tuples: checked by the method itself


def check_method_options(method: str, opts: dict) -> None:
    """ValueError unless every option in ``opts`` is a parameter of ``method`` with a value of its default's
    type (``refine="no"`` or ``n=8.7`` are refused, naming the valid options).  Methods that pass extra options
    on to the solver (``**solver_opts``) accept other names; the solver checks those."""
    params = inspect.signature(method_function(method)).parameters
    named = {k: p for k, p in params.items() if k not in ("model", "steps", "solver")
             and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    valid = ", ".join(f"{k}={p.default!r}" for k, p in named.items())
    for k, v in opts.items():
        if k not in named:
            if not open_ended:
                raise ValueError(f"unknown option {k!r} for method {method!r}; valid options: {valid or 'none'}")
            continue
        d = named[k].default
        if d is not inspect.Parameter.empty and not _kind_ok(v, d):
            raise ValueError(f"option {k}={v!r} of method {method!r} must be a {type(d).__name__} "
                             f"(default {d!r}); valid options: {valid}")


def optimize(model, method: str, steps: int, solver: str = "euler", **opts):
    """Run optimizer ``method`` (a key of :data:`METHODS`) for ``model`` and return its Schedule.

    ``model`` is a denoiser from :func:`dpmsched.models.load` (or a name for it).  The solver name and the
    options are checked first (:func:`check_method_options`; an unknown solver raises even for a method
    that does not use it, so ``meta["solver"]`` never records a solver that does not exist).  Records the
    wall time in ``meta["seconds"]`` if the method did not.
    """
    fn = method_function(method)
    solvers.get(solver)
    check_method_options(method, opts)
    if isinstance(model, str):
        model = load(model)
    t0 = time.perf_counter()
    sched = fn(model, steps, solver=solver, **opts)
    sched.meta.setdefault("seconds", time.perf_counter() - t0)
    sched.meta.setdefault("method", method)
    sched.meta.setdefault("solver", solver)
    return sched
