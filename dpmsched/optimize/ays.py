"""Align Your Steps (Sabour et al., ICML 2024): the KLUB objective.  (ALGORITHMS.md §8.1)

For Euler/stochastic DDIM in EDM coordinates AYS bounds the KL divergence by a sum over intervals
(decreasing σ here; AYS indexes increasing):

    KLUB = Σ_i ∫_{σ_{i+1}}^{σ_i} σ^{−3} E ‖D(x_σ; σ) − D(x_{σ_i}; σ_i)‖² dσ,
    x_σ = x0 + σ n,   x_{σ_i} = x_σ + √(σ_i² − σ²) n′         (the forward process from data).

It is additive over intervals, so here it is minimised **exactly on a grid by the DP** instead of
AYS's coordinate descent (a deliberate deviation [R]; same objective, global optimum on the grid, no
early stopping).  The coupling of every pair (σ_k < σ_a) at once comes from one Brownian path per
x0: x_g = x0 + W(σ_g²), W a standard Brownian motion — then x_a given x_k is exactly x_k + √(σ_a²−σ_k²) n′.
Pair cost (right Riemann in σ on the grid):  C[a, c] = Σ_{k=a+1}^{c} σ_k^{−3} E‖D(x_k; σ_k) − D(x_a; σ_a)‖² (σ_{k−1} − σ_k).
Data x0: the model's own samples (the teacher endpoints), so no data set is needed [R].

**Gaussian data — what Thm 3.1's schedule optimises (checked here, a finding).**  For N(0, c²I) the KLUB
integrand is c⁴(1/(σ²+c²) − 1/(σ_i²+c²)) (Lemma 3.3), and the KLUB *as written above* is minimised by a
schedule far below AYS's tan rule (N = 4, c = 0.5: [80, 0.130, 0.032, 0.008, 0.002] by quadrature +
Nelder–Mead, vs [80, 1.19, 0.50, 0.21, 0.002]); the σ^{−3} weight makes the last interval dominate.  The
tan rule σ_i = c·tan(θ_i), θ equally spaced (:func:`gaussian_schedule`), is instead the *exact minimiser
of Euler's endpoint error* on Gaussian data: one Euler step multiplies x by
r + (1 − r)c²/(σ_i²+c²) = cos θ_i cos(θ_i − θ_{i+1}) / cos θ_{i+1}  (r = σ_{i+1}/σ_i, σ = c tan θ),
the product telescopes to the exact flow factor cos θ_0/cos θ_N times Π_i cos(Δθ_i), and with Σ Δθ_i
fixed Π cos(Δθ_i) is largest (the error smallest) for equal Δθ_i (log cos is concave).
:func:`euler_gaussian_factor` is that product; tests check it and that ``direct`` recovers the rule.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..schedules import Schedule
from .teacher import dp_schedule, model_range, teacher

__all__ = ["ays", "klub_pair_costs", "gaussian_schedule", "euler_gaussian_factor"]


def gaussian_schedule(steps: int, c: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0) -> Schedule:
    """AYS Theorem 3.1: σ_i = c·tan((i/N) atan(σ_min/c) + (1 − i/N) atan(σ_max/c)), decreasing order."""
    s = np.arange(int(steps) + 1) / int(steps)
    sig = c * np.tan(s * math.atan(sigma_min / c) + (1 - s) * math.atan(sigma_max / c))
    sig[0], sig[-1] = sigma_max, sigma_min
    return Schedule(sig, "ays-gaussian", {"c": c})


def euler_gaussian_factor(sigmas, c: float = 0.5) -> float:
    """Π_i cos(θ_i − θ_{i+1}), θ = atan(σ/c): Euler's output on N(0, c²) data divided by the exact
    PF-ODE solution from the same start (module doc); 1 − this is the relative endpoint error."""
    sig = sigmas.sigmas if isinstance(sigmas, Schedule) else Schedule(sigmas).sigmas
    th = np.arctan(sig / c)
    return float(np.prod(np.cos(np.diff(th))))


@torch.no_grad()
def klub_pair_costs(model, x0: torch.Tensor, grid: np.ndarray, seed: int = 0, batch: int = 512) -> torch.Tensor:
    """(G, G) KLUB pair costs (module doc) from data ``x0`` (B, *event) on the decreasing ``grid``."""
    g = np.asarray(grid, dtype=np.float64)
    G, B = g.size, x0.shape[0]
    gen = torch.Generator().manual_seed(int(seed) + 104729)
    # Brownian increments from the smallest σ² upwards: W(σ_g²) for the grid in decreasing order.
    var = g[::-1] ** 2
    inc = np.sqrt(np.diff(np.concatenate([[0.0], var])))
    steps = torch.randn(G, *x0.shape, generator=gen, dtype=torch.float64) * torch.as_tensor(inc.copy()).reshape(
        -1, *([1] * x0.ndim))
    W = torch.cumsum(steps, 0).flip(0)                                    # W[g] ~ N(0, σ_g²), nested
    Dm = torch.empty(G, B, int(np.prod(x0.shape[1:])), dtype=torch.float64)
    for i in range(G):
        xi = x0.double() + W[i]
        Dm[i] = torch.cat([model(xi[j:j + batch], float(g[i])).double() for j in range(0, B, batch)]).reshape(B, -1)
    dsig = -np.diff(g)                                                    # σ_{k−1} − σ_k > 0
    wk = torch.as_tensor(g[1:] ** -3.0 * dsig)                           # weight of k = 1..G−1
    C = torch.full((G, G), math.inf, dtype=torch.float64)
    for a in range(G - 1):
        d2 = (Dm[a + 1:] - Dm[a][None]).pow(2).sum(-1).mean(1)          # (G−a−1,) over k = a+1..
        C[a, a + 1:] = torch.cumsum(d2 * wk[a:], 0)
    return C


def ays(model, steps: int, solver: str = "euler", *, n: int = 128, grid_points: int = 128, seed: int = 0,
        data: torch.Tensor | None = None) -> Schedule:
    """AYS schedule: exact grid-DP minimiser of the MC KLUB.  ``data`` (B, *event): x0 samples
    (default: the teacher endpoints of ``n`` latents).  ``meta["objective"]``: KLUB of the path."""
    t0 = time.perf_counter()
    lo, hi = model_range(model)
    if data is None:
        T = teacher(model, n=n, grid_points=grid_points, seed=seed)
        data, grid = T.x[-1], T.grid
    else:
        grid = Schedule.karras(int(grid_points) - 1, lo, hi).sigmas
    s = dp_schedule(klub_pair_costs(model, torch.as_tensor(data), grid, seed), grid, steps, "ays")
    s.meta.update({"n": int(data.shape[0]), "grid_points": grid_points, "seed": seed,
                   "seconds": time.perf_counter() - t0})
    return s
