"""Closed-form ("ideal") denoisers D(x, σ) = E[x0 | x0 + σε = x].  (docs/math.md §0.1)

For data whose noisy marginals p_σ are known in closed form, Tweedie's formula gives the optimal
denoiser exactly:  D(x, σ) = x + σ² ∇_x log p_σ(x).  Three families:

* :class:`Gaussian` — x0 ~ N(μ, c² I):  D = μ + c²/(c²+σ²) (x − μ); the PF-ODE is linear and its
  solution is closed form, x(σ) = μ + (x(σ_a) − μ) √(σ²+c²)/√(σ_a²+c²)  (the theorem's lab).
* :class:`GaussianMixture` — Σ_k w_k N(μ_k, diag s_k²):  D = Σ_k r_k(x) (μ_k + s_k²/(s_k²+σ²)(x − μ_k)),
  with responsibilities r_k from a log-sum-exp.
* :class:`Empirical` — the uniform distribution on a finite data set {y_m}:  D = Σ_m softmax_m(−‖x−y_m‖²/2σ²) y_m.
  This is what a network trained to zero loss on that set would be; sampling with it reproduces
  training points.

All compute in float64 internally (stable from σ = 0.002 to σ = 80) and return ``x.dtype``.
Shapes: ``x`` is (B, *event_shape); ``sigma`` a float, 0-d or (B,) tensor.
"""
from __future__ import annotations

import math

import torch

from . import sigma_like

__all__ = ["Gaussian", "GaussianMixture", "Empirical"]


class _Exact:
    """Shared plumbing: event shape, float64 evaluation, score and log-density."""

    event_shape: tuple[int, ...]

    @property
    def dim(self) -> int:
        return int(math.prod(self.event_shape))

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != tuple(self.event_shape):
            raise ValueError(f"expected x of shape (B, {', '.join(map(str, self.event_shape))}), "
                             f"got {tuple(x.shape)}")
        return x.reshape(x.shape[0], -1).double()

    @staticmethod
    def _sig(sigma, x: torch.Tensor) -> torch.Tensor:
        return sigma_like(sigma, x).double().reshape(-1, 1)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return self._denoise(self._flat(x), self._sig(sigma, x)).reshape(x.shape).to(x.dtype)

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """log p_σ(x) of the noisy marginal, shape (B,), float64."""
        return self._log_prob(self._flat(x), self._sig(sigma, x))

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """∇_x log p_σ(x) = (D(x,σ) − x)/σ²  (Tweedie), same shape as x."""
        s = sigma_like(sigma, x)
        return (self(x, sigma) - x) / s**2


