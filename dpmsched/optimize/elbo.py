"""Watson et al. (2021): the decomposed ELBO of a discrete DDPM, its cost table, and the exact DP.  (ALGORITHMS.md §7)

Indexing follows Ho et al. and Watson: steps ``t = 0..T`` with ``ᾱ_0 = 1`` (the data) and ``ᾱ_t`` for
t ≥ 1 the model's table (``DiscreteVP.alphas_cumprod[t − 1]``: our 0-indexed training index is
``n = t − 1``).  A *path* is a strictly increasing integer array ``0 = s_0 < s_1 < … < s_K = T``: the
generative model jumps T = s_K → s_{K−1} → … → s_1 → 0, K network calls.  Its negative ELBO (§7.1) is

    −ELBO(path) = L_prior + Σ_{k=2}^{K} L(s_k, s_{k−1}) + L(s_1, 0)                       (7.1)

    L_prior   = E KL(q(x_T|x0) ‖ N(0, I))
    L(t, s)   = E KL(q(x_s|x_t, x0) ‖ p(x_s|x_t)) = c(s,t) + κ(s,t)·M(t)      (1 ≤ s < t)   (7.2)
    L(t, 0)   = −E log p(x0|x_t)        (discretized Gaussian decoder, ``levels`` grey levels)

with ``M(t) = E‖x0 − x̂0(x_t, t)‖²``: **one network pass per t** fills a whole column of the T×T table
(the "O(T) trick").  p's variance σ² is the posterior β̃ ("small": c = 0 and κ = ½(SNR_s − SNR_t)) or
β_{s|t} = 1 − ᾱ_t/ᾱ_s ("large").  The decoder of a jump t → 0 is N(x̂0, σ²_dec) with σ²_dec = 1 − ᾱ_t,
and β̃_{1|2} for t = 1 (Ho's clipped value) — Analytic-DPM's choice (``get_nelbo_terms``), for both
variances, since the posterior variance of a jump to the data is 0.

The DP (§7.3) is :func:`dpmsched.optimize.dp.shortest_paths` on the sampling-order cost matrix (node 0 =
step T, last node = step 0): exact, all budgets K ≤ K_max in one O(K_max·G²) pass over the G candidate
steps.  Protocol (§7.3): estimate the terms on the train split, choose the path there, evaluate its
bits/dim on the test split.  bits/dim = −ELBO/(d ln 2), a bound on the *discrete* NLL of the
``levels``-level data (so log2(levels) bits/dim is what a uniform model scores).
"""
from __future__ import annotations

import json
import math
import time

import numpy as np
import torch

__all__ = ["ELBOTerms", "VARIANCES", "alphas_bar", "jump_variances", "edge_coefficients", "gaussian_kl", "discretized_gaussian_nll",
           "decoder_variance", "prior_kl", "as_ddpm", "load_ddpm", "estimate_terms", "cached_terms", "dp_paths",
           "stride_path", "candidate_steps", "check_path", "path_to_schedule", "optimize_elbo_dp", "table_terms", "elbo_table", "cli_elbo_table", "clamped", "sample_schedule", "sample_quality"]

VARIANCES = ("small", "large")


# -- closed forms (§7.1, §7.2) ---------------------------------------------------------------------
def alphas_bar(noise) -> np.ndarray:
    """ᾱ in Ho indexing, shape (T+1,), float64: ``[1, ᾱ_1, …, ᾱ_T]`` from a DiscreteVP (or its ᾱ array)."""
    a = np.asarray(getattr(noise, "alphas_cumprod", noise), dtype=np.float64)
    if a.ndim != 1 or a.size < 2 or not np.all((a > 0) & (a < 1)) or np.any(np.diff(a) >= 0):
        raise ValueError("expected a DiscreteVP or a strictly decreasing 1-D ᾱ table inside (0, 1)")
    return np.concatenate([[1.0], a])


