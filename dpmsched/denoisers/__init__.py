"""The one Denoiser interface and its implementations.  (DESIGN.md §2)

A denoiser is any callable ``D(x, sigma) -> Tensor`` in EDM coordinates: ``x = x0 + σ ε`` of shape
(B, *event_shape), ``sigma`` a float, a 0-d tensor or a (B,) tensor of noise levels, and the result
(same shape and dtype as ``x``) is the estimate of E[x0 | x].  Everything else (ε-/v-prediction,
VP time, discrete indices) is an adapter around it.

Submodules are imported lazily so that ``import dpmsched`` stays light.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["Denoiser", "sigma_like"]


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
