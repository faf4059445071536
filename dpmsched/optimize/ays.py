"""Align Your Steps (Sabour, Fidler, Kreis, ICML 2024): the KLUB and the paper's optimiser.  (docs/math.md §8.1)

**The objective.**  For stochastic DDIM in EDM coordinates (s = 1, σ(t) = t) AYS bounds the KL divergence
between the learnt reverse SDE and the solver's linearised one (Girsanov) by a sum over intervals
(decreasing σ here; AYS indexes increasing):

    KLUB = Σ_i ∫_{σ_{i+1}}^{σ_i} σ^{−3} E ‖D(x_σ; σ) − D(x_{σ_i}; σ_i)‖² dσ,
    x_σ = x0 + σ n,   x_{σ_i} = x_σ + √(σ_i² − σ²) n′         (the forward process from data).

The σ^{−3} comes from ½‖Δdrift‖²/g² with drift 2(x − D)/σ and g² = 2σ.  Data x0: the model's own
samples (teacher endpoints) unless ``data`` is given [R] — no data set is needed.

**The estimator (AYS Alg. 2)** — :func:`klub_interval`: importance sampling of σ in each interval from
π(σ) ∝ σ^{−3}(1/(σ²+c²) − 1/(σ_i²+c²)), c = 0.5 (the integrand for N(0, c²) data, Lemma 3.3), each draw
weighted by ‖ΔD‖²/(1/(σ²+c²) − 1/(σ_i²+c²)) **times the normaliser of π** (which depends on the candidate
interval; Alg. 2 as printed omits it).  Common random numbers (x0, n, n′ and stratified uniforms fixed
for the whole run) make every candidate comparison paired.

**The optimiser (AYS Alg. 1)** — :func:`ays`, ``mode="paper"`` (the default): coordinate descent, each
interior σ_i tried at 11 candidates around it (log-spaced, half-way to the nearer neighbour at most,
the current value included), keeping the argmin of its two intervals; 10 steps from the EDM (Karras ρ=7)
initialisation, then subdivided twice (log σ′ = midpoint of log σ's) to 20 and 40 steps, optimising
only the new points; any other step count is read off the 40-step schedule by piecewise log-linear
interpolation (ComfyUI ``loglinear_interp``).  The paper stops early "because over-optimising the
bound hurts" (App. A.3) without a criterion we can reproduce [R]: here each level runs at most
``sweeps`` passes (default 3, 1, 1 ≈ 27 + 10 + 20 coordinate updates, inside the paper's < 300) and
stops sooner when no point moves.  ``meta["history"]`` has the KLUB after every pass.

``mode="dp"`` is the exact grid minimiser of the KLUB at the requested step count (a pair-cost DP
through :mod:`dpmsched.optimize.dp`; :func:`klub_pair_costs`) — the bound optimised to the end, which is
what AYS warns against.  It is kept to measure exactly that (benchmarks/schedules.md, notebook 03).

**Gaussian data — what Thm 3.1's schedule optimises (checked here, a finding).**  For N(0, c²I) the KLUB
integrand is c⁴(1/(σ²+c²) − 1/(σ_i²+c²)) (Lemma 3.3), and the KLUB is minimised by a schedule far below
AYS's tan rule (N = 4, c = 0.5: [80, 0.130, 0.032, 0.008, 0.002] by quadrature + Nelder–Mead, vs
[80, 1.19, 0.50, 0.21, 0.002]).  For many steps the KLUB-optimal density of points is ∝ 1/(σ(σ²+c²))
(geometric below c), while the tan rule's is ∝ 1/(σ²+c²) (uniform in σ below c): the σ^{−3} weight
pulls points down.  The tan rule σ_i = c·tan(θ_i), θ equally spaced (:func:`gaussian_schedule`), is
instead the *exact minimiser of Euler's (deterministic DDIM's) endpoint error* on Gaussian data: one
Euler step multiplies x by r + (1 − r)c²/(σ_i²+c²) = cos θ_i cos(θ_i − θ_{i+1}) / cos θ_{i+1}
(r = σ_{i+1}/σ_i, σ = c tan θ), the product telescopes to the exact flow factor cos θ_0/cos θ_N times
Π_i cos(Δθ_i), and with Σ Δθ_i fixed Π cos(Δθ_i) is largest (the error smallest) for equal Δθ_i
(log cos is concave).  :func:`euler_gaussian_factor` is that product; tests check it, that ``direct``
recovers the rule, that ``mode="dp"`` lands far below the tan rule's closed-form KLUB, and that the
paper-mode descent lowers the closed-form KLUB of its 40-step schedule.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..denoisers import model_range
from ..schedules import Schedule
from .teacher import dp_schedule, teacher

__all__ = ["ays", "KLUBDraws", "klub_interval", "klub", "klub_pair_costs", "gaussian_schedule", "euler_gaussian_factor",
           "loglinear_interp", "subdivide"]

C_PROPOSAL = 0.5          # c of π (AYS Alg. 2)
_CACHE: dict = {}


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


def loglinear_interp(sigmas, steps: int) -> np.ndarray:
    """A decreasing σ array (K+1,) resampled to ``steps`` + 1 points, piecewise linear in log σ over the
    index (ComfyUI ``loglinear_interp``); the end points are kept."""
    s = np.asarray(sigmas, dtype=np.float64)
    x_old = np.linspace(0.0, 1.0, s.size)
    return np.exp(np.interp(np.linspace(0.0, 1.0, int(steps) + 1), x_old, np.log(s)))


def subdivide(sigmas) -> np.ndarray:
    """(K+1,) → (2K+1,): a new point at the log-midpoint of every interval (AYS §3.3)."""
    s = np.asarray(sigmas, dtype=np.float64)
    out = np.empty(2 * s.size - 1)
    out[0::2], out[1::2] = s, np.sqrt(s[:-1] * s[1:])
    return out


class KLUBDraws:
    """Fixed random numbers for every KLUB evaluation of a run: x0 (B, *event), n, n′ like x0, and
    stratified uniforms u (B,) in random order."""

    def __init__(self, x0: torch.Tensor, seed: int):
        gen = torch.Generator().manual_seed(int(seed) + 7919)
        self.x0 = x0.double()
        self.n1 = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        self.n2 = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        B = x0.shape[0]
        self.u = ((torch.randperm(B, generator=gen).double() + 0.5) / B).numpy()


def _proposal(lo: float, up: float, u: np.ndarray, c: float, points: int = 513):
    """σ draws from π on [lo, up] by inverse CDF on a geometric grid, and π's normaliser Z."""
    g = np.geomspace(lo, up, points)
    p = g**-3.0 * (1.0 / (g * g + c * c) - 1.0 / (up * up + c * c))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(g))])
    return np.interp(u * cdf[-1], cdf, g), float(cdf[-1])


