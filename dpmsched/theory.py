"""The theorem and the bound.  (docs/math.md §2.1, §3.1–3.3, §3.6)

**Convex combination (§2.1, §3.1).**  Euler on a schedule σ_0 > … > σ_N with x_init = σ_0 z unrolls to

    x_N = (σ_N/σ_0) x_init + Σ_{i=0}^{N−1} w_i D(x_i; σ_i),     w_i = σ_N (1/σ_{i+1} − 1/σ_i) ≥ 0,

and (σ_N/σ_0) + Σ w_i = 1: the sample is a convex combination of the initial noise and *all* denoiser
outputs.  The weights are the normalised increments of u = 1/σ = e^λ.

**The bound (§3.2, eq. 3.1).**  Writing τ(u) for the denoiser output along the exact PF-ODE trajectory
at σ = 1/u, the schedule-dependent part of Euler's error is

    L_disc(σ) = E_traj Σ_i ∫_{u_i}^{u_{i+1}} ‖τ(u) − τ(u_i)‖ du                        (3.1)

(the error itself is σ_N times the integral of the difference, plus a propagated term; L_disc drops
the constant σ_N so its values are O(1)).  It is estimated here three ways:

* :func:`gaussian_bound` — closed form for 1-D data N(0, c²) per unit |k| (§3.6);
* :func:`bound_mc` — Monte Carlo over stored teacher trajectories, any schedule inside the grid;
* :func:`bound_pair_costs` — the right-Riemann pair cost C[a, c] of §3.4(a) for the grid DP.

**Theorem 1 (§3.3, eq. 3.2).**  At an optimum, for every interior i,
E‖τ(u_i) − τ(u_{i−1})‖ = E ∫_{u_i}^{u_{i+1}} ⟨e(u), τ′(u_i)⟩ du,  e = (τ(u) − τ(u_i))/‖τ(u) − τ(u_i)‖:
:func:`stationarity_residual` returns both sides.

Shapes: σ arrays are float64 numpy (N+1,); trajectories ``f`` are (G, B, d) arrays/tensors along a
decreasing σ grid of length G.  u = 1/σ has units of 1/σ (inverse data units).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .schedules import Schedule
from .solvers import reference

__all__ = [
    "convex_weights", "euler_unrolled", "gaussian_tau", "gaussian_bound", "gaussian_optimal_schedule",
    "bound_from_fn", "bound_mc", "bound_pair_costs", "path_cost", "stationarity_residual",
    "euler_error_decomposition", "trajectory_interpolant",
    "softmax_cumsum_sigmas", "softmax_cumsum_sigmas_torch", "logits_of_sigmas",
]


def _sig(sigmas) -> np.ndarray:
    return (sigmas if isinstance(sigmas, Schedule) else Schedule(sigmas)).sigmas


def _positive(sigmas) -> np.ndarray:
    s = _sig(sigmas)
    if s[-1] == 0:
        raise ValueError("the bound needs sigma_N = sigma_min > 0 (drop the trailing 0)")
    return s


# -- §2.1 / §3.1 ----------------------------------------------------------------------------------
def convex_weights(sigmas) -> tuple[float, np.ndarray]:
    """(noise weight σ_N/σ_0, w (N,)) with w_i = σ_N(1/σ_{i+1} − 1/σ_i); they sum to 1.  §3.1.

    With a trailing σ_N = 0 the last Euler step returns D_{N−1} exactly, so w = (0, …, 0, 1).
    """
    s = _sig(sigmas)
    if s[-1] == 0:
        w = np.zeros(s.size - 1)
        w[-1] = 1.0
        return 0.0, w
    u = 1.0 / s
    return float(s[-1] / s[0]), s[-1] * np.diff(u)


def euler_unrolled(sigmas, x_init: torch.Tensor, denoised) -> torch.Tensor:
    """The right-hand side of §3.1: (σ_N/σ_0)·x_init + Σ_i w_i D_i.

    ``denoised``: a sequence of N tensors shaped like ``x_init`` (or one (N, *x.shape) tensor), the
    denoiser outputs Euler saw at σ_0..σ_{N−1}.
    """
    a, w = convex_weights(sigmas)
    if len(denoised) != w.size:
        raise ValueError(f"expected {w.size} denoiser outputs, got {len(denoised)}")
    out = a * x_init
    for wi, d in zip(w, denoised):
        out = out + float(wi) * d
    return out


# -- the 1-D Gaussian lab (§3.6) -----------------------------------------------------------------
def gaussian_tau(c: float = 0.5, k=None) -> tuple[Callable, Callable]:
    """τ and τ′ along PF-ODE trajectories of 1-D data N(0, c²):  §3.6

        τ(u) = k·c²u/√(c²u²+1),   τ′(u) = k·c²/(c²u²+1)^{3/2},

    where k ~ N(0,1) labels the trajectory (its latent).  ``k``: (B,) array, default [1.0] (per unit k).
    Both callables map u (Q,) → (Q, B, 1), the layout :func:`bound_from_fn` and
    :func:`stationarity_residual` take.
    """
    c2 = c * c
    k = np.ones(1) if k is None else np.asarray(k, dtype=np.float64).reshape(-1)

    def tau(u):
        u = np.asarray(u, dtype=np.float64).reshape(-1, 1, 1)
        return k[None, :, None] * c2 * u / np.sqrt(c2 * u * u + 1.0)

    def dtau(u):
        u = np.asarray(u, dtype=np.float64).reshape(-1, 1, 1)
        return k[None, :, None] * c2 / (c2 * u * u + 1.0) ** 1.5

    return tau, dtau


def gaussian_bound(sigmas, c: float = 0.5) -> float:
    """Closed-form L_disc (3.1) for 1-D data N(0, c²), per unit |k| (multiply by E|k| = √(2/π)).

    ∫_{u_i}^{u_{i+1}} (τ(u) − τ(u_i)) du = [√(c²u²+1)]_{u_i}^{u_{i+1}} − τ(u_i)(u_{i+1} − u_i),
    since d/du √(c²u²+1) = τ(u) and τ increases (no absolute value needed).  §3.6.
    """
    u = 1.0 / _positive(sigmas)
    prim = np.sqrt(c * c * u * u + 1.0)
    tau_u = c * c * u / prim
    return float(np.sum(np.diff(prim) - tau_u[:-1] * np.diff(u)))


def softmax_cumsum_sigmas(z: np.ndarray, sigma_min: float, sigma_max: float) -> np.ndarray:
    """log σ_i = log σ_max − (log σ_max − log σ_min)·cumsum(softmax(z))_i, i = 0..N (z ∈ R^N).  §3.4(b).

    Endpoints are fixed and the result is strictly decreasing for any finite z.
    """
    z = np.asarray(z, dtype=np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    c = np.concatenate([[0.0], np.cumsum(p)])
    c[-1] = 1.0
    ls = math.log(sigma_max) - (math.log(sigma_max) - math.log(sigma_min)) * c
    s = np.exp(ls)
    s[0], s[-1] = sigma_max, sigma_min
    return s


def gaussian_optimal_schedule(steps: int, c: float = 0.5, sigma_min: float = 0.002,
                              sigma_max: float = 80.0) -> Schedule:
    """Minimise :func:`gaussian_bound` over schedules with fixed endpoints (§3.4(b), §3.6).

    Nelder–Mead would be slow in N dims; L-BFGS-B on the softmax-cumsum logits with numerical
    gradients converges in well under a second for N ≤ 20.  Started from uniform log-SNR.
    """
    from scipy.optimize import minimize

    def obj(z):
        return gaussian_bound(softmax_cumsum_sigmas(z, sigma_min, sigma_max), c)

    res = minimize(obj, np.zeros(steps), method="L-BFGS-B", options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10})
    s = softmax_cumsum_sigmas(res.x, sigma_min, sigma_max)
    return Schedule(s, "gaussian-bound-optimal", {"c": c, "bound": float(res.fun), "iterations": int(res.nit)})


# -- Monte Carlo from trajectories ---------------------------------------------------------------
def _gauss_legendre(n: int):
    x, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * (x + 1.0), 0.5 * w      # on [0, 1]


def bound_from_fn(sigmas, tau: Callable, n_quad: int = 32) -> float:
    """L_disc (3.1) for a callable τ(u) → (Q, B, d) array (trajectory outputs at the Q values of u).

    Each interval is integrated by Gauss–Legendre in λ = log u (du = u dλ), where τ is smooth.
    The expectation is the mean over B.
    """
    u = 1.0 / _positive(sigmas)
    lam = np.log(u)
    xq, wq = _gauss_legendre(n_quad)
    n, Q = u.size - 1, xq.size
    h = np.diff(lam)                                                         # (N,)
    uq = np.exp(lam[:-1, None] + h[:, None] * xq[None, :])                   # (N, Q)
    vals = np.asarray(tau(np.concatenate([uq.ravel(), u[:-1]])))            # all intervals in one call
    vals = vals.reshape(vals.shape[0], vals.shape[1], -1)
    diff = vals[:n * Q].reshape(n, Q, *vals.shape[1:]) - vals[n * Q:][:, None]   # (N, Q, B, d)
    norms = np.sqrt((diff**2).sum(-1)).mean(-1)                               # (N, Q)
    return float(np.sum(wq[None, :] * h[:, None] * uq * norms))


def trajectory_interpolant(grid_sigmas, f) -> Callable:
    """τ(u) from teacher outputs ``f`` (G, B, *event) on a decreasing σ grid: linear in λ = log u.

    Returns a callable u (Q,) → (Q, B, d) float64 array, valid for u inside the grid.
    """
    g = np.asarray(grid_sigmas, dtype=np.float64)
    F = torch.as_tensor(f).double().reshape(len(g), torch.as_tensor(f).shape[1], -1).numpy()
    lam_grid = -np.log(g)                          # increasing

    def tau(u):
        lq = np.log(np.asarray(u, dtype=np.float64))
        if lq.min() < lam_grid[0] - 1e-9 or lq.max() > lam_grid[-1] + 1e-9:
            raise ValueError("u outside the teacher grid; the schedule must lie inside [grid σ_min, σ_max]")
        j = np.clip(np.searchsorted(lam_grid, lq, side="right") - 1, 0, len(g) - 2)
        t = ((lq - lam_grid[j]) / (lam_grid[j + 1] - lam_grid[j]))[:, None, None]
        return (1 - t) * F[j] + t * F[j + 1]

    return tau


def bound_mc(sigmas, grid_sigmas, f, n_quad: int = 32) -> float:
    """Monte-Carlo L_disc (3.1) of any schedule from B stored teacher trajectories.

    ``grid_sigmas`` (G,) decreasing, ``f`` (G, B, *event): denoiser outputs along the teacher
    (the expectation over trajectories is the mean over B; the integral in u uses Gauss–Legendre
    nodes in log u with τ linearly interpolated in log u between grid points).
    """
    return bound_from_fn(sigmas, trajectory_interpolant(grid_sigmas, f), n_quad)


def bound_pair_costs(grid_sigmas, f, batch: int = 64) -> torch.Tensor:
    """Right-Riemann pair costs of (3.1) on a grid, §3.4(a):

        C[a, c] = (1/B) Σ_b Σ_{k=a+1}^{c} ‖f_b(g_k) − f_b(g_a)‖ (u_{g_k} − u_{g_{k−1}}),   a < c,

    and +inf for a ≥ c.  ``f`` (G, B, *event) on the decreasing grid ``grid_sigmas`` (G,).
    Returns a (G, G) float64 tensor; the cost of a grid path is the sum of C over its edges.
    Distances come from Gram matrices, O(B G² d) time, processed ``batch`` trajectories at a time.
    """
    g = torch.as_tensor(np.array(grid_sigmas, dtype=np.float64))
    F = torch.as_tensor(f).double()
    G, B = F.shape[0], F.shape[1]
    F = F.reshape(G, B, -1).transpose(0, 1)                 # (B, G, d)
    du = torch.diff(1.0 / g)                                  # (G−1,), > 0
    dist_mean = torch.zeros(G, G, dtype=torch.float64)
    for i in range(0, B, batch):
        Fb = F[i:i + batch]
        sq = (Fb**2).sum(-1)
        d2 = sq[:, :, None] + sq[:, None, :] - 2.0 * Fb @ Fb.transpose(1, 2)
        dist_mean += d2.clamp_min(0).sqrt().sum(0)
    dist_mean /= B                                            # [a, k] = E‖f(g_k) − f(g_a)‖
    terms = dist_mean[:, 1:] * du[None, :]                    # [a, k−1] = E‖·‖ (u_k − u_{k−1})
    C = torch.zeros(G, G, dtype=torch.float64)
    C[:, 1:] = torch.cumsum(terms, dim=1)
    # C[a, c] should only sum k = a+1..c: subtract the prefix up to a.
    C = C - torch.diagonal(C)[:, None]
    C[torch.tril(torch.ones(G, G, dtype=torch.bool))] = math.inf
    return C


def path_cost(C: torch.Tensor, idx) -> float:
    """Σ_e C[idx_e, idx_{e+1}] of a grid path (indices increasing along the decreasing σ grid)."""
    idx = list(idx)
    return float(sum(C[a, b] for a, b in zip(idx[:-1], idx[1:])))


# -- the exact split of Euler's error (§3.2) -------------------------------------------------------
def euler_error_decomposition(denoiser, x_init: torch.Tensor, sigmas, *, substeps: int = 32) -> dict:
    """Split Euler's global error exactly into the two terms of §3.2.

        x_N − x(σ_N) =  σ_N Σ_i ∫_{u_i}^{u_{i+1}} [f(u_i) − f(u)] du          (local: the schedule term)
                      + Σ_i w_i [D(x_i; σ_i) − D(x(σ_i); σ_i)]                 (propagated: earlier errors)

    The exact trajectory x(σ) is integrated with :func:`~dpmsched.solvers.reference` between
    consecutive schedule points (``substeps`` RK4 steps each).  The local term is computed as the
    *teacher-forced* Euler sum (σ_N/σ_0)x_0 + Σ w_i D(x(σ_i); σ_i) minus x(σ_N).  By the triangle
    inequality its norm is at most σ_N times the per-trajectory integral of (3.1).

    Returns tensors shaped like ``x_init``: ``{"exact", "euler", "local", "propagated", "total"}``
    with total = euler − exact = local + propagated (up to float64 rounding).
    """
    s = _positive(sigmas)
    a, w = convex_weights(s)
    x_exact, tf_sum, eu_sum = x_init, a * x_init, a * x_init
    x_eu = x_init
    for i in range(s.size - 1):
        d_exact = denoiser(x_exact, float(s[i]))
        d_eu = denoiser(x_eu, float(s[i]))
        tf_sum = tf_sum + float(w[i]) * d_exact
        eu_sum = eu_sum + float(w[i]) * d_eu
        r = float(s[i + 1] / s[i])
        x_eu = r * x_eu + (1.0 - r) * d_eu
        x_exact = reference(denoiser, x_exact, float(s[i]), float(s[i + 1]), steps=substeps)
    return {"exact": x_exact, "euler": x_eu, "local": tf_sum - x_exact,
            "propagated": eu_sum - tf_sum, "total": x_eu - x_exact}


# -- Theorem 1 (§3.3) -----------------------------------------------------------------------------
def stationarity_residual(sigmas, tau: Callable, dtau: Callable, n_quad: int = 64):
    """Both sides of the Theorem-1 condition (3.2) at the interior points i = 1..N−1.

    lhs_i = E‖τ(u_i) − τ(u_{i−1})‖   (backward difference)
    rhs_i = E ∫_{u_i}^{u_{i+1}} ⟨e(u), τ′(u_i)⟩ du,  e = (τ(u) − τ(u_i))/‖τ(u) − τ(u_i)‖  (first-order increment)

    ``tau``/``dtau``: u (Q,) → (Q, B, d).  Returns (lhs, rhs), numpy arrays of length N−1; at a
    minimiser of L_disc they agree (rhs ≈ E‖τ′(u_i)‖(u_{i+1} − u_i) when e ∥ τ′).
    """
    u = 1.0 / _positive(sigmas)
    xq, wq = _gauss_legendre(n_quad)
    lhs, rhs = [], []
    for i in range(1, u.size - 1):
        a = np.asarray(tau(np.array([u[i - 1], u[i]])))
        d = (a[1] - a[0]).reshape(a.shape[1], -1)
        lhs.append(float(np.sqrt((d**2).sum(-1)).mean()))
        lam0, h = math.log(u[i]), math.log(u[i + 1]) - math.log(u[i])
        uq = np.exp(lam0 + h * xq)
        diff = (np.asarray(tau(uq)) - a[1][None]).reshape(len(uq), a.shape[1], -1)   # (Q, B, d)
        norm = np.sqrt((diff**2).sum(-1, keepdims=True))
        e = np.divide(diff, norm, out=np.zeros_like(diff), where=norm > 0)
        fp = np.asarray(dtau(np.array([u[i]]))).reshape(1, a.shape[1], -1)
        inner = (e * fp).sum(-1).mean(1)                                              # (Q,)
        rhs.append(float(np.sum(wq * h * uq * inner)))
    return np.array(lhs), np.array(rhs)


def softmax_cumsum_sigmas_torch(z: torch.Tensor, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """The differentiable twin of :func:`softmax_cumsum_sigmas` (§3.4(b), LD3's parameterisation
    §8.4): z (N,) float64 tensor → σ (N+1,) with fixed endpoints, strictly decreasing, with autograd."""
    if not isinstance(z, torch.Tensor) or z.ndim != 1:
        raise TypeError("z must be a 1-D torch tensor of logits")
    p = torch.softmax(z.double(), 0)
    c = torch.cat([p.new_zeros(1), torch.cumsum(p, 0)[:-1], p.new_ones(1)])
    ls = math.log(sigma_max) - (math.log(sigma_max) - math.log(sigma_min)) * c
    return torch.exp(ls)


def logits_of_sigmas(sigmas) -> np.ndarray:
    """Softmax-cumsum logits z (N,) that reproduce a schedule with σ_N > 0 (inverse of the above)."""
    inc = np.diff(np.log(_positive(sigmas)))
    return np.log(inc / inc.sum())
