r"""Error-bound schedules: Huang Phase-1 (faithful) and a propagation-aware bound of our own.
(docs/math.md §3.2–3.4, §3.6–3.8)

**Faithful Huang Phase-1 (``huang``).**  The schedule-dependent part of Euler's error (§3.2, eq. 3.1)

    L_disc(σ) = E_traj Σ_i ∫_{u_i}^{u_{i+1}} ‖τ(u) − τ(u_i)‖ du,       u = 1/σ,

estimated by Monte Carlo from B teacher trajectories on a fine grid (:mod:`.teacher`), discretised
as the right-Riemann pair cost C[a, c] of §3.4(a) (:func:`dpmsched.theory.bound_pair_costs`),
minimised exactly over grid paths with N edges by :func:`dpmsched.optimize.dp.shortest_paths`, then
refined continuously (§3.4(b): Nelder–Mead on the softmax-cumsum logits of the MC bound
:func:`dpmsched.theory.bound_mc`, started at the DP path — derivative-free because τ is interpolated
piecewise-linearly between grid points, so the bound has kinks at every grid point and gradient
methods (L-BFGS-B) stop at iteration 0).

**Why it misplaces the first step.**  Write e_i = x_i − x(σ_i) for Euler's error and
ℓ_i = σ_{i+1} ∫_{u_i}^{u_{i+1}} [τ(u_i) − τ(u)] du for the local error of step i made *on* the exact
trajectory (eq. 0.1 restricted to one step).  "Lady Windermere's fan" — telescoping the global error
through the exact flow maps Φ_{σ→σ_N} — gives, to first order in the local errors,

    x_N − x(σ_N) = Σ_i [Φ_{σ_{i+1}→σ_N}(x̃_{i+1}) − Φ_{σ_{i+1}→σ_N}(x(σ_{i+1}))]  ≈  Σ_i J_{i+1} ℓ_i,
    J_{i+1} = ∂x(σ_N)/∂x(σ_{i+1})  (the Jacobian of the flow map along the trajectory).

(3.1) is this sum with every J replaced by the *same* contraction σ_N/σ_{i+1} (in y = x/σ units:
x-errors shrink like σ as σ → 0 under the linear part of the ODE).  But the denoiser part of the
flow can expand errors — near the noise levels where the posterior p(x0|x) splits between modes,
∂D/∂x = Cov[x0|x]/σ² is large — so an early error can arrive at σ_N amplified, not contracted.
The faithful bound does not see this and puts a huge first step where τ barely moves.

**Propagation-aware bound (``bound-prop``, ours).**  Keep every J, and apply the triangle inequality
only where the faithful bound does (over intervals and inside the integral):

    ‖x_N − x(σ_N)‖ ≲ Σ_i ‖J_{i+1} ℓ_i‖ ≤ Σ_i σ_{i+1} ∫_{u_i}^{u_{i+1}} ‖J_{i+1}(τ(u) − τ(u_i))‖ du =: L_prop.

L_prop is in data units at σ_N, is additive over intervals (so the same exact grid DP solves it), and
reduces to (3.1)·σ_N with the Gaussian amplification factor of §3.3 when the data are Gaussian
(J = √(σ_N²+c²)/√(σ²+c²)·I).  It is estimated by Monte Carlo twice over: over the B teacher
trajectories and over m random directions v_j ~ N(0, I) through the adjoint vectors
a_j(σ) = J_σᵀ v_j (:func:`.teacher.adjoints`, one backward sweep gives them at every grid point), since
E_v⟨a(σ_c), w⟩² = ‖J_c w‖²:

    C_prop[a, c] = E_b σ_c Σ_{k=a+1}^{c} (u_k − u_{k−1}) √( mean_j ⟨a_{j,b}(g_c), f_b(g_k) − f_b(g_a)⟩² ).

Option ``inner="vector"`` drops the inner triangle inequality and uses the exact teacher local error,
C[a, c] = E_b √(mean_j ⟨a_{j,b}(g_c), x̂_b(a→c) − x_b(g_c)⟩²) with x̂ the Euler jump — a tighter
first-order estimate of the error, no longer a bound of the (3.1) form.

**Order-matched variant (``order=2``, for multistep solvers such as DPM-Solver++ 2M).**  A two-step
exponential integrator replaces τ on [λ_a, λ_c] (λ = log u = −log σ) by the line through its last two
points, P(λ) = τ(u_a) + (λ − λ_a) s_pa with the backward-difference slope s_pa = (τ(u_a) − τ(u_p))/(λ_a − λ_p)
(what 2M's (1/2r)(D_i − D_{i−1}) term approximates).  Its local error is σ_c ∫ [τ(u) − P(log u)] du, so
the cost of a step now depends on the previous node p as well — a triplet cost
C3[p, a, c] = A(σ_c) σ_c Σ_k ‖τ(u_k) − P(λ_k)‖ (u_k − u_{k−1}) (:func:`local_triplet_norms`).  The solver has
no slope on its first step and, with ``lower_order_final`` (our default, as in diffusers), drops to
first order on its last: those edges keep the first-order pair cost.  The exact optimum over grid
paths is a DP over the last edge (:func:`dpmsched.optimize.dp.shortest_path_multistep`, O(N·G³)).
History (measured, benchmarks/schedules.md): an earlier version used the teacher's exact slope at σ_a
(a pair cost, no dependence on p) and failed badly at NFE 3 — it took the 2M middle step's slope to be
exact when it is a difference over the huge first interval (toy 0.470 vs Karras 0.21).

Caveats (honest): the first-order expansion linearises around the teacher, not the Euler
trajectory; √(mean_j ⟨·⟩²) is a consistent but not unbiased estimate of ‖J w‖ for small m.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from .. import theory
from ..schedules import Schedule
from ..solvers import solver_order
from .dp import shortest_path_multistep
from .teacher import adjoints, dp_schedule, teacher

__all__ = ["huang", "bound_prop", "local_triplet_norms", "prop_pair_costs", "euler_jump_errors", "jump_costs", "secant_amplification"]


def huang(model, steps: int, solver: str = "euler", *, n: int = 128, grid_points: int = 128, seed: int = 0,
          refine: bool = True, refine_evals: int = 600) -> Schedule:
    """Huang Phase-1 as the paper describes it (§3.4): MC bound (3.1), grid DP, continuous refinement.

    ``meta``: ``bound_dp`` (grid DP optimum of the right-Riemann cost), ``bound`` (the MC bound (3.1)
    of the returned schedule, Gauss–Legendre in log u), ``teacher_seconds``, settings.
    The bound is first-order (Theorem 1 is for Euler); for another ``solver`` it is a transfer.
    """
    t0 = time.perf_counter()
    T = teacher(model, n=n, grid_points=grid_points, seed=seed)
    C = theory.bound_pair_costs(T.grid, T.f)
    s = dp_schedule(C, T.grid, steps, "huang")
    dp_val = s.meta["objective"]
    bound_dp = theory.bound_mc(s, T.grid, T.f)
    sig, bound, it = s.sigmas, bound_dp, 0
    if refine and steps > 1:
        sig, bound, it = _refine(s.sigmas, T, refine_evals)
    meta = {"objective": bound, "bound": bound, "bound_dp_path": bound_dp, "bound_dp_riemann": dp_val,
            "refine_evals": it, "n": n, "grid_points": grid_points, "seed": seed,
            "teacher_seconds": T.seconds, "solver_transfer": solver not in ("euler", "ddim"),
            "seconds": time.perf_counter() - t0}
    return Schedule(sig, "huang", meta)


def _refine(sigmas: np.ndarray, T, max_evals: int):
    """§3.4(b): minimise the MC bound over softmax-cumsum logits (Nelder–Mead, at most ``max_evals``
    bound evaluations), started at ``sigmas``; returns (σ, its MC bound, evaluations used)."""
    from scipy.optimize import minimize

    lo, hi = float(T.grid[-1]), float(T.grid[0])
    inc = np.diff(np.log(sigmas))                      # negative increments of log σ
    z0 = np.log(inc / inc.sum())
    tau = theory.trajectory_interpolant(T.grid, T.f)

    def obj(z):
        return theory.bound_from_fn(theory.softmax_cumsum_sigmas(z, lo, hi), tau, n_quad=16)

    f0 = obj(z0)
    res = minimize(obj, z0, method="Nelder-Mead", options={"maxfev": int(max_evals), "xatol": 1e-4,
                                                            "fatol": 1e-7 * abs(f0)})
    if not res.fun < f0:
        return sigmas, theory.bound_mc(sigmas, T.grid, T.f), int(res.nfev)
    s = theory.softmax_cumsum_sigmas(res.x, lo, hi)
    return s, theory.bound_mc(s, T.grid, T.f), int(res.nfev)


def euler_jump_errors(T) -> torch.Tensor:
    """E[a, c, b, :] = x̂_b(a→c) − x_b(g_c): the teacher's exact local error of one Euler step from
    grid point a to c (x̂ = x_a + (σ_c − σ_a) d_a).  Yields (a, (G, B, D)) rows lazily to save memory."""
    X, Dd = T.flat("x"), T.flat("d")
    sig = torch.as_tensor(T.grid.copy())
    for a in range(T.G - 1):
        xhat = X[a][None] + (sig[:, None, None] - sig[a]) * Dd[a][None]      # (G, B, D)
        yield a, xhat - X


def prop_pair_costs(T, adj: torch.Tensor, inner: str = "norm") -> torch.Tensor:
    """(G, G) pair costs of the propagation-aware bound (module doc); +inf for a ≥ c.

    ``adj``: (G, m, B, *event) from :func:`.teacher.adjoints`.  ``inner``: "norm" (the bound L_prop)
    or "vector" (the exact teacher local error, propagated).
    """
    if inner not in ("norm", "vector"):
        raise ValueError(f"inner must be 'norm' or 'vector', got {inner!r}")
    G = T.G
    A = adj.reshape(G, adj.shape[1], adj.shape[2], -1)                       # (G, m, B, D)
    C = torch.full((G, G), math.inf, dtype=torch.float64)
    if inner == "vector":
        for a, err in euler_jump_errors(T):                                   # err (G, B, D)
            proj = torch.einsum("cmbd,cbd->cmb", A[a + 1:], err[a + 1:])      # (G−a−1, m, B)
            C[a, a + 1:] = proj.pow(2).mean(1).sqrt().mean(1)
        return C
    F = T.flat("f")                                                           # (G, B, D)
    sig = torch.as_tensor(T.grid.copy())
    du = torch.diff(1.0 / sig)                                                # (G−1,)
    for c in range(1, G):
        P = torch.einsum("mbd,kbd->mbk", A[c], F[:c + 1])                     # (m, B, c+1): ⟨a(c), f_k⟩
        diff = P[:, :, None, :] - P[:, :, :, None]                            # [m, b, a, k] = P_k − P_a
        nrm = diff.pow(2).mean(0).sqrt().mean(0)                              # (c+1, c+1): E_b ‖J(f_k − f_a)‖
        w = torch.zeros(c + 1, dtype=torch.float64)
        w[1:] = du[:c]                                                        # w[k] = u_k − u_{k−1}
        terms = torch.triu(nrm, diagonal=1) * w[None, :]                      # keep k > a
        C[:c, c] = sig[c] * terms[:c].sum(1)
    return C


def secant_amplification(T) -> torch.Tensor:
    """A(σ_g) = spread(x(σ_N)) / spread(x(σ_g)) over the teacher cloud, (G,) float64.

    spread = √(E_b ‖x_b − x̄‖²), so A is the ratio of RMS pairwise distances between teacher
    trajectories: a secant (finite-size) Lipschitz estimate of the flow map σ_g → σ_N measured on the
    teacher itself.  For Gaussian data it equals the exact factor √(σ_N²+c²)/√(σ_g²+c²) of §3.8.
    """
    X = T.flat("x")
    spread = (X - X.mean(1, keepdim=True)).pow(2).sum(-1).mean(1).sqrt()      # (G,)
    return spread[-1] / spread


def local_triplet_norms(T) -> torch.Tensor:
    """N3[p, a, c] = Σ_{k=a+1}^{c} E_b ‖f_b(g_k) − f_b(g_a) − (λ_k − λ_a) s_{b,pa}‖ (u_k − u_{k−1}), p < a < c
    (+inf otherwise), s_pa = (f(g_a) − f(g_p))/(λ_a − λ_p): the local-error cost of a two-step
    (multistep, order 2) step from g_a to g_c whose slope is the solver's own backward difference
    through the previous point g_p, as DPM-Solver++(2M) takes it (module doc).  (G, G, G) float64."""
    lam = torch.as_tensor(-np.log(T.grid))
    F = T.flat("f")                                                           # (G, B, D)
    du = torch.diff(torch.exp(lam))
    G = T.G
    C = torch.full((G, G, G), math.inf, dtype=torch.float64)
    for a in range(1, G - 1):
        S = (F[a][None] - F[:a]) / (lam[a] - lam[:a])[:, None, None]          # (a, B, D) over p < a
        dl = (lam[a + 1:] - lam[a])[None, :, None, None]                      # (1, G−a−1, 1, 1)
        res = (F[a + 1:] - F[a][None])[None] - dl * S[:, None]                # (a, G−a−1, B, D)
        C[:a, a, a + 1:] = torch.cumsum(res.norm(dim=-1).mean(-1) * du[a:][None], 1)
    return C


def bound_prop(model, steps: int, solver: str = "euler", *, n: int = 128, grid_points: int = 128,
               seed: int = 0, amplification: str = "secant", inner: str = "norm", m: int = 2,
               order: int | None = None) -> Schedule:
    """The propagation-aware bound L_prop (module doc), minimised exactly by the grid DP.

    ``amplification``: "secant" (default; J_c ≈ A(σ_c)·I with :func:`secant_amplification`) or
    "adjoint" (the sketched Jacobian of :func:`.teacher.adjoints`, m directions; first order, which
    misses basin switching on the ideal digits denoiser).  ``inner``: "norm" (the bound) or "vector"
    (the exact teacher local error).  ``order``: 1 (Euler's local error, pair-cost DP) or 2 (the
    order-matched variant for multistep solvers: backward-difference slope, Euler first and last steps,
    triplet-cost DP; module doc); default min(2, order of ``solver``); order 2 needs secant amplification
    and inner="norm".  ``meta["objective"]``: the DP optimum (data units at σ_N).
    """
    t0 = time.perf_counter()
    order = min(2, solver_order(solver)) if order is None else int(order)
    if order == 2 and (amplification != "secant" or inner != "norm"):
        raise ValueError("order=2 is implemented for amplification='secant', inner='norm' only")
    T = teacher(model, n=n, grid_points=grid_points, seed=seed)
    extra = {}
    if amplification == "adjoint":
        t1 = time.perf_counter()
        adj = adjoints(model, T, m=m, seed=seed)
        extra = {"m": m, "adjoint_seconds": time.perf_counter() - t1}
        C = prop_pair_costs(T, adj, inner)
    elif amplification == "secant":
        A = secant_amplification(T)
        if inner == "norm":                     # the bound: σ_c ∫‖…‖du amplified to σ_N, weight A(σ_c) σ_c
            w = A * torch.as_tensor(T.grid.copy())
            C = theory.bound_pair_costs(T.grid, T.f) * w[None, :]    # eq. 3.1's pair cost
        elif inner == "vector":
            C = jump_costs(T) * A[None, :]
        else:
            raise ValueError(f"inner must be 'norm' or 'vector', got {inner!r}")
    else:
        raise ValueError(f"amplification must be 'secant' or 'adjoint', got {amplification!r}")
    if order == 2:
        idx, cost = shortest_path_multistep(C, local_triplet_norms(T) * w[None, None, :], steps)
        s = Schedule(T.grid[idx], "bound-prop", {"objective": cost, "grid_index": idx.tolist()})
    else:
        s = dp_schedule(C, T.grid, steps, "bound-prop")
    s.meta.update({"n": n, "grid_points": grid_points, "seed": seed, "amplification": amplification,
                   "inner": inner, "order": order, "teacher_seconds": T.seconds, **extra,
                   "solver_transfer": solver_order(solver) != order, "seconds": time.perf_counter() - t0})
    return s


def jump_costs(T) -> torch.Tensor:
    """C[a, c] = E_b ‖x̂_b(a→c) − x_b(g_c)‖: the teacher's mean one-step Euler local error (GITS's
    "l2" cost, §8.2); +inf for a ≥ c."""
    C = torch.full((T.G, T.G), math.inf, dtype=torch.float64)
    for a, err in euler_jump_errors(T):
        C[a, a + 1:] = err[a + 1:].norm(dim=-1).mean(1)
    return C