@torch.no_grad()
def klub_interval(model, draws: KLUBDraws, lo: float, up: float, c: float = C_PROPOSAL, batch: int = 512) -> float:
    """Monte-Carlo KLUB of one interval [lo, up] (σ, lo < up) by AYS Alg. 2 with the normaliser:
    Z · mean_b ‖D(x_σ_b; σ_b) − D(x_up; up)‖² / (1/(σ_b²+c²) − 1/(up²+c²)),  σ_b ~ π."""
    if not 0 < lo < up:
        raise ValueError(f"an interval needs 0 < lo < up, got [{lo}, {up}]")
    t, Z = _proposal(lo, up, draws.u, c)
    tt = torch.as_tensor(t)
    shape = (-1,) + (1,) * (draws.x0.ndim - 1)
    xt = draws.x0 + tt.reshape(shape) * draws.n1
    xu = xt + torch.sqrt(up * up - tt * tt).reshape(shape) * draws.n2
    tot = 0.0
    for j in range(0, xt.shape[0], batch):
        sl = slice(j, j + batch)
        d = (model(xt[sl], tt[sl]).double() - model(xu[sl], float(up)).double()).flatten(1).pow(2).sum(1)
        tot += float((d / torch.as_tensor(1.0 / (t[sl] ** 2 + c * c) - 1.0 / (up * up + c * c))).sum())
    return Z * tot / xt.shape[0]


