"""dpmsched — few-step sampling schedules for diffusion models: theory, optimizers, tutorial.

(The design calls this module ``sched``; Python's standard library already owns ``import sched``.)

The package is one straight line of layers, each importing only those below it (``tests/test_layering.py``):

* numerics — :mod:`~dpmsched.noise`, :mod:`~dpmsched.schedules`, :mod:`~dpmsched.solvers`, :mod:`~dpmsched.theory`;
* models — :mod:`~dpmsched.denoisers` (the Denoiser interface and its implementations), :mod:`~dpmsched.data`;
* I/O — :mod:`~dpmsched.files`, :mod:`~dpmsched.provenance`, :mod:`~dpmsched.resources`,
  :mod:`~dpmsched.checkpoints`, :mod:`~dpmsched.adapters` (diffusers / k-diffusion), :mod:`~dpmsched.models`
  (``load(name)``), :mod:`~dpmsched.metrics`;
* methods — :mod:`~dpmsched.optimize`, :mod:`~dpmsched.train`, :mod:`~dpmsched.finetune`, :mod:`~dpmsched.skiptune`;
* on top — :mod:`~dpmsched.plots`, :mod:`~dpmsched.widgets`, :mod:`~dpmsched.batch`, :mod:`~dpmsched.sweep`,
  :mod:`~dpmsched.report`, :mod:`~dpmsched.results` and the command line :mod:`dpmsched.cli`.

Importing the package loads only :class:`Schedule` (numpy); submodules load on first use, and the optional
diffusers dependency only inside the adapters that need it.  The math is in the repository's ``docs/math.md``.
"""
from __future__ import annotations

import importlib

from .schedules import Schedule

__version__ = "0.1.0"
__all__ = ["Schedule", "noise", "schedules", "solvers", "theory", "data", "metrics", "denoisers", "models"]

_LAZY = {"noise", "schedules", "solvers", "theory", "denoisers", "data", "files", "provenance", "resources",
         "checkpoints", "adapters", "models", "metrics", "optimize", "train", "finetune", "skiptune", "plots",
         "widgets", "batch", "sweep", "report", "results", "cli"}


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'dpmsched' has no attribute {name!r}")
