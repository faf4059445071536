"""Watson et al. (2021): the exact DP over the decomposed ELBO, the table of bits/dim per budget, and the
samples of a path.  (docs/math.md §7.3, §7.4)

The terms come from :mod:`dpmsched.optimize.elbo`; the DP is :func:`dpmsched.optimize.dp.shortest_paths`.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from .. import metrics, solvers
from ..data import DIGITS_LEVELS, digits
from ..schedules import Schedule
from .dp import shortest_paths
from .elbo import ELBOTerms, cached_terms, check_path, eps_model, estimate_terms

__all__ = ["stride_path", "candidate_steps", "dp_paths", "path_to_schedule", "optimize_elbo_dp",
           "table_terms", "elbo_table", "clamped", "sample_quality"]


# -- paths ---------------------------------------------------------------------------------------------
def stride_path(T: int, K: int, power: float = 1.0) -> np.ndarray:
    """A hand-made K-jump path: s_0 = 0, s_k = round(1 + (T−1)((k−1)/(K−1))^power), k = 1..K.

    ``power=1`` is the "even" stride (iDDPM/Analytic-DPM respacing: the steps of ``Schedule.iddpm_respace``),
    ``power=2`` the "quadratic" one (dense near the data, like DDIM's quadratic).  Rounding collisions are
    pushed up (and capped to leave room below T), so the path is always strictly increasing.
    """
    if not (isinstance(K, (int, np.integer)) and 1 <= K <= T):
        raise ValueError(f"K must be an integer in 1..{T}, got {K!r}")
    if not (power > 0 and math.isfinite(power)):
        raise ValueError(f"power must be a finite positive number, got {power!r}")
    if K == 1:
        return np.array([0, T], dtype=np.int64)
    u = np.arange(K) / (K - 1)
    s = np.round(1.0 + (T - 1) * u**power).astype(np.int64)
    for k in range(1, K):
        s[k] = max(s[k], s[k - 1] + 1)
    s[-1] = T
    for k in range(K - 2, -1, -1):
        s[k] = min(s[k], s[k + 1] - 1)
    return np.concatenate([[0], s])


def candidate_steps(T: int, n: int = 0) -> np.ndarray:
    """The DP's candidate steps: all of 1..T (``n`` = 0), else the ``n`` steps of the quadratic stride
    (:func:`stride_path` with power 2: 1 and T included, dense near the data, where L(t, s) changes fastest)."""
    if not (isinstance(n, (int, np.integer)) and 0 <= n <= T):
        raise ValueError(f"the number of candidate steps must be an integer in 0..{T}, got {n!r}")
    return np.arange(1, T + 1) if n == 0 else stride_path(T, int(n), 2.0)[1:]


def dp_paths(terms: ELBOTerms, ks, variance: str = "small"):
    """The ELBO-optimal path for each budget in ``ks`` (exact DP over the evaluated steps, §7.3).

    Returns ``{K: (path, nelbo)}`` with ``path`` the Ho steps 0 = s_0 < … < s_K = T and ``nelbo`` its
    −ELBO (nats per image) **on the terms it was optimised on**.  One DP pass serves every K.
    """
    ks = [int(k) for k in ks]
    C, nodes = terms.cost_matrix(variance)
    if not ks or min(ks) < 1 or max(ks) > nodes.size - 1:
        raise ValueError(f"budgets must lie in 1..{nodes.size - 1} (the number of evaluated steps), got {ks}")
    res = shortest_paths(C, max(ks))
    return {k: (nodes[res.path(k)][::-1].copy(), res.cost(k) + terms.prior) for k in ks}


def path_to_schedule(path, noise, name: str = "elbo-dp", meta: dict | None = None):
    """The sampling :class:`~dpmsched.schedules.Schedule` of a path: σ of the training indices
    s_K − 1 > … > s_1 − 1, then a final jump to σ = 0 (K steps; the Ho steps are in ``meta["path"]``)."""
    p = check_path(path, noise.T)
    sched = Schedule.from_discrete(p[1:] - 1, noise, name, final_zero=True)
    sched.meta.update({"path": [int(v) for v in p], **(meta or {})})
    return sched


# -- the optimizer registered as METHODS["elbo-dp"] ----------------------------------------------------
def optimize_elbo_dp(model, steps: int, solver: str = "ddpm_ancestral", *, variance: str = "small",
                     n_train: int = 0, candidates: int = 0, clip: bool = True, seed: int = 0, cache: str = "",
                     evaluate: bool = True, batch: int = 512):
    """Watson et al.'s ELBO-optimal K-step schedule of a discrete DDPM on the digits (§7.3).

    Estimates the terms on the train split (``n_train`` images, 0 = all; candidate steps: see
    :func:`candidate_steps`; cached in ``cache`` if given), runs the DP and returns the Schedule with
    ``meta["path"]``, ``meta["bits_per_dim_train"]`` and (``evaluate``) ``meta["bits_per_dim"]`` on the
    test split.  ``solver`` only labels the schedule: the ELBO is that of the ancestral sampler with the
    chosen variance.  An EDM denoiser (e.g. ``"digits-empirical"``) is wrapped by :func:`as_ddpm`.
    """
    _, noise = eps_model(model)
    grid = candidate_steps(noise.T, candidates)
    train = digits("train", dtype=torch.float64)
    if _count("n_train", n_train, len(train)):
        train = train[:n_train]
    kw = dict(steps=grid, clip=clip, levels=DIGITS_LEVELS, seed=seed, batch=batch)
    terms = cached_terms(cache, model, train, meta={"split": "train"}, **kw)
    path, nelbo = dp_paths(terms, [steps], variance)[steps]
    meta = {"variance": variance, "candidates": int(grid.size), "n_train": terms.meta["n"],
            "bits_per_dim_train": nelbo / (terms.dim * math.log(2.0)), "terms_seconds": terms.meta["seconds"]}
    if evaluate:
        test = estimate_terms(model, digits("test", dtype=torch.float64), steps=path[1:], clip=clip,
                              levels=DIGITS_LEVELS, seed=seed + 1, batch=batch)
        meta["bits_per_dim"] = test.bits_per_dim(path, variance)
    sched = path_to_schedule(path, noise, "elbo-dp", meta)
    sched.meta["solver"] = solver
    return sched


# -- Watson's table: even vs quadratic vs DP bits/dim per budget -----------------------------------------
def _count(name: str, n, limit: int) -> int:
    """A count argument: an integer in 0..limit (0 = all); a negative one would silently slice from the end."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= limit:
        raise ValueError(f"{name} must be an integer in 0..{limit} (0 = all), got {n!r}")
    return int(n)


def table_terms(model, ks, *, n_train: int = 0, n_test: int = 0, candidates: int = 0, clip: bool = True,
                seed: int = 0, cache_dir: str = "", batch: int = 512, progress: bool = False):
    """The candidate steps and the train/test ELBO terms of Watson's table (§7.3–7.4), cached.

    Candidates S: :func:`candidate_steps` (``candidates`` of them, 0 = all T) plus every step of the even and
    quadratic paths of each K in ``ks`` (so the DP can always pick them).  Terms on the first ``n_train`` train
    images (0 = all) with ``seed`` — the DP's input — and on the first ``n_test`` test images (0 = all) with
    ``seed + 1`` — the evaluation; cached in ``cache_dir/elbo-terms-<model>-<split>.json`` ('' = off).
    Returns ``(S, train_terms, test_terms)``; |S| network passes per split.
    """
    ks = [int(k) for k in ks]
    _, noise = eps_model(model)
    T = noise.T
    if not ks or min(ks) < 1 or max(ks) > T:
        raise ValueError(f"ks must lie in 1..{T}, got {ks}")
    cand = candidate_steps(T, candidates)
    for k in ks:
        cand = np.union1d(cand, np.concatenate([stride_path(T, k, 1.0)[1:], stride_path(T, k, 2.0)[1:]]))
    name = str(getattr(model, "name", "model")).replace("/", "_")

    def terms(split, n, s):
        x = digits(split, dtype=torch.float64)
        x = x[:_count(f"n_{split}", n, len(x))] if n else x
        path = str(Path(cache_dir) / f"elbo-terms-{name}-{split}.json") if cache_dir else ""
        return cached_terms(path, model, x, steps=cand, clip=clip, levels=DIGITS_LEVELS, seed=s, batch=batch,
                            progress=progress, meta={"split": split})

    return cand, terms("train", n_train, seed), terms("test", n_test, seed + 1)


def elbo_table(model, ks=(2, 4, 8, 16, 32, 64), *, variance: str = "small", n_train: int = 0, n_test: int = 0,
               candidates: int = 0, clip: bool = True, seed: int = 0, cache_dir: str = "", batch: int = 512,
               progress: bool = False) -> dict:
    """Bits/dim on the digits test split of the even, quadratic and DP paths for each K in ``ks`` (§7.4).

    Candidate steps S and the train/test terms: :func:`table_terms` (S contains the even and quadratic steps,
    so DP ≤ both on the train split by construction; the DP picks on train, every path is scored on test).
    ``full`` is the test bits/dim of the path through all of S (the T-step value when ``candidates`` = 0).
    Returns a JSON-ready dict with the lists aligned with ``ks``, the DP paths, the train-split values and
    the timings.
    """
    ks = [int(k) for k in ks]
    cand, tr, te = table_terms(model, ks, n_train=n_train, n_test=n_test, candidates=candidates, clip=clip,
                               seed=seed, cache_dir=cache_dir, batch=batch, progress=progress)
    T = tr.T
    base = {k: {"even": stride_path(T, k, 1.0), "quadratic": stride_path(T, k, 2.0)} for k in ks}
    t0 = time.perf_counter()
    dp = dp_paths(tr, ks, variance)
    dp_seconds = time.perf_counter() - t0
    bpd = 1.0 / (tr.dim * math.log(2.0))
    out = {"ks": ks, "variance": variance, "model": getattr(model, "name", ""), "T": T, "candidates_requested": candidates,
           "candidates": int(cand.size), "n_train": tr.meta["n"], "n_test": te.meta["n"], "clip": clip,
           "levels": DIGITS_LEVELS, "seed": seed,
           "even": [te.bits_per_dim(base[k]["even"], variance) for k in ks],
           "quadratic": [te.bits_per_dim(base[k]["quadratic"], variance) for k in ks],
           "dp": [te.bits_per_dim(dp[k][0], variance) for k in ks],
           "full": te.bits_per_dim(te.full_path(), variance),
           "train": {"even": [tr.bits_per_dim(base[k]["even"], variance) for k in ks],
                     "quadratic": [tr.bits_per_dim(base[k]["quadratic"], variance) for k in ks],
                     "dp": [dp[k][1] * bpd for k in ks], "full": tr.bits_per_dim(tr.full_path(), variance)},
           "paths": {str(k): [int(v) for v in dp[k][0]] for k in ks},
           "seconds": {"terms_train": tr.meta["seconds"], "terms_test": te.meta["seconds"], "dp": dp_seconds}}
    return out


# -- samples along a path (for "ELBO-optimal ≠ sample-quality-optimal") --------------------------------
def clamped(denoiser):
    """The denoiser with x̂0 clamped to [−1, 1]: the mean function whose ELBO ``estimate_terms(clip=True)`` computes."""
    def den(x, sigma):
        return denoiser(x, sigma).clamp(-1.0, 1.0)

    for a in ("event_shape", "sigma_min", "sigma_max", "name", "noise"):
        if hasattr(denoiser, a):
            setattr(den, a, getattr(denoiser, a))
    return den


def sample_quality(model, schedules: dict, n: int = 512, *, seed: int = 0, n_ref: int = 256, ref_steps: int = 32) -> dict:
    """Sample quality of each schedule (name → Schedule ending in σ = 0) for a digits DDPM.

    Returns name → ``{"fd_ancestral", "fd_ddim", "trunc_ddim"}``: the Fréchet-digits distance to the test split
    (:func:`dpmsched.metrics.frechet_digits`) of ``n`` samples (:func:`dpmsched.solvers.sample` of the clamped
    model, the solver's noise seeded with ``seed`` like the latents) with the ancestral
    sampler and with DDIM (same noise for every schedule), and the RMSE of DDIM on ``n_ref`` of those noises
    against an accurate PF-ODE solve (``solvers.reference`` with ``ref_steps`` RK4 steps down to the table's
    σ_min, then the same final jump x ← x̂0).  All with x̂0 clamped to [−1, 1].
    """
    den = clamped(model)
    s_max, s_min = float(model.noise.sigmas[-1]), float(model.noise.sigmas[0])
    dtype = next((p.dtype for p in getattr(model, "parameters", lambda: iter(()))()), torch.float64)
    z = torch.randn(n, *model.event_shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    m = min(n_ref, n)
    with torch.no_grad():
        ref = den(solvers.reference(den, s_max * z[:m], s_max, s_min, steps=ref_steps), s_min)
    out = {}
    for name, sched in schedules.items():
        if float(sched.sigmas[0]) != s_max or not sched.has_final_zero:
            raise ValueError(f"schedule {name!r} must start at the model's sigma_max and end in 0")
        anc = solvers.sample(den, sched, "ddpm_ancestral", n, z=z, solver_seed=seed, batch=1024, dtype=dtype)
        det = solvers.sample(den, sched, "euler", n, z=z, batch=1024, dtype=dtype)
        out[name] = {"fd_ancestral": metrics.frechet_digits(anc)["fd"], "fd_ddim": metrics.frechet_digits(det)["fd"],
                     "trunc_ddim": metrics.truncation_error(det[:m], ref), "samples": anc}
    return out