def jump_variances(abar: np.ndarray, s, t):
    """(β_{s|t}, β̃_{s|t}) of jumps t → s: β = 1 − ᾱ_t/ᾱ_s (via expm1, accurate for neighbouring steps)
    and the posterior variance β̃ = β(1−ᾱ_s)/(1−ᾱ_t) of q(x_s|x_t, x0)."""
    a_s, a_t = abar[s], abar[t]
    beta = -np.expm1(np.log(a_t) - np.log(a_s))
    return beta, beta * (1.0 - a_s) / (1.0 - a_t)


def edge_coefficients(abar: np.ndarray, s, t, variance: str = "small"):
    """(c, κ) of eq. (7.2) for jumps t → s, 1 ≤ s < t ≤ T (broadcast arrays of integers), in nats.

    β_{s|t} = 1 − ᾱ_t/ᾱ_s, β̃ = β_{s|t}(1−ᾱ_s)/(1−ᾱ_t), σ² = β̃ ("small") or β_{s|t} ("large");
    c = (d/2)(β̃/σ² + log(σ²/β̃) − 1) **per dimension** (multiply by d), κ = ½ ᾱ_s β_{s|t}²/((1−ᾱ_t)² σ²).
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    s, t = np.asarray(s), np.asarray(t)
    if np.any(s < 1) or np.any(t <= s) or np.any(t >= abar.size):
        raise ValueError(f"need 1 <= s < t <= {abar.size - 1}")
    a_s, a_t = abar[s], abar[t]
    beta, tilde = jump_variances(abar, s, t)
    var = tilde if variance == "small" else beta
    c = 0.5 * (tilde / var + np.log(var / tilde) - 1.0)
    kappa = 0.5 * a_s * beta**2 / ((1.0 - a_t) ** 2 * var)
    return c, kappa


def gaussian_kl(mu_q, var_q, mu_p, var_p) -> torch.Tensor:
    """Elementwise KL(N(mu_q, var_q) ‖ N(mu_p, var_p)) in nats (tensors or floats, broadcast)."""
    var_q, var_p = torch.as_tensor(var_q, dtype=torch.float64), torch.as_tensor(var_p, dtype=torch.float64)
    return 0.5 * (var_q / var_p + (mu_q - mu_p) ** 2 / var_p - 1.0 + torch.log(var_p / var_q))


def _log_bin_mass(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Φ(hi) − Φ(lo)) for lo < hi, stable in both tails (lo = −inf / hi = +inf allowed)."""
    flip = lo > 0                                        # Φ(hi) − Φ(lo) = Φ(−lo) − Φ(−hi)
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    lb, la = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return lb + torch.log(-torch.expm1(la - lb))


def discretized_gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, var, levels: int) -> torch.Tensor:
    """−log P(x0) per sample (B,), nats, for the discretized Gaussian decoder of Ho et al. (2020, eq. 13).

    ``x0`` (B, *event) on the grid of ``levels`` equally spaced values in [−1, 1] (bin width 2/(levels−1):
    256 levels → ±1/255, the 17 digits levels → ±1/16); each coordinate's probability is the N(mean, var)
    mass of its bin, the outer bins extending to ±∞.  Raises ValueError for data off the grid.
    """
    if not (isinstance(levels, int) and levels >= 2):
        raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
    x0, mean = x0.double(), torch.as_tensor(mean).double()
    k = (x0 + 1.0) * (levels - 1) / 2.0
    if (k - k.round()).abs().max() > 1e-5 or x0.min() < -1 - 1e-6 or x0.max() > 1 + 1e-6:
        raise ValueError(f"x0 must lie on the {levels}-level grid of [-1, 1] (bin width {2 / (levels - 1):.4g})")
    half = 1.0 / (levels - 1)
    std = torch.sqrt(torch.as_tensor(var, dtype=torch.float64))
    lo = torch.where(k.round() <= 0, torch.tensor(-math.inf, dtype=torch.float64), (x0 - half - mean) / std)
    hi = torch.where(k.round() >= levels - 1, torch.tensor(math.inf, dtype=torch.float64), (x0 + half - mean) / std)
    return -_log_bin_mass(lo, hi).reshape(x0.shape[0], -1).sum(1)


