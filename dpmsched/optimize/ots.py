"""Optimized time steps (Xue et al., CVPR 2024; "DMN"): the analytic objective.  (docs/math.md §4.2–4.3)

A multistep exponential integrator of order k replaces x̂_θ on [λ_s, λ_{s+1}] by the Lagrange
polynomial through its k most recent nodes; the weight of node j is J_j = ∫_{λ_s}^{λ_{s+1}} e^λ ℓ_j(λ) dλ
(closed forms with H_k(h) = ∫_0^h u^k e^u du, :func:`j_coefficients`; Σ_j J_j = e^{λ_{s+1}} − e^{λ_s}).
With per-node errors bounded by E_i = σ_vp,i^p / α_vp,i (VP σ, α from λ = −log σ_EDM, p = 1 pixel,
2 latent), the schedule-dependent bound is exactly the official ``sel_lambdas_lof_obj`` (§4.2):
order-1 steps add |J E|, steps s < truncNum add the L2 norm of their contributions, later steps
accumulate signed contributions per node and add Σ_i |c_i|.  Orders follow the solver: order
min(k, s+1) (warm-up) and, with ``lower_order_final``, min(·, N−s).  k = 1 (Euler/DDIM) gives
Σ_s (σ_s/σ_{s+1} − 1) for p = 1, whose optimum is uniform log-SNR (AM–GM).
Minimised over the N−1 interior λ by scipy trust-constr with the linear ordering constraints (§4.3),
from uniform λ, finite-difference gradients.
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np

from ..denoisers import model_range
from ..schedules import Schedule
from ..solvers import solver_order

__all__ = ["ots", "j_coefficients", "ots_objective"]

def _H(h: float):
    e = math.exp(h)
    h0 = e - 1.0
    h1 = h * e - h0
    h2 = h * h * e - 2.0 * h1
    return h0, h1, h2


def j_coefficients(lams, s: int, order: int) -> list[float]:
    """J_j = ∫_{λ_s}^{λ_{s+1}} e^λ ℓ_j(λ) dλ for the nodes s−order+1..s (oldest first), order 1–3 (§4.2)."""
    lam = np.asarray(lams, dtype=np.float64)
    if not 1 <= order <= 3 or s - order + 1 < 0 or s + 1 >= lam.size:
        raise ValueError(f"need 1 <= order <= 3 and nodes inside the schedule (s={s}, order={order})")
    e_s, g = math.exp(lam[s]), lam[s + 1] - lam[s]
    H0, H1, H2 = _H(g)
    if order == 1:
        return [e_s * H0]
    if order == 2:
        a = lam[s] - lam[s - 1]
        return [-e_s * H1 / a, e_s * (H1 + a * H0) / a]
    a, b = lam[s - 1] - lam[s - 2], lam[s] - lam[s - 1]
    return [e_s * (H2 + b * H1) / (a * (a + b)),
            -e_s * (H2 + (a + b) * H1) / (a * b),
            e_s * (H2 + (2 * b + a) * H1 + b * (a + b) * H0) / (b * (a + b))]


def ots_objective(lams, order: int = 3, p: float = 1.0, trunc: int = 3, lower_order_final: bool = True) -> float:
    """The bound (§4.2) of an increasing λ schedule (N+1,) for a solver of max order ``order``."""
    lam = np.asarray(lams, dtype=np.float64)
    N = lam.size - 1
    alpha = 1.0 / np.sqrt(1.0 + np.exp(-2.0 * lam))
    sig_vp = 1.0 / np.sqrt(1.0 + np.exp(2.0 * lam))
    E = sig_vp**p / alpha
    res, c = 0.0, np.zeros(N + 1)
    for s in range(N):
        k = min(order, s + 1, N - s) if lower_order_final else min(order, s + 1)
        J = j_coefficients(lam, s, k)
        nodes = range(s - k + 1, s + 1)
        contrib = [E[n] * Jn for n, Jn in zip(nodes, J)]
        if k == 1:
            res += abs(contrib[0])
        elif s >= trunc:
            for n, v in zip(nodes, contrib):
                c[n] += v
        else:
            res += math.sqrt(sum(v * v for v in contrib))
    return float(res + np.abs(c).sum())


def ots(model, steps: int, solver: str = "euler", *, order: int | None = None, p: float = 1.0, trunc: int = 3,
        lower_order_final: bool = True, maxiter: int = 1000) -> Schedule:
    """OTS schedule for ``solver`` (order from the solver unless ``order``); EDM σ range of the model.
    ``meta``: objective before/after, iterations, order."""
    from scipy.optimize import LinearConstraint, minimize

    t0 = time.perf_counter()
    k = int(order) if order is not None else min(3, solver_order(solver))
    lo, hi = model_range(model)
    N = int(steps)
    lam_T, lam_e = -math.log(hi), -math.log(lo)
    init = np.linspace(lam_T, lam_e, N + 1)

    def obj(x):
        return ots_objective(np.concatenate([[lam_T], x, [lam_e]]), k, p, trunc, lower_order_final)

    f0 = obj(init[1:-1])
    if N == 1:
        return Schedule([hi, lo], "ots", {"objective": f0, "order": k, "seconds": time.perf_counter() - t0})
    A = np.zeros((N, N - 1))
    lb = np.zeros(N)
    A[0, 0], lb[0] = 1.0, lam_T
    for i in range(1, N - 1):
        A[i, i], A[i, i - 1] = 1.0, -1.0
    A[N - 1, N - 2], lb[N - 1] = -1.0, -lam_e
    with warnings.catch_warnings():          # trust-constr's quasi-Newton warns on flat pieces of |·|
        warnings.simplefilter("ignore", UserWarning)
        res = minimize(obj, init[1:-1], method="trust-constr", constraints=[LinearConstraint(A, lb, np.inf)],
                       options={"maxiter": int(maxiter)})
    lam = np.concatenate([[lam_T], np.sort(res.x), [lam_e]])
    sig = np.exp(-lam)
    sig[0], sig[-1] = hi, lo
    return Schedule(sig, "ots", {"objective": float(obj(lam[1:-1])), "objective_init": f0, "order": k, "p": p,
                                 "trunc": trunc, "lower_order_final": lower_order_final,
                                 "iterations": int(res.nit), "seconds": time.perf_counter() - t0})