class Gaussian(_Exact):
    """x0 ~ N(mean, std² I) in ``dim`` dimensions (or ``event_shape``)."""

    def __init__(self, std: float = 0.5, dim: int = 1, mean: float = 0.0, event_shape=None):
        if not (std > 0 and math.isfinite(std)):
            raise ValueError(f"std must be finite and > 0, got {std!r}")
        self.std, self.mean = float(std), float(mean)
        self.event_shape = tuple(event_shape) if event_shape is not None else (int(dim),)

    def _denoise(self, x, s):
        c2 = self.std**2
        return self.mean + c2 / (c2 + s**2) * (x - self.mean)

    def _log_prob(self, x, s):
        var = self.std**2 + s**2
        return -0.5 * (((x - self.mean) ** 2) / var + torch.log(2 * math.pi * var)).sum(1)

    def ode_solution(self, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
        """Exact PF-ODE map from σ_from to σ_to:  μ + (x − μ)·√(σ_to²+c²)/√(σ_from²+c²)."""
        c2 = self.std**2
        return self.mean + (x - self.mean) * math.sqrt((sigma_to**2 + c2) / (sigma_from**2 + c2))

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
        return self.mean + self.std * torch.randn(n, *self.event_shape, generator=generator, dtype=dtype)


class GaussianMixture(_Exact):
    """Σ_k w_k N(μ_k, diag(s_k²)).

    Parameters
    ----------
    means : (K, d) array-like
    stds : float, (K,) or (K, d) array-like — per-component (isotropic or diagonal) standard deviations
    weights : (K,) array-like, positive; normalised here.  Default uniform.
    """

    def __init__(self, means, stds, weights=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(self.means.shape)}")
        K, d = self.means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.ndim == 0:
            stds = stds.expand(K)
        if stds.ndim == 1:
            stds = stds[:, None].expand(K, d)
        if tuple(stds.shape) != (K, d):
            raise ValueError(f"stds must be a scalar, (K,) or (K, d) = ({K}, {d}), got {tuple(stds.shape)}")
        if not (stds > 0).all():
            raise ValueError("stds must be > 0")
        self.stds = stds.contiguous()
        w = torch.ones(K, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (K,) or not (w > 0).all():
            raise ValueError(f"weights must be {K} positive numbers")
        self.weights = w / w.sum()
        self.event_shape = (d,)

    def _log_resp_terms(self, x, s):
        # x (B, d), s (B, 1) → log w_k + log N(x; μ_k, s_k² + σ²), shape (B, K), and var (B, K, d)
        var = self.stds[None] ** 2 + (s**2)[:, :, None]
        diff = x[:, None, :] - self.means[None]
        logn = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        return torch.log(self.weights)[None] + logn, var, diff

    def _denoise(self, x, s):
        logits, var, diff = self._log_resp_terms(x, s)
        r = torch.softmax(logits, dim=1)                                   # (B, K)
        post = self.means[None] + (self.stds[None] ** 2 / var) * diff       # (B, K, d)
        return (r[:, :, None] * post).sum(1)

    def _log_prob(self, x, s):
        logits, _, _ = self._log_resp_terms(x, s)
        return torch.logsumexp(logits, dim=1)

    @property
    def std(self) -> float:
        """Overall standard deviation per coordinate, √(E‖x0 − E x0‖²/d) (a σ_data)."""
        m = (self.weights[:, None] * self.means).sum(0)
        second = (self.weights[:, None] * (self.stds**2 + self.means**2)).sum(0)
        return float(torch.sqrt((second - m**2).mean()))

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k] * eps).to(dtype)


class Empirical(_Exact):
    """The ideal denoiser of a finite data set (uniform mixture of Dirac masses at ``data``).

    ``data``: (M, *event_shape) tensor.  ``chunk``: rows of x processed at a time (memory ≈ chunk·M floats).
    """

    def __init__(self, data: torch.Tensor, chunk: int = 1024):
        data = torch.as_tensor(data)
        if data.ndim < 2 or data.shape[0] < 1:
            raise ValueError(f"data must have shape (M, *event_shape) with M >= 1, got {tuple(data.shape)}")
        self.event_shape = tuple(data.shape[1:])
        self.data = data.reshape(data.shape[0], -1).double().contiguous()
        self._sq = (self.data**2).sum(1)
        self.chunk = int(chunk)

    def _logits(self, x, s):
        # −‖x − y_m‖²/(2σ²) via the expansion; float64 keeps it accurate down to σ = 0.002.
        d2 = (x**2).sum(1, keepdim=True) - 2.0 * x @ self.data.T + self._sq[None]
        return -d2.clamp_min(0.0) / (2.0 * s**2)

    def _denoise(self, x, s):
        out = []
        for i in range(0, x.shape[0], self.chunk):
            w = torch.softmax(self._logits(x[i:i + self.chunk], s[i:i + self.chunk]), dim=1)
            out.append(w @ self.data)
        return torch.cat(out)

    def _log_prob(self, x, s):
        d = self.data.shape[1]
        out = []
        for i in range(0, x.shape[0], self.chunk):
            si = s[i:i + self.chunk]
            lse = torch.logsumexp(self._logits(x[i:i + self.chunk], si), dim=1)
            out.append(lse - math.log(self.data.shape[0]) - 0.5 * d * torch.log(2 * math.pi * si[:, 0] ** 2))
        return torch.cat(out)

    @property
    def std(self) -> float:
        return float(self.data.std())