def decoder_variance(abar: np.ndarray, t: int) -> float:
    """σ²_dec of the jump t → 0: 1 − ᾱ_t (= β_{0|t}), and β̃_{1|2} for t = 1 (Analytic-DPM)."""
    if t == 1:
        if abar.size < 3:
            raise ValueError("the decoder variance at t = 1 needs T >= 2")
        return float(jump_variances(abar, 1, 2)[1])
    return float(1.0 - abar[t])


def prior_kl(x0: torch.Tensor, abar_T: float) -> torch.Tensor:
    """L_prior per sample (B,): KL(N(√ᾱ_T x0, 1−ᾱ_T) ‖ N(0, 1)) summed over dimensions, nats."""
    x0 = x0.double().reshape(x0.shape[0], -1)
    return gaussian_kl(math.sqrt(abar_T) * x0, 1.0 - abar_T, torch.zeros_like(x0), 1.0).sum(1)


# -- models -------------------------------------------------------------------------------------------
def as_ddpm(denoiser, noise=None, name: str | None = None):
    """An ε-prediction discrete DDPM (a :class:`~dpmsched.denoisers.vp.VPDenoiser`) from an EDM denoiser.

    ε̂(x_t, n) = (x̃ − D(x̃, σ))/σ with x̃ = x_t/α and σ the EDM level of (continuous) index n of ``noise``
    (default ``DiscreteVP.linear(1000)``), so x̂0 = (x_t − √(1−ᾱ) ε̂)/√ᾱ = D(x̃, σ) exactly.  With an exact
    denoiser (``dpmsched.denoisers.exact``) this is the ideal ε-model: the known answer the tests use.
    """
    from ..denoisers.vp import VPDenoiser
    from ..noise import DiscreteVP

    noise = noise if noise is not None else DiscreteVP.linear(1000)
    if not isinstance(noise, DiscreteVP):
        raise ValueError(f"noise must be a DiscreteVP, got {type(noise).__name__}")

    def eps(x_t: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        t = (n.detach().double().cpu().numpy() + 1.0) / noise.T
        sig = torch.as_tensor(noise.sigma(t), dtype=torch.float64, device=x_t.device)
        sig = sig.reshape(-1, *([1] * (x_t.ndim - 1)))
        xt = x_t.double() * torch.sqrt(1.0 + sig**2)           # x̃ = x_t/α
        return ((xt - denoiser(xt, sig.reshape(-1)).double()) / sig).to(x_t.dtype)

    return VPDenoiser(eps, noise, "epsilon", getattr(denoiser, "event_shape", ()),
                      name=name or f"ddpm({getattr(denoiser, 'name', type(denoiser).__name__)})")


def load_ddpm(name: str):
    """A discrete ε-DDPM by name: ``"digits-catmix"`` — the exact ε-model of a mixture of 20 factorized
    17-level categoricals fitted to the digits train split (:class:`~dpmsched.denoisers.discrete.FactorizedMixture`,
    EM seed 0, Dirichlet(1) smoothing; its exact NLL is ``model.mixture.log_pmf``), wrapped by :func:`as_ddpm` with T = 1000 linear β;
    otherwise :func:`dpmsched.denoisers.load` (``"digits-ddpm"`` …), an EDM denoiser wrapped by :func:`as_ddpm`.
    """
    if name == "digits-catmix":
        from ..data import DIGITS_LEVELS, digits
        from ..denoisers.discrete import FactorizedMixture

        mix = FactorizedMixture.fit(digits("train", dtype=torch.float64), components=20, levels=DIGITS_LEVELS,
                                     alpha=1.0, seed=0)
        model = as_ddpm(mix, name=name)
        model.mixture = mix
        return model
    from ..denoisers import load

    model = load(name)
    return model if hasattr(model, "eps") else as_ddpm(model)


def _eps_model(model):
    """(ε-callable (x_t, n) → ε̂, DiscreteVP) of a DDPM; an EDM denoiser is wrapped by :func:`as_ddpm`."""
    from ..noise import DiscreteVP

    if not (hasattr(model, "eps") and isinstance(getattr(model, "noise", None), DiscreteVP)):
        if not callable(model):
            raise TypeError(f"expected a DDPM with .eps/.noise or a denoiser, got {type(model).__name__}")
        model = as_ddpm(model)
    return model.eps, model.noise


# -- the terms of the decomposed ELBO ---------------------------------------------------------------
class ELBOTerms:
    """The per-step quantities the whole cost table is made of (§7.2), for one model and one data set.

    Attributes (float64, Ho indexing t = 0..T; NaN where a step was not evaluated):

    * ``abar`` (T+1,) — ᾱ_t with ᾱ_0 = 1;
    * ``mse`` (T+1,) — M(t) = E‖x0 − x̂0(x_t, t)‖², summed over the d dimensions (per image);
    * ``decoder`` (T+1,) — L(t, 0) = −E log p(x0|x_t), nats per image;
    * ``prior`` — L_prior, nats per image; ``dim`` — d;
    * ``meta`` — how it was estimated (split, number of images, seed, clip, levels, seconds, …).

    ``steps`` are the evaluated steps (ascending, always containing T): the candidate set of the DP.
    """

    def __init__(self, abar, mse, decoder, prior: float, dim: int, meta: dict | None = None):
        self.abar = np.asarray(abar, dtype=np.float64)
        self.mse = np.asarray(mse, dtype=np.float64)
        self.decoder = np.asarray(decoder, dtype=np.float64)
        if not (self.abar.shape == self.mse.shape == self.decoder.shape) or self.abar[0] != 1.0:
            raise ValueError("abar, mse and decoder must all have shape (T+1,) with abar[0] = 1")
        self.prior, self.dim, self.meta = float(prior), int(dim), dict(meta or {})
        if not np.isfinite(self.mse[-1]):
            raise ValueError("step T must be evaluated (every path ends there)")

    @property
    def T(self) -> int:
        return self.abar.size - 1

    @property
    def steps(self) -> np.ndarray:
        return np.flatnonzero(np.isfinite(self.mse[1:])) + 1

    def edge_cost(self, s, t, variance: str = "small") -> np.ndarray:
        """L(t, s) in nats per image for jumps t → s (broadcast integer arrays, 0 ≤ s < t ≤ T, t evaluated)."""
        s, t = np.broadcast_arrays(np.asarray(s, dtype=np.int64), np.asarray(t, dtype=np.int64))
        if np.any(s < 0) or np.any(t <= s) or np.any(t > self.T):
            raise ValueError(f"need 0 <= s < t <= {self.T}")
        if not np.all(np.isfinite(self.mse[t])):
            raise ValueError(f"step(s) {sorted(set(t[~np.isfinite(self.mse[t])].tolist()))[:5]} were not evaluated")
        out = np.array(self.decoder[t], dtype=np.float64)
        k = s > 0
        if np.any(k):
            c, kappa = edge_coefficients(self.abar, s[k], t[k], variance)
            out[k] = self.dim * c + kappa * self.mse[t[k]]
        return out

    def cost_matrix(self, variance: str = "small") -> tuple[np.ndarray, np.ndarray]:
        """(C, nodes): the (G, G) edge costs in sampling order for :func:`~dpmsched.optimize.dp.shortest_paths`.

        ``nodes`` (G,) = [T, …, (evaluated steps descending), 0]; C[a, b] = L(nodes[a], nodes[b]) for a < b,
        +inf elsewhere.  G = (number of evaluated steps) + 1.
        """
        nodes = np.concatenate([self.steps[::-1], [0]])
        a, b = np.triu_indices(nodes.size, k=1)
        C = np.full((nodes.size, nodes.size), np.inf)
        C[a, b] = self.edge_cost(nodes[b], nodes[a], variance)
        return C, nodes

    def nelbo(self, path, variance: str = "small") -> float:
        """−ELBO of ``path`` (eq. 7.1), nats per image."""
        p = check_path(path, self.T)
        return float(self.prior + self.edge_cost(p[:-1], p[1:], variance).sum())

    def bits_per_dim(self, path, variance: str = "small") -> float:
        """−ELBO/(d ln 2) of ``path``: a bound on the discrete data's bits per dimension."""
        return self.nelbo(path, variance) / (self.dim * math.log(2.0))

    def full_path(self) -> np.ndarray:
        """All evaluated steps: the T-step path when every step was evaluated."""
        return np.concatenate([[0], self.steps])

    # -- I/O (JSON: floats round-trip exactly; NaN → null) -------------------------------------------
    def to_dict(self) -> dict:
        def arr(v):
            return [None if not np.isfinite(x) else float(x) for x in v]

        return {"abar": arr(self.abar), "mse": arr(self.mse), "decoder": arr(self.decoder),
                "prior": self.prior, "dim": self.dim, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "ELBOTerms":
        try:
            def arr(v):
                return np.array([np.nan if x is None else x for x in v], dtype=np.float64)

            return cls(arr(d["abar"]), arr(d["mse"]), arr(d["decoder"]), d["prior"], d["dim"], d.get("meta"))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not an ELBO terms file: {e}") from None

    def save(self, path) -> None:
        """Write as JSON, atomically."""
        from ..checkpoints import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path) -> "ELBOTerms":
        from pathlib import Path

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"ELBO terms file {p} does not exist")
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{p} is not valid JSON: {e}") from None

    def __repr__(self) -> str:
        return (f"ELBOTerms(T={self.T}, evaluated={self.steps.size}, d={self.dim}, "
                f"split={self.meta.get('split')!r}, n={self.meta.get('n')})")


