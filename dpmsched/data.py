"""Offline data: 2-D toy mixtures with exact denoisers, and sklearn's 8×8 digits.

Nothing is downloaded: the digits ship with scikit-learn.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .denoisers.exact import GaussianMixture

__all__ = ["mixture_2d", "MIXTURES", "digits", "DIGITS_LEVELS", "DIGITS_TEST_SIZE", "DIGITS_SPLIT_SEED"]

#: digits pixels are integers 0..16: 17 grey levels, mapped to x/8 − 1 ∈ [−1, 1] (bin width 1/8)
DIGITS_LEVELS = 17
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0


def _ring(n_modes: int = 8, radius: float = 1.0, std: float = 0.1):
    a = 2 * math.pi * np.arange(n_modes) / n_modes
    return np.stack([radius * np.cos(a), radius * np.sin(a)], 1), std


def _grid(side: int = 3, spacing: float = 1.0, std: float = 0.1):
    c = (np.arange(side) - (side - 1) / 2) * spacing
    xx, yy = np.meshgrid(c, c, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], 1), std


MIXTURES = {"ring": _ring, "grid": _grid}


def mixture_2d(kind: str = "ring", **kw) -> GaussianMixture:
    """A 2-D Gaussian mixture with its exact denoiser/log-density (:class:`GaussianMixture`).

    ``kind="ring"``: ``n_modes`` (8) equal modes on a circle of ``radius`` (1.0), each N(μ, std² I), std 0.1.
    ``kind="grid"``: a ``side``×``side`` (3×3) grid with ``spacing`` 1.0, std 0.1.
    Sample with ``.sample(n, generator)``.
    """
    if kind not in MIXTURES:
        raise ValueError(f"unknown mixture {kind!r}; expected one of {sorted(MIXTURES)}")
    means, std = MIXTURES[kind](**kw)
    return GaussianMixture(means, std)


def digits(split: str = "train", dtype=torch.float32, labels: bool = False):
    """sklearn's digits as a tensor (M, 1, 8, 8) scaled to [−1, 1] by x/8 − 1.

    ``split``: "train" (1,437 images), "test" (360), or "all" (1,797) — a fixed permutation with seed
    ``DIGITS_SPLIT_SEED``, the same on every machine.  With ``labels=True`` returns (images, labels).
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    d = load_digits()
    x = torch.as_tensor(d.images / 8.0 - 1.0, dtype=dtype).reshape(-1, 1, 8, 8)
    y = torch.as_tensor(d.target, dtype=torch.long)
    if split != "all":
        perm = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(x))
        idx = perm[DIGITS_TEST_SIZE:] if split == "train" else perm[:DIGITS_TEST_SIZE]
        idx = torch.as_tensor(np.sort(idx))
        x, y = x[idx], y[idx]
    return (x, y) if labels else x
