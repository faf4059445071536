"""VP models (ε-, v- or x0-prediction; discrete or continuous time) as EDM denoisers.  (docs/math.md §0.1, §0.4)

A VP network sees ``x_t = α_t x0 + σ_t ε`` at time t.  In EDM coordinates ``x̃ = x_t/α_t = x0 + σ ε``
with ``σ = σ_t/α_t``, so for an EDM level σ:

    α = 1/√(1+σ²),  σ_t = σ α,  x_t = α x̃,  t = t(σ)   (through λ = −log σ, §0.4)
    ε-prediction:  x̂0 = (x_t − σ_t ε̂)/α = x̃ − σ ε̂
    v-prediction:  x̂0 = α x_t − σ_t v̂            (v = α ε − σ_t x0)
    x0-prediction: x̂0 = output

This module is the one place that conversion lives; the shipped DDPM and the diffusers adapter both
use it.  All time conversions are torch ops, so the result is differentiable in σ.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..noise import DiscreteVP, LinearVP
from . import sigma_like

__all__ = ["VPDenoiser", "PREDICTIONS"]

PREDICTIONS = ("epsilon", "v_prediction", "sample")


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation like numpy.interp (xp increasing), clamped at the ends."""
    x = x.clamp(xp[0], xp[-1])
    j = torch.searchsorted(xp, x.detach(), right=True).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[j - 1], xp[j], fp[j - 1], fp[j]
    return f0 + (x - x0) * (f1 - f0) / (x1 - x0)


class VPDenoiser(torch.nn.Module):
    """Wrap ``model(x_t, t) -> output`` of a VP diffusion model as an EDM denoiser ``D(x̃, σ)``.

    Parameters
    ----------
    model : callable (x_t (B, *event), t (B,)) → (B, *event)
        The network.  For ``noise=DiscreteVP`` it receives the continuous step index
        ``T·(t − 1/T)`` ∈ [0, T−1] (DPM-Solver's "discrete" input); for ``LinearVP`` the time t ∈ [t_min, 1],
        multiplied by ``time_scale`` (e.g. 1000 for score-SDE checkpoints trained on 1000·t).
    noise : DiscreteVP | LinearVP
    prediction : "epsilon" | "v_prediction" | "sample"
    event_shape : tuple
        Shape of one sample, for samplers that need to draw z.

    The usable σ range is the model's: ``sigma_min``/``sigma_max`` from the table or the time range.
    """

    def __init__(self, model: Callable, noise, prediction: str = "epsilon", event_shape=(), time_scale: float = 1.0,
                 name: str = "vp-model"):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
        if not isinstance(noise, (DiscreteVP, LinearVP)):
            raise ValueError(f"noise must be a DiscreteVP or LinearVP, got {type(noise).__name__}")
        self.model = model
        self.noise = noise
        self.prediction = prediction
        self.event_shape = tuple(event_shape)
        self.time_scale = float(time_scale)
        self.name = name
        if isinstance(noise, DiscreteVP):
            sig = noise.sigmas
            self.sigma_min, self.sigma_max = float(sig[0]), float(sig[-1])
            # λ_n of the grid points, increasing when read from n = T−1 down to 0
            t_grid = (np.arange(noise.T) + 1.0) / noise.T
            la = 0.5 * np.log(noise.alphas_cumprod)
            self.register_buffer("_la_rev", torch.as_tensor(la[::-1].copy()), persistent=False)
            self.register_buffer("_t_rev", torch.as_tensor(t_grid[::-1].copy()), persistent=False)
        else:
            self.sigma_min = float(noise.sigma(noise.t_min))
            self.sigma_max = float(noise.sigma(noise.t_max))

    def model_time(self, sigma: torch.Tensor) -> torch.Tensor:
        """The network's time input for EDM level(s) σ (float64 tensor, differentiable)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        lam = -torch.log(sigma)
        log_alpha = -0.5 * torch.nn.functional.softplus(-2.0 * lam)
        if isinstance(self.noise, DiscreteVP):
            t = _interp(log_alpha, self._la_rev.to(sigma.device), self._t_rev.to(sigma.device))
            return self.noise.T * (t - 1.0 / self.noise.T)
        n = self.noise
        db = n.beta_1 - n.beta_0
        # closed-form inverse of log α_t = −¼t²(β_1−β_0) − ½tβ_0
        t = (-n.beta_0 + torch.sqrt(n.beta_0**2 - 4.0 * db * log_alpha)) / db
        return t * self.time_scale

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = sigma_like(sigma, x)                                   # (B, 1, …), x.dtype
        alpha = torch.rsqrt(1.0 + s**2)
        x_t = alpha * x
        t = self.model_time(s.reshape(-1).to(torch.float64)).to(x.dtype)
        out = self.model(x_t, t)
        if self.prediction == "epsilon":
            return x - s * out
        if self.prediction == "v_prediction":
            return alpha * x_t - (s * alpha) * out
        return out

    def eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε̂ in the model's own coordinates (for the discrete ELBO): the raw model for ε-prediction."""
        if self.prediction != "epsilon":
            raise NotImplementedError("eps() is only defined for epsilon-prediction models")
        return self.model(x_t, t)

    def extra_repr(self) -> str:
        return (f"prediction={self.prediction}, noise={type(self.noise).__name__}, "
                f"sigma=[{self.sigma_min:.4g}, {self.sigma_max:.4g}]")

