"""Phase-2 losses and their step weights λ_i.  (docs/math.md §3.5)"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import solvers
from ..schedules import Schedule
from ..theory import convex_weights

__all__ = ["WEIGHTS", "LOSSES", "SIGMA_DATA", "edm_loss_weight", "edm_effective_weight", "step_weights", "dsm_loss",
           "distill_loss"]

WEIGHTS = ("convex", "convex-sq", "uniform", "edm")
LOSSES = ("dsm", "distill")
SIGMA_DATA = 0.5

# -- the weights λ_i (§3.5) -----------------------------------------------------------------------
def edm_loss_weight(sigma, sigma_data: float = SIGMA_DATA) -> np.ndarray:
    """EDM's loss weight λ_EDM(σ) = (σ² + σ_d²)/(σ σ_d)² = 1/c_out(σ)² (§0.1); σ array in EDM units."""
    s = np.asarray(sigma, dtype=np.float64)
    if not (np.all(np.isfinite(s)) and np.all(s > 0)):
        raise ValueError("edm_loss_weight needs finite sigma > 0")
    return (s**2 + sigma_data**2) / (s * sigma_data) ** 2


def edm_effective_weight(sigma, p_mean: float = -1.2, p_std: float = 1.2,
                         sigma_data: float = SIGMA_DATA) -> np.ndarray:
    """EDM's effective training weight per unit ln σ: λ_EDM(σ) · N(ln σ; P_mean, P_std²)  (§3.5).

    (EDM draws ln σ ~ N(−1.2, 1.2²); the product is how much each noise level counts in its loss.)
    """
    s = np.asarray(sigma, dtype=np.float64)
    dens = np.exp(-0.5 * ((np.log(s) - p_mean) / p_std) ** 2) / (p_std * math.sqrt(2 * math.pi))
    return edm_loss_weight(s, sigma_data) * dens


def step_weights(schedule, kind: str = "convex", sigma_data: float = SIGMA_DATA) -> np.ndarray:
    """λ_i for the N denoiser calls of ``schedule`` (σ_0..σ_{N−1}), float64 (N,), summing to 1.  §3.5.

    ``kind`` is one of :data:`WEIGHTS` (see the module docstring).
    """
    s = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    if kind == "uniform":
        lam = np.ones(s.steps)
    elif kind in ("convex", "convex-sq"):
        lam = convex_weights(s)[1]
        lam = lam**2 if kind == "convex-sq" else lam
    elif kind == "edm":
        lam = edm_loss_weight(s.sigmas[:-1], sigma_data)
    else:
        raise ValueError(f"unknown step weights {kind!r}; expected one of {WEIGHTS}")
    return lam / lam.sum()


# -- the two losses ---------------------------------------------------------------------------------
def dsm_loss(model, x0: torch.Tensor, eps: torch.Tensor, sigmas, lam) -> torch.Tensor:
    """Phase-2 DSM loss (§3.5) of one batch, stratified over the schedule's noise levels.

    ``x0`` (B, *event) clean data; ``eps`` (B, N, *event) standard normal noise; ``sigmas`` (N,) the σ*_i of
    the N denoiser calls; ``lam`` (N,) their weights.  Returns the 0-d tensor
    (1/B) Σ_b Σ_i λ_i ‖D(x0_b + σ_i ε_bi; σ_i) − x0_b‖²/d  (one network call on B·N rows).
    """
    B, N = eps.shape[:2]
    if eps.shape[0] != x0.shape[0] or eps.shape[2:] != x0.shape[1:]:
        raise ValueError(f"eps must have shape (B, N, *event) = ({x0.shape[0]}, N, "
                         f"{', '.join(map(str, x0.shape[1:]))}), got {tuple(eps.shape)}")
    sig = torch.as_tensor(np.array(sigmas, dtype=np.float64), dtype=x0.dtype, device=x0.device)
    w = torch.as_tensor(np.array(lam, dtype=np.float64), dtype=x0.dtype, device=x0.device)
    if sig.shape != (N,) or w.shape != (N,):
        raise ValueError(f"sigmas and lam must have shape ({N},), got {tuple(sig.shape)}, {tuple(w.shape)}")
    X0 = x0[:, None].expand(eps.shape).reshape(B * N, *x0.shape[1:])
    S = sig.repeat(B)                                                       # row b·N + i has σ_i
    xs = X0 + S.reshape(-1, *([1] * (x0.ndim - 1))) * eps.reshape(B * N, *x0.shape[1:])
    mse = ((model(xs, S) - X0) ** 2).reshape(B, N, -1).mean(-1)             # (B, N)
    return (mse * w).sum(1).mean()


def distill_loss(model, z: torch.Tensor, x_ref: torch.Tensor, schedule, solver: str = "euler") -> torch.Tensor:
    """Alternative Phase-2 reading (§3.5): ‖Solver_σ*(σ_0 z; θ) − x_ref‖²/d averaged over the batch.

    ``z`` (B, *event) standard normal latents, ``x_ref`` (B, *event) the teacher's accurate solve from the same
    z; the gradient flows through every network call of the few-step solve.
    """
    s = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    x = solvers.get(solver)(model, z * float(s.sigmas[0]), s)
    return ((x - x_ref) ** 2).reshape(z.shape[0], -1).mean(1).mean()

