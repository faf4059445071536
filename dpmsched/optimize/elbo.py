"""Watson et al. (2021): the decomposed ELBO of a discrete DDPM and its cost table.  (docs/math.md §7)

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

The DP (§7.3, :mod:`dpmsched.optimize.elbo_dp`) is :func:`dpmsched.optimize.dp.shortest_paths` on the sampling-order cost matrix (node 0 =
step T, last node = step 0): exact, all budgets K ≤ K_max in one O(K_max·G²) pass over the G candidate
steps.  Protocol (§7.3): estimate the terms on the train split, choose the path there, evaluate its
bits/dim on the test split.  bits/dim = −ELBO/(d ln 2), a bound on the *discrete* NLL of the
``levels``-level data (so log2(levels) bits/dim is what a uniform model scores).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..data import DIGITS_LEVELS, digits
from ..denoisers.discrete import FactorizedMixture
from ..denoisers.vp import VPDenoiser
from ..files import atomic_write_text, read_json
from ..models import load
from ..noise import DiscreteVP

__all__ = ["ELBOTerms", "VARIANCES", "alphas_bar", "jump_variances", "edge_coefficients", "gaussian_kl",
           "discretized_gaussian_nll", "decoder_variance", "prior_kl", "as_ddpm", "load_ddpm", "eps_model",
           "estimate_terms", "cached_terms", "check_path"]

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
    otherwise :func:`dpmsched.models.load` (``"digits-ddpm"`` …), an EDM denoiser wrapped by :func:`as_ddpm`.
    """
    if name == "digits-catmix":
        mix = FactorizedMixture.fit(digits("train", dtype=torch.float64), components=20, levels=DIGITS_LEVELS,
                                     alpha=1.0, seed=0)
        model = as_ddpm(mix, name=name)
        model.mixture = mix
        return model
    model = load(name)
    return model if hasattr(model, "eps") else as_ddpm(model)


def eps_model(model):
    """(ε-callable (x_t, n) → ε̂, DiscreteVP) of a DDPM; an EDM denoiser is wrapped by :func:`as_ddpm`."""
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
    def from_dict(cls, d: dict) -> ELBOTerms:
        try:
            def arr(v):
                return np.array([np.nan if x is None else x for x in v], dtype=np.float64)

            return cls(arr(d["abar"]), arr(d["mse"]), arr(d["decoder"]), d["prior"], d["dim"], d.get("meta"))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not an ELBO terms file: {e}") from None

    def save(self, path) -> None:
        """Write as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path) -> ELBOTerms:
        return cls.from_dict(read_json(path, "ELBO terms file"))

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
    eps_fn, noise = eps_model(model)
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


def check_path(path, T: int) -> np.ndarray:
    """Validate a path 0 = s_0 < … < s_K = T (int64 array); ValueError otherwise."""
    p = np.asarray(path)
    if p.ndim != 1 or p.size < 2 or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"a path is a 1-D integer array 0 = s_0 < ... < s_K = T, got {path!r}")
    p = p.astype(np.int64)
    if p[0] != 0 or p[-1] != T or np.any(np.diff(p) <= 0):
        raise ValueError(f"a path must increase strictly from 0 to T = {T}, got {p.tolist()[:8]}...")
    return p