def klub(model, sigmas, draws: KLUBDraws, c: float = C_PROPOSAL) -> float:
    """The MC KLUB of a whole decreasing schedule (sum of :func:`klub_interval`)."""
    s = sigmas.sigmas if isinstance(sigmas, Schedule) else np.asarray(sigmas, dtype=np.float64)
    return sum(klub_interval(model, draws, float(lo), float(up), c) for up, lo in zip(s[:-1], s[1:]))


def _coordinate_descent(model, draws, sig: np.ndarray, free, sweeps: int, candidates: int, c: float, bar=None):
    """AYS Alg. 1 on the points ``free`` of the decreasing ``sig`` (changed in place); returns the
    KLUB after every pass (the first entry: before any).  ``bar``: a tqdm bar advanced per point."""
    cost = [klub_interval(model, draws, float(sig[j + 1]), float(sig[j]), c) for j in range(sig.size - 1)]
    hist = [sum(cost)]
    for _ in range(int(sweeps)):
        moved = False
        for i in free:
            if bar is not None:
                bar.update(1)
            hi, lo = sig[i - 1], sig[i + 1]
            h = 0.5 * min(math.log(hi / sig[i]), math.log(sig[i] / lo))
            best, best_val = None, cost[i - 1] + cost[i]
            for v in sig[i] * np.exp(np.linspace(-h, h, int(candidates))):
                if v == sig[i]:
                    continue
                a, b = klub_interval(model, draws, float(v), float(hi), c), klub_interval(model, draws, float(lo),
                                                                                           float(v), c)
                if a + b < best_val:
                    best, best_val, best_ab = v, a + b, (a, b)
            if best is not None:
                sig[i], (cost[i - 1], cost[i]), moved = best, best_ab, True
        hist.append(sum(cost))
        if not moved:
            break
    return hist


def _cached(key, make):
    """``make()`` once per key (a small in-process cache, cleared when it holds 8 entries)."""
    if key not in _CACHE:
        if len(_CACHE) >= 8:
            _CACHE.clear()
        _CACHE[key] = make()
    return _CACHE[key]


def _paper_schedule(model, draws, sweeps, candidates, c, progress: bool) -> tuple[np.ndarray, list]:
    lo, hi = model_range(model)
    sig = Schedule.karras(10, lo, hi).sigmas.copy()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=9 * sweeps[0] + 10 * sweeps[1] + 20 * sweeps[2], desc="AYS coordinate descent", leave=False)
    hist = [_coordinate_descent(model, draws, sig, range(1, 10), sweeps[0], candidates, c, bar)]
    for level in (1, 2):
        sig = subdivide(sig)
        hist.append(_coordinate_descent(model, draws, sig, range(1, sig.size - 1, 2), sweeps[level], candidates, c,
                                        bar))
    if bar is not None:
        bar.close()
    return sig, hist


@torch.no_grad()
def klub_pair_costs(model, x0: torch.Tensor, grid: np.ndarray, seed: int = 0, batch: int = 512) -> torch.Tensor:
    """(G, G) KLUB pair costs on the decreasing ``grid`` from data ``x0`` (B, *event), for ``mode="dp"``.
    One Brownian path per x0 couples every pair (σ_k < σ_a) at once: x_g = x0 + W(σ_g²), so x_a given
    x_k is exactly x_k + √(σ_a²−σ_k²) n′.  Right Riemann sum in σ on the grid:
    C[a, c] = Σ_{k=a+1}^{c} σ_k^{−3} E‖D(x_k; σ_k) − D(x_a; σ_a)‖² (σ_{k−1} − σ_k)."""
    g = np.asarray(grid, dtype=np.float64)
    G, B = g.size, x0.shape[0]
    gen = torch.Generator().manual_seed(int(seed) + 104729)
    var = g[::-1] ** 2                                                   # W(σ²) from the smallest σ up
    inc = np.sqrt(np.diff(np.concatenate([[0.0], var])))
    steps = torch.randn(G, *x0.shape, generator=gen, dtype=torch.float64) * torch.as_tensor(inc.copy()).reshape(
        -1, *([1] * x0.ndim))
    W = torch.cumsum(steps, 0).flip(0)                                    # W[g] ~ N(0, σ_g²), nested
    Dm = torch.empty(G, B, int(np.prod(x0.shape[1:])), dtype=torch.float64)
    for i in range(G):
        xi = x0.double() + W[i]
        Dm[i] = torch.cat([model(xi[j:j + batch], float(g[i])).double() for j in range(0, B, batch)]).reshape(B, -1)
    wk = torch.as_tensor(g[1:] ** -3.0 * -np.diff(g))                    # weight of k = 1..G−1
    C = torch.full((G, G), math.inf, dtype=torch.float64)
    for a in range(G - 1):
        d2 = (Dm[a + 1:] - Dm[a][None]).pow(2).sum(-1).mean(1)          # (G−a−1,) over k = a+1..
        C[a, a + 1:] = torch.cumsum(d2 * wk[a:], 0)
    return C


