"""Sample-quality and error metrics.  (DESIGN.md §1; ALGORITHMS.md §9.4)

* :func:`truncation_error` — RMSE of a few-step solve against the reference solve from the same noise
  (what a schedule optimizer tries to minimise; in data units).
* :func:`sliced_wasserstein` — SW₂ between two sample sets (any dimension).
* :func:`gmm_nll` — exact negative log-likelihood of samples under a known mixture (nats per sample).
"""
from __future__ import annotations

import math

import torch

__all__ = ["truncation_error", "sliced_wasserstein", "gmm_nll"]


def _flat(x) -> torch.Tensor:
    x = torch.as_tensor(x).double()
    return x.reshape(x.shape[0], -1)


def truncation_error(x: torch.Tensor, x_ref: torch.Tensor, per_sample: bool = False):
    """RMSE √(mean (x − x_ref)²) over all samples and coordinates (data units).

    ``x``, ``x_ref``: (B, *event), the solver output and the reference solve from the same noise.
    With ``per_sample=True`` returns a (B,) tensor of per-sample RMSEs instead of a float.
    """
    if x.shape != x_ref.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(x_ref.shape)}")
    d2 = (_flat(x) - _flat(x_ref)) ** 2
    if not torch.isfinite(d2).all():
        raise ValueError("truncation_error got NaN/Inf samples")
    return d2.mean(1).sqrt() if per_sample else float(d2.mean().sqrt())


def _quantiles(v: torch.Tensor, n: int) -> torch.Tensor:
    """Empirical quantile function of each column of v (M, P) at (k + ½)/n, k = 0..n−1."""
    v = torch.sort(v, dim=0).values
    m = v.shape[0]
    pos = ((torch.arange(n, dtype=torch.float64) + 0.5) / n) * m - 0.5
    lo = pos.floor().clamp(0, m - 1).long()
    hi = (lo + 1).clamp(max=m - 1)
    t = (pos - lo.double()).clamp(0, 1)[:, None]
    return (1 - t) * v[lo] + t * v[hi]


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 256,
                       seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance √(E_θ W₂²(θᵀx, θᵀy)) over random unit directions θ.

    ``x`` (M, *event), ``y`` (M', *event); sets of different sizes are compared through their
    quantile functions.  Directions come from ``seed`` so repeated calls agree.
    """
    X, Y = _flat(x), _flat(y)
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"dimension mismatch: {X.shape[1]} vs {Y.shape[1]}")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(X.shape[1], n_projections, generator=g, dtype=torch.float64)
    theta /= theta.norm(dim=0, keepdim=True)
    n = max(X.shape[0], Y.shape[0])
    qx, qy = _quantiles(X @ theta, n), _quantiles(Y @ theta, n)
    return float(((qx - qy) ** 2).mean().sqrt())


def gmm_nll(samples: torch.Tensor, mixture) -> float:
    """Mean −log p(x) (nats) of ``samples`` (B, d) under an exact mixture (``.log_prob(x, 0)``)."""
    lp = mixture.log_prob(torch.as_tensor(samples).double(), 0.0)
    return float(-lp.mean())
