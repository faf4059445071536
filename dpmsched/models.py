"""Every model by name: the closed-form denoisers, the shipped checkpoints and local diffusers folders.

``load("digits-edm")`` (a shipped checkpoint, :mod:`dpmsched.checkpoints`), ``load("toy2d-ring")`` (an exact
denoiser of :data:`EXACT_MODELS`), ``load("path/to/folder")`` (a checkpoint folder, or a diffusers
``UNet2DModel`` folder through :func:`dpmsched.adapters.load_diffusers`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoints
from .adapters import is_diffusers_folder, load_diffusers
from .data import digits, mixture_2d
from .denoisers.exact import Empirical, Gaussian
from .denoisers.guidance import as_tuned

__all__ = ["load", "EXACT_MODELS", "exact_model", "names"]


def _digits_empirical():
    return Empirical(digits("train", dtype=torch.float64))


#: closed-form models available by name (no checkpoint needed)
EXACT_MODELS = {
    "digits-empirical": _digits_empirical,            # the ideal denoiser of the digits train split (M = 1437)
    "toy2d-ring": lambda: mixture_2d("ring"),         # 8 Gaussians on a circle (the data of toy2d-edm)
    "toy2d-grid": lambda: mixture_2d("grid"),         # 3×3 grid of Gaussians
    "gauss1d": lambda: Gaussian(0.5, dim=1),          # N(0, 0.5²) in 1-D: closed-form PF-ODE
}


def exact_model(name: str):
    """The closed-form model ``name`` of :data:`EXACT_MODELS` (with ``name`` and EDM's σ range set)."""
    if name not in EXACT_MODELS:
        raise ValueError(f"unknown exact model {name!r}; expected one of {sorted(EXACT_MODELS)}")
    m = EXACT_MODELS[name]()
    m.name, m.sigma_min, m.sigma_max = name, 0.002, 80.0
    return m


def names() -> list[str]:
    """Every name :func:`load` accepts without a path: exact models and shipped checkpoints."""
    return sorted(EXACT_MODELS) + checkpoints.shipped_models()


def load(name_or_path, device="cpu"):
    """A ready denoiser by name: an exact model of :data:`EXACT_MODELS`, else a trained checkpoint
    (a shipped name such as ``"digits-edm"`` or a folder) through :func:`dpmsched.checkpoints.load_model`;
    a local diffusers folder (``model_index.json``, or ``config.json`` + ``scheduler_config.json``) goes
    through :func:`dpmsched.adapters.load_diffusers`.

    The result has ``event_shape``, ``sigma_min``, ``sigma_max`` and ``name`` attributes.  A checkpoint finetuned
    with classifier-free guidance comes back guided as it was tuned (:func:`dpmsched.denoisers.guidance.as_tuned`).
    """
    key = str(name_or_path)
    if key in EXACT_MODELS:
        return exact_model(key)
    if is_diffusers_folder(key):
        return load_diffusers(key, device=device)
    if not Path(key).exists() and key not in checkpoints.shipped_models():
        raise ValueError(f"unknown model {key!r}; expected an exact model {sorted(EXACT_MODELS)}, "
                         f"a shipped checkpoint {checkpoints.shipped_models()} or a folder")
    return as_tuned(checkpoints.load_model(key, device=device))
