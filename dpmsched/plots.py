"""Matplotlib figures the notebooks and benchmarks share.

Each function draws on a given ``ax`` (or a new figure) and returns the axes; nothing is shown or
saved here — :func:`save` writes a figure next to the run's outputs.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from .schedules import Schedule
from .theory import convex_weights

__all__ = ["weight_bars", "schedules_logsigma", "digits_mosaic", "skip_heatmap", "save"]


def _ax(ax, figsize=(6, 3.2)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def weight_bars(schedule: Schedule, ax=None, title: str | None = None, log: bool = True):
    """Bars of the convex weights (§3.1): the noise weight σ_N/σ_0, then w_i at each step i.

    On a log axis (default) every weight is visible and labelled; ``log=False`` shows how the last
    one dominates.
    """
    ax = _ax(ax)
    a, w = convex_weights(schedule)
    x = np.arange(w.size + 1)
    vals = np.concatenate([[a], w])
    ax.bar(x[:1], vals[:1], color="0.6", label="noise σ_N/σ_0")
    ax.bar(x[1:], vals[1:], color="C0", label="w_i on D(x_i; σ_i)")
    ax.set_xticks(x, ["z"] + [f"{v:.3g}" for v in schedule.sigmas[:-1]], rotation=45, fontsize=8)
    ax.set_xlabel("σ_i of the denoiser call")
    ax.set_ylabel("weight in x_N")
    if log:
        ax.set_yscale("log")
        ax.set_ylim(max(1e-7, 0.3 * vals[vals > 0].min()), 3.0)
        if vals.size <= 12:
            for xi, v in zip(x, vals):
                if v > 0:
                    ax.text(xi, v, f"{v:.2g}", ha="center", va="bottom", fontsize=7)
    else:
        ax.set_ylim(0, 1.05)
    ax.set_title(title or f"{schedule.name}, N = {schedule.steps}")
    ax.legend(fontsize=8, loc="upper left")
    return ax


def schedules_logsigma(schedules, ax=None, title: str = "schedules"):
    """σ_i against the step index i on a log axis, one line per schedule (dict name → Schedule or list)."""
    ax = _ax(ax)
    items = schedules.items() if isinstance(schedules, dict) else [(s.name, s) for s in schedules]
    for name, s in items:
        ax.semilogy(np.arange(len(s)), s.sigmas, "o-", ms=4, label=name)
    ax.set_xlabel("step i")
    ax.set_ylabel("σ_i")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax


def skip_heatmap(result: dict, ax=None, title: str | None = None, fmt: str = "{:.3g}"):
    """Heatmap of a :func:`dpmsched.skiptune.grid_search` result: rows ρ_top, columns ρ_bottom, the score written in each
    cell, the best cell outlined and the plain model (ρ ≡ 1) marked "plain"."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 3.6))
    sc = np.asarray(result["scores"])
    im = ax.imshow(sc, cmap="viridis_r", origin="upper")
    tops, bottoms = result["rho_top"], result["rho_bottom"]
    ax.set_yticks(range(len(tops)), [f"{v:g}" for v in tops])
    ax.set_xticks(range(len(bottoms)), [f"{v:g}" for v in bottoms])
    ax.set_ylabel("ρ_top (outermost skip)")
    ax.set_xlabel("ρ_bottom (deepest skip)")
    for i in range(sc.shape[0]):
        for j in range(sc.shape[1]):
            plain = tops[i] == 1.0 and bottoms[j] == 1.0
            ax.text(j, i, fmt.format(sc[i, j]) + ("\nplain" if plain else ""), ha="center", va="center",
                    fontsize=7, color="w" if sc[i, j] > sc.min() + 0.5 * np.ptp(sc) else "k")
    b = result["best"]
    i, j = tops.index(b["rho_top"]), bottoms.index(b["rho_bottom"])
    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
    ax.set_title(title or f"{result['solver']}, NFE {result['nfe']}")
    ax.figure.colorbar(im, ax=ax, shrink=0.8)
    return ax


def digits_mosaic(x: torch.Tensor, ax=None, nrow: int = 8, title: str | None = None):
    """Draw images (M, 1, H, W) in [−1, 1] as one grey mosaic of ``nrow`` columns (clipped to [−1, 1])."""
    x = torch.as_tensor(x).detach().double().clamp(-1, 1).cpu()
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected images of shape (M, 1, H, W), got {tuple(x.shape)}")
    m, _, h, w = x.shape
    rows = math.ceil(m / nrow)
    canvas = np.ones((rows * (h + 1) + 1, nrow * (w + 1) + 1))
    for k in range(m):
        r, c = divmod(k, nrow)
        canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = (x[k, 0].numpy() + 1) / 2
    if ax is None:
        _, ax = plt.subplots(figsize=(nrow * 0.45, rows * 0.45))
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def save(fig, name: str, out_dir: str | None) -> Path | None:
    """Save ``fig`` as ``out_dir/name.png`` (no-op when ``out_dir`` is empty); returns the path."""
    if not out_dir:
        return None
    p = Path(out_dir)
    p.mkdir(parents=True, exist_ok=True)
    path = p / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