def _step_seed(seed: int, t: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(t)]).generate_state(1, dtype=np.uint64)[0] >> 1)


@torch.no_grad()
def estimate_terms(model, data: torch.Tensor, *, steps=None, clip: bool = True, levels: int = 17,
                   batch: int = 512, seed: int = 0, progress: bool = False, meta: dict | None = None) -> ELBOTerms:
    """Estimate M(t), L(t, 0) and L_prior on ``data`` with one network pass per step t (§7.2, "O(T)").

    ``model``: a discrete ε-prediction DDPM with ``.eps(x_t, n)`` and ``.noise`` (a DiscreteVP), e.g.
    ``denoisers.load("digits-ddpm")``; any other denoiser is wrapped by :func:`as_ddpm`.
    ``data`` (N, *event) on the ``levels``-level grid of [−1, 1].  ``steps``: the Ho steps in 1..T to
    evaluate (default all; T is always added).  For each t, the same ε ~ N(0, I) (seeded by (seed, t))
    gives x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε, x̂0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t (clamped to [−1, 1] if ``clip``),
    and both M(t) and the decoder term.  Cost: |steps| × ⌈N/batch⌉ network calls.
    """
    eps_fn, noise = _eps_model(model)
    abar = alphas_bar(noise)
    T = abar.size - 1
    data = torch.as_tensor(data)
    if data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"data must have shape (N, *event) with N >= 1, got {tuple(data.shape)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    steps = np.arange(1, T + 1) if steps is None else np.asarray(steps, dtype=np.int64).ravel()
    if steps.size and (steps.min() < 1 or steps.max() > T):
        raise ValueError(f"steps must lie in 1..{T}")
    steps = np.union1d(steps, [T])
    x0_all = data.double()
    dtype = next((p.dtype for p in getattr(model, "parameters", lambda: iter(()))()), data.dtype)
    dtype = dtype if dtype.is_floating_point else torch.float32
    device = next((p.device for p in getattr(model, "parameters", lambda: iter(()))()), torch.device("cpu"))
    mse, dec = np.full(T + 1, np.nan), np.full(T + 1, np.nan)
    n_img = x0_all.shape[0]
    t0 = time.perf_counter()
    it = steps
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(steps, desc="ELBO terms", leave=False)
    for t in it:
        g = torch.Generator().manual_seed(_step_seed(seed, t))
        a = float(abar[t])
        var_dec = decoder_variance(abar, int(t))
        m_sum, d_sum = 0.0, 0.0
        for i in range(0, n_img, batch):
            x0 = x0_all[i:i + batch]
            e = torch.randn(x0.shape, generator=g, dtype=torch.float64)
            x_t = math.sqrt(a) * x0 + math.sqrt(1.0 - a) * e
            n = torch.full((x0.shape[0],), float(t - 1), dtype=dtype, device=device)
            e_hat = eps_fn(x_t.to(device=device, dtype=dtype), n).double().cpu()
            x0_hat = (x_t - math.sqrt(1.0 - a) * e_hat) / math.sqrt(a)
            if clip:
                x0_hat = x0_hat.clamp(-1.0, 1.0)
            m_sum += float(((x0 - x0_hat) ** 2).reshape(x0.shape[0], -1).sum(1).sum())
            d_sum += float(discretized_gaussian_nll(x0, x0_hat, var_dec, levels).sum())
        if not (math.isfinite(m_sum) and math.isfinite(d_sum)):
            raise FloatingPointError(f"non-finite ELBO term at step t = {t}")
        mse[t], dec[t] = m_sum / n_img, d_sum / n_img
    prior = float(prior_kl(x0_all, float(abar[T])).mean())
    info = {"n": n_img, "seed": int(seed), "clip": bool(clip), "levels": int(levels),
            "passes": int(steps.size), "seconds": time.perf_counter() - t0,
            "model": getattr(model, "name", type(model).__name__)}
    info.update(meta or {})
    return ELBOTerms(abar, mse, dec, prior, int(x0_all[0].numel()), info)