def ays(model, steps: int, solver: str = "euler", *, mode: str = "paper", n: int = 128, grid_points: int = 128,
        seed: int = 0, data: torch.Tensor | None = None, sweeps=(3, 1, 1), candidates: int = 11,
        c: float = C_PROPOSAL, progress: bool = False) -> Schedule:
    """AYS schedule with ``steps`` intervals (module doc).  ``mode``: "paper" (hierarchical coordinate
    descent with early stopping, then log-linear interpolation of the 40-step result) or "dp" (exact
    grid minimiser, ``grid_points``).
    ``data`` (B, *event): x0 samples (default: the teacher endpoints of ``n`` latents, ``seed``).
    The schedule does not depend on ``solver`` (AYS transfers one schedule to every solver); the
    descent ("paper") and the pair costs ("dp") are cached, so other step counts and solvers reuse them.
    ``progress``: a tqdm bar over the coordinate updates (≈ 100 s on digits-edm on one CPU thread).
    ``meta``: ``objective`` (MC KLUB of the returned schedule, "paper"; the DP optimum, "dp"), ``history``."""
    if mode not in ("paper", "dp"):
        raise ValueError(f"mode must be 'paper' or 'dp', got {mode!r}")
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t0 = time.perf_counter()
    lo, hi = model_range(model)
    if data is None:
        T = teacher(model, n=n, grid_points=grid_points, seed=seed)
        data, grid = T.x[-1], T.grid
    else:
        data = torch.as_tensor(data)
        grid = Schedule.karras(int(grid_points) - 1, lo, hi).sigmas
    # the expensive part depends on neither ``steps`` nor ``solver``: kept per model, data and settings
    key = (id(model), getattr(model, "name", None), data.shape, float(data.double().sum()), seed, mode)
    if mode == "dp":
        C = _cached(key + (grid.tobytes(),), lambda: klub_pair_costs(model, data, grid, seed))
        s = dp_schedule(C, grid, steps, "ays")
        s.meta.update({"mode": "dp", "n": int(data.shape[0]), "grid_points": grid_points, "seed": seed,
                       "seconds": time.perf_counter() - t0})
        return s
    if len(sweeps) != 3 or min(int(v) for v in sweeps) < 0:
        raise ValueError(f"sweeps must be three non-negative pass counts (10, 20, 40 steps), got {sweeps}")
    draws = KLUBDraws(data, seed)
    sig40, hist = _cached(key + (tuple(int(v) for v in sweeps), int(candidates), float(c)),
                          lambda: _paper_schedule(model, draws, sweeps, candidates, c, progress))
    sig = loglinear_interp(sig40, steps)
    sig[0], sig[-1] = sig40[0], sig40[-1]
    return Schedule(sig, "ays", {"mode": "paper", "objective": klub(model, sig, draws, c),
                                 "history": [list(map(float, h)) for h in hist], "schedule40": sig40.tolist(),
                                 "n": int(data.shape[0]), "seed": seed, "sweeps": list(map(int, sweeps)),
                                 "candidates": int(candidates), "seconds": time.perf_counter() - t0})
