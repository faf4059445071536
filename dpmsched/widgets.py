"""ipywidgets controls used by the notebooks.

In unattended runs (papermill through :func:`dpmsched.batch.run_notebook`, sweeps, ``make test-nb``) the
environment variable ``DPMSCHED_HEADLESS=1`` is set and no widget is built: with no frontend there is nothing to
interact with, and nbclient can block forever on a cell that creates widgets (jupyter/nbclient#312, seen here
under load: kernel and client both idle).  In JupyterLab the variable is unset and the widget appears.
"""
from __future__ import annotations

import os

from . import schedules as S
from .plots import weight_bars
from .resources import HEADLESS_ENV
from .theory import gaussian_bound, gaussian_optimal_schedule

__all__ = ["schedule_explorer", "FAMILIES"]

FAMILIES = ("karras", "uniform-logsnr", "uniform-t", "quadratic-t", "cosine", "bound-optimal")


def _build(family: str, steps: int, rho: float, c: float, sigma_min: float, sigma_max: float):
    if family == "bound-optimal":
        return gaussian_optimal_schedule(steps, c, sigma_min, sigma_max)
    kw = {"rho": rho} if family == "karras" else {}
    return S.get(family, steps, sigma_min=sigma_min, sigma_max=sigma_max, **kw)


def schedule_explorer(steps: int = 5, family: str = "karras", rho: float = 7.0, c: float = 0.5,
                      sigma_min: float = 0.002, sigma_max: float = 80.0):
    """Sliders for (steps, schedule family, ρ) that redraw the convex-weight bars and print the
    closed-form bound L_disc (3.1) on 1-D Gaussian data N(0, c²).  Returns the widget box, or None in a
    headless run (``DPMSCHED_HEADLESS`` set), where it prints the bound of the initial setting instead.
    """
    if os.environ.get(HEADLESS_ENV):
        s = _build(family, steps, rho, c, sigma_min, sigma_max)
        print(f"(headless run: no widget) {family}, {steps} steps: bound L_disc = {gaussian_bound(s.sigmas, c):.4f}")
        return None
    import ipywidgets as W
    import matplotlib.pyplot as plt


    w_steps = W.IntSlider(value=steps, min=1, max=20, description="steps")
    w_family = W.Dropdown(options=FAMILIES, value=family, description="family")
    w_rho = W.FloatSlider(value=rho, min=1.0, max=15.0, step=0.5, description="ρ (karras)")
    out = W.Output()

    def redraw(*_):
        s = _build(w_family.value, w_steps.value, w_rho.value, c, sigma_min, sigma_max)
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(7, 3.2))
            weight_bars(s, ax)
            plt.show()
            print(f"bound L_disc (1-D Gaussian, c = {c}) = {gaussian_bound(s, c):.4f}   "
                  f"sigmas = {[round(float(v), 4) for v in s.sigmas]}")

    for w in (w_steps, w_family, w_rho):
        w.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([w_steps, w_family, w_rho]), out])