def cached_terms(path, model, data, **kw) -> ELBOTerms:
    """:func:`estimate_terms`, cached in the JSON file ``path`` (written atomically).

    The file is reused only if its ``meta["key"]`` equals this call's key (model name, its weights'
    sha256 if known, the data's shape and checksum, and every keyword), else recomputed and rewritten.
    ``path = ""`` disables the cache.
    """
    from pathlib import Path

    import hashlib

    data = torch.as_tensor(data)
    cfg = getattr(model, "config", None) or {}
    key = {"model": getattr(model, "name", type(model).__name__), "weights": cfg.get("sha256", ""),
           "data": [list(data.shape), hashlib.sha256(data.double().numpy().tobytes()).hexdigest()[:16]],
           **{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in kw.items() if k not in ("progress", "meta")}}
    key = json.loads(json.dumps(key))
    if path and Path(path).is_file():
        try:
            terms = ELBOTerms.load(path)
            if terms.meta.get("key") == key:
                return terms
        except ValueError:
            pass                                   # unreadable cache: recompute and overwrite
    meta = {**kw.pop("meta", {}), "key": key}
    terms = estimate_terms(model, data, meta=meta, **kw)
    if path:
        terms.save(path)
    return terms


# -- paths ---------------------------------------------------------------------------------------------
def check_path(path, T: int) -> np.ndarray:
    """Validate a path 0 = s_0 < … < s_K = T (int64 array); ValueError otherwise."""
    p = np.asarray(path)
    if p.ndim != 1 or p.size < 2 or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"a path is a 1-D integer array 0 = s_0 < ... < s_K = T, got {path!r}")
    p = p.astype(np.int64)
    if p[0] != 0 or p[-1] != T or np.any(np.diff(p) <= 0):
        raise ValueError(f"a path must increase strictly from 0 to T = {T}, got {p.tolist()[:8]}...")
    return p


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
    from .dp import shortest_paths

    ks = [int(k) for k in ks]
    C, nodes = terms.cost_matrix(variance)
    if not ks or min(ks) < 1 or max(ks) > nodes.size - 1:
        raise ValueError(f"budgets must lie in 1..{nodes.size - 1} (the number of evaluated steps), got {ks}")
    res = shortest_paths(C, max(ks))
    return {k: (nodes[res.path(k)][::-1].copy(), res.cost(k) + terms.prior) for k in ks}


