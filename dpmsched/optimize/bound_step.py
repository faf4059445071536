r"""The step-cost bound (``bound-step``, ours): the actual solver step's local error on the teacher, propagated by
the measured Jacobian of the flow map, minimised exactly by a DP over the solver's state.  (docs/math.md §3.9)

**Why.**  ``bound-prop`` (:mod:`.bound`, §3.8) prices a step by a τ-based model of Euler's local error (for
multistep solvers, a backward-difference polynomial through τ) and propagates it with one secant amplification
factor per noise level.  Neither is the step the solver really takes, and with DPM-Solver++(2M) it loses to
hand-made schedules (benchmarks/schedules.md).  Here both pieces are measured.

**Local error of the actual step** (:func:`pair_errors`, :func:`triplet_errors`).  Let x(σ) be the teacher
trajectory through x(σ_0) = σ_max z and D_g = D(x(σ_g); σ_g) its denoiser outputs (:mod:`.teacher`, grid g_0 > … >
g_{G−1}).  A step a → c of the solver, fed the teacher's state and the teacher's history, lands at x̂ and misses
by ℓ = x̂ − x(g_c):

* one-step solvers (Euler, DDIM η = 0; **pairs**): x̂ = :func:`dpmsched.solvers.euler_step` (x(g_a), D_a, g_a, g_c);
* DPM-Solver++(2M) (**triplets** p < a < c): x̂ = :func:`dpmsched.solvers.dpmpp_step` (x(g_a), [D_p, D_a],
  [g_p, g_a, g_c], 1, order 2) — the solver's own arithmetic, the one function its loop calls;
  its first step, and its last under ``lower_order_final`` (default), are first order
  (:func:`~dpmsched.solvers.base.step_order` decides, as in the solver) and cost the order-1 pair.

**Propagation.**  With Φ_{a→b} the exact flow map and Ψ_i step i (which may read the history), the global error
telescopes (Lady Windermere's fan) and, to first order around the teacher,

    x_N − x(σ_N) = Σ_i [Φ_{i+1→N}(Ψ_i(x_i)) − Φ_{i+1→N}(Φ_{i→i+1}(x_i))]  =  Σ_i J_{i+1} ℓ_i + Σ_i R_i,

J_c = ∂x(σ_N)/∂x(g_c) along the teacher.  **The inequality that makes it a bound** is Minkowski's (the triangle
inequality of the RMSE norm ‖v‖ = (E_b ‖v_b‖²/d)^{1/2} over latents b and the d coordinates — the metric the
project judges schedules by): ‖Σ_i J_{i+1} ℓ_i‖ ≤ Σ_i ‖J_{i+1} ℓ_i‖ =: Σ_i c_i.  Each c_i depends on one edge
(and, for 2M, on the node before it), so the sum is minimised exactly over grid paths by the pair DP
(:func:`.dp.shortest_path`) or the triplet DP (:func:`.dp.shortest_path_multistep`).
``aggregate="mean"`` uses E_b ‖J ℓ_b‖ instead (bound-prop's normalisation; the triangle inequality bounds
E_b ‖Σ J ℓ_b‖).

**J ℓ by adjoints** (:func:`.teacher.adjoints`, ``integrator="heun"``): a_j(c) = J_cᵀ v_j in one backward sweep
through the teacher's own Heun steps — the exact Jacobian of the teacher's discrete flow map (second order in the
grid) — and ⟨a_j(c), ℓ⟩ = ⟨v_j, J_c ℓ⟩ with E_v⟨v, w⟩² = ‖w‖².  When d ≤ m the v_j are the scaled basis √d e_j
and ‖J ℓ‖ is exact; otherwise m Gaussian directions, an unbiased estimate of c_i² (its root is biased low by
O(1/(mB))).  One sweep prices all O(G³) triplets; forward JVPs would need one sweep per local error.

**What it bounds, honestly.**  An upper bound on the RMSE of the *first-order* global error; the R_i are
neglected: (i) second-order terms of Φ in ℓ (zero for Gaussian data, whose flow is linear); (ii) the solver's
own error feedback — the local error taken at the numerical state and history instead of the teacher's (for 2M the
history error enters through D_a − D_p); (iii) the teacher's and grid's error and the Monte-Carlo over latents and
directions.  Measured (tests/test_bound_step.py): each c_i equals the real solver's one-step error from the exact
state, propagated by the exact flow, to +0.2…0.9 % on Gaussian data and within 5 % on a 2-D mixture; a whole
schedule's sum is ≥ its real endpoint RMSE for Euler on Gaussian data and ≥ 0.92 × it otherwise (often far above).

**Where it fails (measured, docs/math.md §3.9).**  On the trained digits model first order is far off at few-step
error sizes (‖J ℓ‖ is 19× the real propagated error of a first step landing at σ = 3.1, half of it at σ = 0.67):
the DP takes a first step 80 → 0.56 and loses (2M, NFE 5: held-out RMSE 0.315; bound-prop 0.113).  On toy2d-edm
it beats bound-prop and GITS in every cell measured (Euler and 2M, NFE 4–6).

**Solvers.**  ``euler``, ``ddim`` (pairs) and ``dpmpp_2m`` (triplets).  Others raise ValueError: DPM-Solver++(3M),
UniPC and iPNDM read two previous nodes (a quadruplet cost, G⁴ entries, and a DP over triplets that
:mod:`.dp` does not have); Heun and the stochastic samplers are not modelled.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from .. import solvers
from ..schedules import Schedule
from ..solvers.base import step_order
from ..solvers.registry import canonical
from .dp import shortest_path, shortest_path_multistep
from .teacher import adjoints, teacher

__all__ = ["bound_step", "SUPPORTED", "family", "direction_basis", "pair_errors", "triplet_errors", "step_costs",
           "path_cost", "solve_dp"]

#: solver → the state its step cost depends on: "pairs" (one-step) or "triplets" (two-step multistep)
SUPPORTED = {"euler": "pairs", "ddim": "pairs", "dpmpp_2m": "triplets"}
_CHUNK = 4_000_000                       # elements of one (P, C, B, D) block of triplet local errors
_COSTS: dict = {}


def family(solver: str) -> str:
    """"pairs" or "triplets" for a supported solver; ValueError naming the supported ones otherwise."""
    key = canonical(solver)
    if key not in SUPPORTED:
        raise ValueError(f"bound-step models the actual step of {sorted(SUPPORTED)} only, got {solver!r} "
                         "(3M/UniPC/iPNDM read two previous nodes: a quadruplet DP, not implemented)")
    return SUPPORTED[key]


def direction_basis(T) -> torch.Tensor:
    """v_j = √d e_j for every trajectory, (d, B, *event): mean_j ⟨J ᵀv_j, w⟩² = ‖J w‖² exactly."""
    shape = tuple(T.x.shape[2:])
    d = math.prod(shape)
    eye = torch.eye(d, dtype=torch.float64) * math.sqrt(d)
    return eye[:, None, :].expand(d, T.B, d).reshape(d, T.B, *shape).clone()


def pair_errors(T, solver: str):
    """Yields (a, ℓ) with ℓ[c − a − 1, b] = x̂_b(a → c) − x_b(g_c), (G − a − 1, B, D): one first-order step of
    ``solver`` (Euler/DDIM, or 2M's order-1 step) from the teacher state at g_a to every later grid point."""
    X, F = T.flat("x"), T.flat("f")
    sig = torch.as_tensor(T.grid.copy())
    multistep = family(solver) == "triplets"
    for a in range(T.G - 1):
        sc = sig[a + 1:, None, None]
        if multistep:
            xhat = solvers.dpmpp_step(X[a][None], [F[a][None]], [sig[a], sc], 0, 1)
        else:
            xhat = solvers.euler_step(X[a][None], F[a][None], sig[a], sc)
        yield a, xhat - X[a + 1:]


def triplet_errors(T, a: int, ps) -> torch.Tensor:
    """ℓ[i, c − a − 1, b] = x̂_b(p_i, a → c) − x_b(g_c), (len(ps), G − a − 1, B, D): DPM-Solver++(2M)'s order-2 step
    from the teacher state at g_a with the teacher's history D_p at g_p (p in ``ps``, all < a)."""
    X, F = T.flat("x"), T.flat("f")
    sig = torch.as_tensor(T.grid.copy())
    ps = torch.as_tensor(ps, dtype=torch.long)
    s = [sig[ps].reshape(-1, 1, 1, 1), sig[a], sig[a + 1:].reshape(1, -1, 1, 1)]
    xhat = solvers.dpmpp_step(X[a], [F[ps][:, None], F[a]], s, 1, 2)
    return xhat - X[a + 1:]


def _price(err: torch.Tensor, A: torch.Tensor, aggregate: str) -> torch.Tensor:
    """err (…, C, B, D), A (C, m, B, D) adjoints at the landing points → costs (…, C)."""
    proj = torch.einsum("...cbd,cjbd->...cjb", err, A)                       # ⟨v_j, J_c ℓ_b⟩
    if aggregate == "rms":
        return proj.pow(2).mean((-2, -1)).div(err.shape[-1]).sqrt()
    return proj.pow(2).mean(-2).sqrt().mean(-1)


def step_costs(T, solver: str, adj: torch.Tensor, aggregate: str = "rms"):
    """(C1, C3): the pair costs (G, G) of first-order steps and, for 2M, the triplet costs (G, G, G) of its
    order-2 steps (None for one-step solvers); +inf where not an edge.  ``adj``: (G, m, B, *event) from
    :func:`.teacher.adjoints`; ``aggregate``: "rms" (the bound of the module doc) or "mean" (E_b ‖J ℓ_b‖)."""
    if aggregate not in ("rms", "mean"):
        raise ValueError(f"aggregate must be 'rms' or 'mean', got {aggregate!r}")
    G = T.G
    A = adj.reshape(G, adj.shape[1], adj.shape[2], -1)
    C1 = torch.full((G, G), math.inf, dtype=torch.float64)
    for a, err in pair_errors(T, solver):
        C1[a, a + 1:] = _price(err, A[a + 1:], aggregate)
    if family(solver) == "pairs":
        return C1, None
    C3 = torch.full((G, G, G), math.inf, dtype=torch.float64)
    per_p = (G - 1) * A.shape[2] * A.shape[3]
    step = max(1, _CHUNK // per_p)
    for a in range(1, G - 1):
        for p0 in range(0, a, step):
            ps = range(p0, min(a, p0 + step))
            C3[p0:ps.stop, a, a + 1:] = _price(triplet_errors(T, a, ps), A[a + 1:], aggregate)
    return C1, C3


def path_cost(C1, C3, idx, lower_order_final: bool = True) -> float:
    """The objective of grid path ``idx``: every edge priced as the solver steps it (order from
    :func:`~dpmsched.solvers.base.step_order`: C1 for order 1, C3[previous, a, c] for order 2)."""
    idx = [int(i) for i in idx]
    n = len(idx) - 1
    order = 1 if C3 is None else 2
    total = 0.0
    for e in range(n):
        if step_order(e, n, order, lower_order_final) == 1:
            total += float(C1[idx[e], idx[e + 1]])
        else:
            total += float(C3[idx[e - 1], idx[e], idx[e + 1]])
    return total


def solve_dp(C1, C3, steps: int, lower_order_final: bool = True) -> tuple[np.ndarray, float]:
    """(grid indices, objective) of the exact optimum of :func:`path_cost` over paths 0 → G−1 with ``steps``
    edges.  Pairs: :func:`.dp.shortest_paths`; triplets: :func:`.dp.shortest_path_multistep`, whose last edge is
    first order — without ``lower_order_final`` the real last step is an order-2 middle edge followed by a
    free virtual edge G−1 → G.  Pairs: :func:`.dp.shortest_path` (the pair DP of :func:`.teacher.dp_schedule`)."""
    C1 = np.asarray(C1, dtype=np.float64)
    G = C1.shape[0]
    if C3 is None:
        return shortest_path(C1, int(steps))
    C3 = np.asarray(C3, dtype=np.float64)
    if lower_order_final:
        return shortest_path_multistep(C1, C3, steps)
    C1v = np.full((G + 1, G + 1), np.inf)
    C1v[:G, :G] = C1
    C1v[G - 1, G] = 0.0
    C3v = np.full((G + 1, G + 1, G + 1), np.inf)
    C3v[:G, :G, :G] = C3
    idx, cost = shortest_path_multistep(C1v, C3v, int(steps) + 1)
    return idx[:-1], cost


def _cached_costs(model, T, solver, m, seed, adjoint, aggregate):
    key = (id(T), family(solver), int(m), int(seed), adjoint, aggregate)     # euler = ddim: the same step
    if key in _COSTS and _COSTS[key][0] is T:
        return _COSTS[key][1]
    t0 = time.perf_counter()
    d = math.prod(T.x.shape[2:])
    basis = d <= int(m)
    adj = adjoints(model, T, m=m, seed=seed, directions=direction_basis(T) if basis else None, integrator=adjoint)
    t1 = time.perf_counter()
    C1, C3 = step_costs(T, solver, adj, aggregate)
    out = (C1, C3, {"directions": "basis" if basis else "gaussian", "m_used": int(adj.shape[1]),
                    "adjoint_seconds": t1 - t0, "cost_seconds": time.perf_counter() - t1})
    if len(_COSTS) >= 4:
        _COSTS.pop(next(iter(_COSTS)))
    _COSTS[key] = (T, out)                 # keep T alive so id(T) stays unique
    return out


def bound_step(model, steps: int, solver: str = "euler", *, n: int = 128, grid_points: int = 128, seed: int = 0,
               m: int = 4, adjoint: str = "heun", aggregate: str = "rms", lower_order_final: bool = True) -> Schedule:
    """The step-cost bound (module doc), minimised exactly over the teacher grid.

    ``solver``: euler, ddim (pair costs) or dpmpp_2m (triplet costs); anything else raises ValueError.
    ``m``: adjoint directions — the exact basis when the data dimension d ≤ m, else m Gaussian ones
    (``seed``); ``adjoint``: the one-step map the adjoint sweep differentiates ("heun", the teacher's own, or
    "euler", first order); ``aggregate``: "rms" (bound on the RMSE) or "mean"; ``lower_order_final``: as the
    solver will be run (2M only).  No endpoint polish: the schedule is the DP optimum of the bound.
    ``meta``: ``objective`` (the bound, data units at σ_N), ``grid_index``, settings, timings.
    """
    t0 = time.perf_counter()
    fam = family(solver)
    if not isinstance(lower_order_final, bool):
        raise ValueError(f"lower_order_final must be True or False, got {lower_order_final!r}")
    if not 1 <= int(steps) <= int(grid_points) - 1:
        raise ValueError(f"steps must be in 1..{int(grid_points) - 1} for a grid of {grid_points} points, got {steps}")
    T = teacher(model, n=n, grid_points=grid_points, seed=seed)
    C1, C3, info = _cached_costs(model, T, solver, m, seed, adjoint, aggregate)
    idx, cost = solve_dp(C1, C3, steps, lower_order_final)
    s = Schedule(T.grid[idx], "bound-step", {"objective": float(cost), "grid_index": [int(i) for i in idx]})
    s.meta.update({"n": n, "grid_points": grid_points, "seed": seed, "family": fam, "m": m, **info,
                   "adjoint": adjoint, "aggregate": aggregate, "lower_order_final": lower_order_final,
                   "teacher_seconds": T.seconds, "solver_transfer": False, "seconds": time.perf_counter() - t0})
    return s
