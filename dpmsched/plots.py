"""Matplotlib figures the notebooks share.  (DESIGN.md §4)

Each function draws on a given ``ax`` (or a new figure) and returns the axes; nothing is shown or
saved here — :func:`save` writes a figure next to the run's outputs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .schedules import Schedule
from .theory import convex_weights

__all__ = ["weight_bars", "schedules_logsigma", "save"]


def _ax(ax, figsize=(6, 3.2)):
    if ax is None:
        import matplotlib.pyplot as plt

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


def save(fig, name: str, out_dir: str | None) -> Path | None:
    """Save ``fig`` as ``out_dir/name.png`` (no-op when ``out_dir`` is empty); returns the path."""
    if not out_dir:
        return None
    p = Path(out_dir)
    p.mkdir(parents=True, exist_ok=True)
    path = p / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