def path_to_schedule(path, noise, name: str = "elbo-dp", meta: dict | None = None):
    """The sampling :class:`~dpmsched.schedules.Schedule` of a path: σ of the training indices
    s_K − 1 > … > s_1 − 1, then a final jump to σ = 0 (K steps; the Ho steps are in ``meta["path"]``)."""
    from ..schedules import Schedule

    p = check_path(path, noise.T)
    sched = Schedule._from_discrete(p[1:] - 1, noise, name, final_zero=True)
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
    from ..data import DIGITS_LEVELS, digits

    _, noise = _eps_model(model)
    grid = candidate_steps(noise.T, candidates)
    train = digits("train", dtype=torch.float64)
    if n_train:
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
def table_terms(model, ks, *, n_train: int = 0, n_test: int = 0, candidates: int = 0, clip: bool = True,
                seed: int = 0, cache_dir: str = "", batch: int = 512, progress: bool = False):
    """The candidate steps and the train/test ELBO terms of Watson's table (§7.3–7.4), cached.

    Candidates S: :func:`candidate_steps` (``candidates`` of them, 0 = all T) plus every step of the even and
    quadratic paths of each K in ``ks`` (so the DP can always pick them).  Terms on the first ``n_train`` train
    images (0 = all) with ``seed`` — the DP's input — and on the first ``n_test`` test images (0 = all) with
    ``seed + 1`` — the evaluation; cached in ``cache_dir/elbo-terms-<model>-<split>.json`` ('' = off).
    Returns ``(S, train_terms, test_terms)``; |S| network passes per split.
    """
    from pathlib import Path

    from ..data import DIGITS_LEVELS, digits

    ks = [int(k) for k in ks]
    _, noise = _eps_model(model)
    T = noise.T
    if not ks or min(ks) < 1 or max(ks) > T:
        raise ValueError(f"ks must lie in 1..{T}, got {ks}")
    cand = candidate_steps(T, candidates)
    for k in ks:
        cand = np.union1d(cand, np.concatenate([stride_path(T, k, 1.0)[1:], stride_path(T, k, 2.0)[1:]]))
    name = str(getattr(model, "name", "model")).replace("/", "_")

    def terms(split, n, s):
        x = digits(split, dtype=torch.float64)
        x = x[:n] if n else x
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
    from ..data import DIGITS_LEVELS

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


