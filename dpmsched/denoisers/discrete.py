"""An exact denoiser for *discrete* data: a mixture of factorized categoricals on a grid of grey levels.

The digits are 8×8 images with 17 grey levels.  A Gaussian mixture has a closed-form denoiser but no
notion of the grid, so its small-noise behaviour is wrong for such data.  This model is discrete:

    p(x) = Σ_k w_k Π_d π_{k,d,x_d},        x_d ∈ {v_0, …, v_{L−1}} (L levels equally spaced in [−1, 1])

(a "latent class" model; fitted by EM with Dirichlet smoothing), and for y = x + σε everything is closed form:

    log A_{k,d}(y) = log Σ_j π_{k,d,j} N(y_d; v_j, σ²),     r_k(y) ∝ w_k Π_d A_{k,d}(y)
    D(y, σ) = E[x | y] = Σ_k r_k(y) · (Σ_j v_j π_{k,d,j} N(y_d; v_j, σ²) / A_{k,d}(y))_d          (Tweedie)

Its exact log-likelihood :meth:`log_pmf` is what a diffusion ELBO built on this denoiser bounds from above,
and :meth:`sample` draws exact samples (the floor of any sampler's sample quality).
"""
from __future__ import annotations

import math

import torch

from . import sigma_like

__all__ = ["FactorizedMixture"]


class FactorizedMixture:
    """Σ_k w_k Π_d Categorical(π_{k,d}) over ``levels`` values in [−1, 1] per coordinate.

    ``weights`` (K,) and ``probs`` (K, d, L) are normalised here; ``event_shape`` defaults to (d,).
    The denoiser computes in float64 and returns ``x.dtype``; ``chunk`` rows at a time.
    """

    def __init__(self, weights, probs, event_shape=None, chunk: int = 128):
        w = torch.as_tensor(weights, dtype=torch.float64)
        p = torch.as_tensor(probs, dtype=torch.float64)
        if p.ndim != 3 or w.shape != (p.shape[0],) or p.shape[2] < 2:
            raise ValueError(f"need weights (K,) and probs (K, d, L >= 2), got {tuple(w.shape)} and {tuple(p.shape)}")
        if not ((w > 0).all() and (p > 0).all()):
            raise ValueError("weights and probs must be > 0 (smooth the fit)")
        self.log_w = torch.log(w / w.sum())
        self.log_p = torch.log(p / p.sum(2, keepdim=True))
        self._p = torch.exp(self.log_p)
        self.levels = int(p.shape[2])
        self.values = torch.linspace(-1.0, 1.0, self.levels, dtype=torch.float64)
        self._pv = self._p * self.values
        d = int(p.shape[1])
        self.event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(self.event_shape) != d:
            raise ValueError(f"event_shape {self.event_shape} does not have {d} elements")
        self.chunk = int(chunk)

    # -- fitting ---------------------------------------------------------------------------------
    @classmethod
    def fit(cls, data: torch.Tensor, components: int = 20, levels: int = 17, iters: int = 60,
            alpha: float = 1.0, seed: int = 0) -> FactorizedMixture:
        """EM fit on ``data`` (N, *event) on the ``levels``-level grid; Dirichlet(α) smoothing of every π."""
        data = torch.as_tensor(data, dtype=torch.float64)
        idx = cls._indices(data.reshape(data.shape[0], -1), levels)            # (N, d)
        n, d = idx.shape
        onehot = torch.nn.functional.one_hot(idx, levels).double().reshape(n, d * levels)   # (N, d·L)
        g = torch.Generator().manual_seed(seed)
        r = torch.rand(n, components, generator=g, dtype=torch.float64)
        r /= r.sum(1, keepdim=True)
        for _ in range(int(iters)):
            nk = r.sum(0)                                                     # (K,)
            counts = (r.T @ onehot).reshape(components, d, levels)
            log_p = torch.log((counts + alpha) / (nk[:, None, None] + levels * alpha))
            log_w = torch.log((nk + alpha) / (n + components * alpha))
            r = torch.softmax(log_w[None] + onehot @ log_p.reshape(components, -1).T, dim=1)
        return cls(torch.exp(log_w), torch.exp(log_p), tuple(data.shape[1:]))

    @staticmethod
    def _indices(x: torch.Tensor, levels: int) -> torch.Tensor:
        k = (x + 1.0) * (levels - 1) / 2.0
        if (k - k.round()).abs().max() > 1e-5 or k.min() < -1e-5 or k.max() > levels - 1 + 1e-5:
            raise ValueError(f"data must lie on the {levels}-level grid of [-1, 1]")
        return k.round().long()

    # -- the model ----------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.log_p.shape[1])

    def log_pmf(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log P(x) (nats) of grid data x (B, *event), shape (B,)."""
        idx = self._indices(x.reshape(x.shape[0], -1).double(), self.levels)
        lp = self.log_p[:, torch.arange(self.dim)[None, :], idx]                # (K, B, d)
        return torch.logsumexp(self.log_w[:, None] + lp.sum(2), dim=0)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
        """``n`` exact samples (n, *event)."""
        k = torch.multinomial(torch.exp(self.log_w), n, replacement=True, generator=generator)
        p = torch.exp(self.log_p[k]).reshape(-1, self.levels)                  # (n·d, L)
        j = torch.multinomial(p, 1, generator=generator).reshape(n, self.dim)
        return self.values[j].reshape(n, *self.event_shape).to(dtype)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """D(x, σ) = E[x0 | x0 + σε = x] (see the module docstring), same shape and dtype as x."""
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"expected x of shape (B, {', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}")
        s = sigma_like(sigma, x).double().reshape(-1, 1, 1)
        if (s <= 0).any():
            raise ValueError("sigma must be > 0")
        y = x.reshape(x.shape[0], -1).double()
        out = []
        for i in range(0, y.shape[0], self.chunk):
            yi, si = y[i:i + self.chunk], s[i:i + self.chunk]
            log_n = -((yi[:, :, None] - self.values) ** 2) / (2.0 * si**2)      # (b, d, L)
            top = log_n.max(2, keepdim=True).values
            e = torch.exp(log_n - top)                                         # the nearest level has e = 1
            a = torch.einsum("bdl,kdl->bkd", e, self._p)                       # A_{k,d}·exp(−top): > 0
            mean_k = torch.einsum("bdl,kdl->bkd", e, self._pv) / a             # (b, K, d)
            r = torch.softmax(self.log_w[None] + torch.log(a).sum(2), dim=1)   # (b, K); top cancels
            out.append((r[:, :, None] * mean_k).sum(1))
        return torch.cat(out).reshape(x.shape).to(x.dtype)
