"""dpmsched — few-step sampling schedules for diffusion models: theory, optimizers, tutorial.

(The design calls this module ``sched``; Python's standard library already owns ``import sched``.)

Importing the package loads only :class:`Schedule` (numpy); submodules load on first use, and the
optional diffusers dependency only inside the adapters that need it.
"""
from __future__ import annotations

import importlib

from .schedules import Schedule

__version__ = "0.1.0"
__all__ = ["Schedule", "noise", "schedules", "solvers", "theory", "data", "metrics", "denoisers"]

_LAZY = {"noise", "schedules", "solvers", "theory", "data", "metrics", "denoisers", "optimize",
         "checkpoints", "plots", "widgets", "train", "finetune", "skiptune", "batch"}


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'dpmsched' has no attribute {name!r}")