def cli_elbo_table(argv: list[str]) -> int:
    """``python -m dpmsched elbo-table --model digits-ddpm --ks 2,4,8,16,32,64 --out FILE.json``

    Writes the test-split bits/dim of the even, quadratic and DP paths (lists aligned with ``ks``) and the
    ``full`` T-step value, atomically; the train/test ELBO terms are cached in ``--cache-dir``.
    """
    import argparse

    from ..checkpoints import atomic_write_text

    p = argparse.ArgumentParser(prog="python -m dpmsched elbo-table", description=cli_elbo_table.__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="digits-ddpm", help="a discrete ε-DDPM, or an EDM denoiser (wrapped, T=1000)")
    p.add_argument("--ks", default="2,4,8,16,32,64", help="comma-separated step budgets K")
    p.add_argument("--variance", default="small", choices=VARIANCES, help="reverse-kernel variance")
    p.add_argument("--candidates", type=int, default=0, help="candidate steps, quadratically spaced (0 = all T)")
    p.add_argument("--n-train", type=int, default=0, help="train images for the DP (0 = all 1437)")
    p.add_argument("--n-test", type=int, default=0, help="test images for the evaluation (0 = all 360)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the estimation")
    p.add_argument("--no-clip", action="store_true", help="do not clamp x0-predictions to [-1, 1]")
    p.add_argument("--cache-dir", default="runs/elbo-cache", help="where the ELBO terms are cached ('' = off)")
    p.add_argument("--out", required=True, help="output JSON file")
    a = p.parse_args(argv)
    try:
        ks = [int(k) for k in a.ks.split(",") if k.strip()]
    except ValueError:
        raise SystemExit(f"--ks expects comma-separated integers, got {a.ks!r}") from None
    res = elbo_table(load_ddpm(a.model), ks, variance=a.variance, n_train=a.n_train, n_test=a.n_test, candidates=a.candidates,
                     clip=not a.no_clip, seed=a.seed, cache_dir=a.cache_dir, progress=True)
    atomic_write_text(a.out, json.dumps(res, indent=1))
    for k, e, q, d in zip(res["ks"], res["even"], res["quadratic"], res["dp"]):
        print(f"K={k:>4}  even {e:.4f}  quadratic {q:.4f}  dp {d:.4f}  bits/dim")
    print(f"full ({res['candidates']} steps): {res['full']:.4f} bits/dim -> wrote {a.out}")
    return 0


