"""The one Denoiser interface and its implementations.

A denoiser is any callable ``D(x, sigma) -> Tensor`` in EDM coordinates: ``x = x0 + σ ε`` of shape
(B, *event_shape), ``sigma`` a float, a 0-d tensor or a (B,) tensor of noise levels, and the result
(same shape and dtype as ``x``) is the estimate of E[x0 | x].  Everything else (ε-/v-prediction,
VP time, discrete indices) is an adapter around it.

Every model that :func:`dpmsched.models.load` returns also carries ``event_shape`` (tuple), ``sigma_min``
and ``sigma_max`` (its σ range, floats) and ``name``, so that a sampler, an optimizer or the CLI can draw
``z`` and pick the schedule endpoints without knowing what kind of model it is (:func:`model_range`,
:func:`event_shape`).

Submodules: ``exact`` (closed-form denoisers), ``nets`` (the trained networks), ``vp`` (VP ε/v/x0 models in
EDM coordinates), ``discrete`` (the exact discrete-data companion), ``guidance`` (classifier-free guidance:
:func:`~dpmsched.denoisers.guidance.guided`).  Loading by name lives one layer up,
in :mod:`dpmsched.models`; diffusers models in :mod:`dpmsched.adapters`.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["Denoiser", "sigma_like", "model_range", "event_shape"]


@runtime_checkable
class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor: ...


def sigma_like(sigma, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a noise level to shape (B, 1, …, 1) matching ``x`` (B, *event), in ``x.dtype``.

    ``sigma`` may be a Python float, a 0-d tensor, or a (B,) tensor.  Raises ValueError on a wrong
    length or a negative/non-finite value.
    """
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.ndim != 1 or s.shape[0] != x.shape[0]:
        raise ValueError(f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(s.shape)}")
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError("sigma must be finite and >= 0")
    return s.reshape(-1, *([1] * (x.ndim - 1)))


def model_range(model) -> tuple[float, float]:
    """(σ_min, σ_max) the model declares (default 0.002, 80: EDM's range)."""
    return float(getattr(model, "sigma_min", 0.002)), float(getattr(model, "sigma_max", 80.0))


def event_shape(model) -> tuple[int, ...]:
    """The shape of one sample of ``model``; TypeError when it does not declare one."""
    shape = getattr(model, "event_shape", None)
    if shape is None:
        raise TypeError("the model needs an `event_shape` attribute (models from dpmsched.models.load have one)")
    return tuple(shape)
