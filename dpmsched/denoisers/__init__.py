"""The one Denoiser interface and its implementations.  (DESIGN.md §2)

A denoiser is any callable ``D(x, sigma) -> Tensor`` in EDM coordinates: ``x = x0 + σ ε`` of shape
(B, *event_shape), ``sigma`` a float, a 0-d tensor or a (B,) tensor of noise levels, and the result
(same shape and dtype as ``x``) is the estimate of E[x0 | x].  Everything else (ε-/v-prediction,
VP time, discrete indices) is an adapter around it.

Every model that :func:`load` returns also carries ``event_shape`` (tuple), ``sigma_min`` and
``sigma_max`` (its σ range, floats) and ``name``, so that a sampler, an optimizer or the CLI can draw
``z`` and pick the schedule endpoints without knowing what kind of model it is.

Submodules are imported lazily so that ``import dpmsched`` stays light.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["Denoiser", "sigma_like", "load", "EXACT_MODELS"]


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


def _digits_empirical():
    from ..data import digits
    from .exact import Empirical

    return Empirical(digits("train", dtype=torch.float64))


def _ring():
    from ..data import mixture_2d

    return mixture_2d("ring")


def _grid():
    from ..data import mixture_2d

    return mixture_2d("grid")


def _gauss1d():
    from .exact import Gaussian

    return Gaussian(0.5, dim=1)


#: closed-form models available by name (no checkpoint needed)
EXACT_MODELS = {
    "digits-empirical": _digits_empirical,   # the ideal denoiser of the digits train split (M = 1437)
    "toy2d-ring": _ring,                     # 8 Gaussians on a circle (the data of toy2d-edm)
    "toy2d-grid": _grid,                     # 3×3 grid of Gaussians
    "gauss1d": _gauss1d,                     # N(0, 0.5²) in 1-D: closed-form PF-ODE
}


def load(name_or_path, device="cpu"):
    """A ready denoiser by name: an exact model of :data:`EXACT_MODELS`, else a trained checkpoint
    (a shipped name such as ``"digits-edm"`` or a folder) through ``dpmsched.checkpoints.load_model``;
    a local diffusers folder (``model_index.json``, or ``config.json`` + ``scheduler_config.json``) goes
    through :func:`dpmsched.denoisers.adapters.load_diffusers`.

    The result has ``event_shape``, ``sigma_min``, ``sigma_max`` and ``name`` attributes.
    """
    key = str(name_or_path)
    if key in EXACT_MODELS:
        m = EXACT_MODELS[key]()
        m.name, m.sigma_min, m.sigma_max = key, 0.002, 80.0
        return m
    from .adapters import is_diffusers_folder

    if is_diffusers_folder(key):                 # a local diffusers UNet2DModel folder (adapters.py)
        from .adapters import load_diffusers

        return load_diffusers(key, device=device)
    from .. import checkpoints

    if not hasattr(checkpoints, "load_model"):
        raise ValueError(f"unknown model {key!r}; expected one of {sorted(EXACT_MODELS)} "
                         "(trained checkpoints are not available in this version)")
    from pathlib import Path

    if not Path(key).exists() and not (checkpoints.DATA_DIR / key / checkpoints.CONFIG).is_file():
        shipped = sorted(q.parent.name for q in checkpoints.DATA_DIR.glob(f"*/{checkpoints.CONFIG}"))
        raise ValueError(f"unknown model {key!r}; expected an exact model {sorted(EXACT_MODELS)}, "
                         f"a shipped checkpoint {shipped} or a folder")
    return checkpoints.load_model(key, device=device)
