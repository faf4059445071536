"""The solver registry: names, NFE accounting (docs/math.md §0.3) and orders of convergence."""
from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable

from ..schedules import Schedule
from .base import check_bool, check_number
from .first_order import ddim, ddpm_ancestral, euler
from .multistep import dpmpp_2m, dpmpp_3m, ipndm, unipc
from .runge_kutta import heun, rk4
from .sa_solver import sa_solver

__all__ = ["SOLVERS", "get", "nfe", "solver_order", "canonical", "check_options"]


SOLVERS: dict[str, Callable] = {
    "euler": euler, "ddim": ddim, "ddpm_ancestral": ddpm_ancestral, "heun": heun,
    "dpmpp_2m": dpmpp_2m, "dpmpp_3m": dpmpp_3m, "unipc": unipc, "ipndm": ipndm, "sa_solver": sa_solver,
    "rk4": rk4,
}

_NFE: dict[str, Callable[..., int]] = {
    "euler": lambda n, final_zero, **o: n,
    "ddim": lambda n, final_zero, **o: n,
    "ddpm_ancestral": lambda n, final_zero, **o: n,
    "heun": lambda n, final_zero, **o: 2 * n - (1 if final_zero else 0),
    "dpmpp_2m": lambda n, final_zero, **o: n,
    "dpmpp_3m": lambda n, final_zero, **o: n,
    "unipc": lambda n, final_zero, **o: n,
    "ipndm": lambda n, final_zero, **o: n,
    "sa_solver": lambda n, final_zero, mode="few_steps", **o: n + (1 if mode == "more_steps" and not final_zero else 0),
    "rk4": lambda n, final_zero, **o: 4 * n,
}

_ORDER: dict[str, Callable[..., int]] = {
    "euler": lambda **o: 1,
    "ddim": lambda **o: 1,
    "ddpm_ancestral": lambda **o: 1,
    "heun": lambda **o: 2,
    "dpmpp_2m": lambda **o: 2,
    "dpmpp_3m": lambda **o: 3,
    "unipc": lambda order=3, corrector=True, **o: order + (1 if corrector else 0),
    "ipndm": lambda max_order=4, **o: max_order,
    "sa_solver": lambda predictor_order=3, corrector_order=4, **o: (
        min(predictor_order + 1, corrector_order) if corrector_order else predictor_order),
    "rk4": lambda **o: 4,
}


def canonical(name: str) -> str:
    key = str(name).lower().replace("-", "_").replace("++", "pp")
    if key not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; expected one of {sorted(SOLVERS)}")
    return key


#: integer options whose value changes a solver's NFE or order, and their ranges (as the solvers check)
_INT_OPTIONS = {"order": (1, 3), "max_order": (1, 4), "predictor_order": (1, 4), "corrector_order": (0, 4)}


def check_options(key: str, opts: dict) -> None:
    """``opts`` must be keyword options of solver ``key``, and the ones :func:`nfe` and :func:`solver_order`
    read must have valid values — a typo would otherwise give a silently wrong count or order."""
    params = inspect.signature(SOLVERS[key]).parameters
    allowed = {k for k, v in params.items() if v.kind is v.KEYWORD_ONLY} - {"callback", "denoise_to_zero"}
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for solver {key!r}; expected some of {sorted(allowed)}")
    for name, (lo, hi) in _INT_OPTIONS.items():
        if name in opts:
            check_number(name, opts[name], lo, hi, integer=True)
    if "corrector" in opts:
        check_bool("corrector", opts["corrector"])
    if opts.get("mode", "few_steps") not in ("few_steps", "more_steps"):
        raise ValueError(f"mode must be 'few_steps' or 'more_steps', got {opts['mode']!r}")


def get(name: str) -> Callable:
    """The solver function registered under ``name`` (case-insensitive; "-" = "_", "dpm++" = "dpmpp")."""
    return SOLVERS[canonical(name)]


def nfe(name: str, steps, *, final_zero: bool = False, denoise_to_zero: bool = False, **opts) -> int:
    """Network evaluations of solver ``name`` over ``steps`` steps, or over a :class:`Schedule` (§0.3).

    ``final_zero``: the schedule ends in σ = 0 (matters for Heun: 2N − 1, and SA-Solver "more_steps"; read
    from the schedule when one is given);
    ``opts``: the solver's options (``mode`` for sa_solver); others do not change the count.  An option
    the solver does not have, or a bad value of one that counts, raises ValueError.
    """
    if isinstance(steps, Schedule):
        steps, final_zero = steps.steps, steps.has_final_zero
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    key = canonical(name)
    check_options(key, opts)
    return _NFE[key](int(steps), final_zero, **opts) + (1 if denoise_to_zero else 0)


def solver_order(name: str, **opts) -> int:
    """Global order of convergence of the deterministic solver ``name`` with options ``opts``.

    Euler/DDIM/DDPM 1, Heun 2, DPM-Solver++(2M) 2, (3M) 3, UniPC p + 1 with the corrector (p without),
    iPNDM ``max_order`` on uniform-σ grids (2 on graded grids), SA-Solver at τ = 0 min(p + 1, c)
    (p without corrector), RK4 4.  The "order-matched" schedule optimizers read this.  Measured
    against closed-form Gaussian solutions in tests/test_solvers_multistep.py.
    """
    key = canonical(name)
    check_options(key, opts)
    return int(_ORDER[key](**opts))