# -- samples along a path (for "ELBO-optimal ≠ sample-quality-optimal") --------------------------------
def clamped(denoiser):
    """The denoiser with x̂0 clamped to [−1, 1]: the mean function whose ELBO ``estimate_terms(clip=True)`` computes."""
    def den(x, sigma):
        return denoiser(x, sigma).clamp(-1.0, 1.0)

    for a in ("event_shape", "sigma_min", "sigma_max", "name", "noise"):
        if hasattr(denoiser, a):
            setattr(den, a, getattr(denoiser, a))
    return den


@torch.no_grad()
def sample_schedule(model, schedule, n: int, *, solver: str = "ddpm_ancestral", seed: int = 0, clip: bool = True,
                    batch: int = 1024, z: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` samples (n, *event) of ``model`` along ``schedule`` (e.g. from :func:`path_to_schedule`).

    ``solver="ddpm_ancestral"`` with the posterior variance is exactly the generative model whose "small"
    ELBO the DP optimises (the last jump outputs the decoder's mean x̂0); ``"euler"`` is deterministic DDIM.
    The noise x_T = σ_0 z (``z`` (n, *event) if given) and the solver's noise come from ``seed``, so two
    schedules see the same z.
    """
    from .. import solvers

    fn = solvers.get(solver)
    den = clamped(model) if clip else model
    g = torch.Generator().manual_seed(int(seed))
    dtype = next((p.dtype for p in getattr(model, "parameters", lambda: iter(()))()), torch.float64)
    if z is None:
        z = torch.randn(int(n), *model.event_shape, generator=g, dtype=dtype)
    elif z.shape[0] != n:
        raise ValueError(f"z must have {n} rows, got {tuple(z.shape)}")
    out = []
    for i in range(0, int(n), batch):
        kw = {"generator": g} if solver in ("ddpm_ancestral", "ddim", "sa_solver") else {}
        out.append(fn(den, float(schedule.sigmas[0]) * z[i:i + batch], schedule, **kw))
    return torch.cat(out)


def sample_quality(model, schedules: dict, n: int = 512, *, seed: int = 0, n_ref: int = 256, ref_steps: int = 32) -> dict:
    """Sample quality of each schedule (name → Schedule ending in σ = 0) for a digits DDPM.

    Returns name → ``{"fd_ancestral", "fd_ddim", "trunc_ddim"}``: the Fréchet-digits distance to the test split
    (:func:`dpmsched.metrics.frechet_digits`) of ``n`` samples of :func:`sample_schedule` with the ancestral
    sampler and with DDIM (same noise for every schedule), and the RMSE of DDIM on ``n_ref`` of those noises
    against an accurate PF-ODE solve (``solvers.reference`` with ``ref_steps`` RK4 steps down to the table's
    σ_min, then the same final jump x ← x̂0).  All with x̂0 clamped to [−1, 1].
    """
    from .. import metrics, solvers

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
        anc = sample_schedule(model, sched, n, solver="ddpm_ancestral", seed=seed, z=z)
        det = sample_schedule(model, sched, n, solver="euler", seed=seed, z=z)
        out[name] = {"fd_ancestral": metrics.frechet_digits(anc)["fd"], "fd_ddim": metrics.frechet_digits(det)["fd"],
                     "trunc_ddim": metrics.truncation_error(det[:m], ref), "samples": anc}
    return out
