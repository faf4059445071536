"""Hand-made schedules as optimizer methods (same call signature as every optimizer), on the
model's own σ range.  (docs/math.md §1)"""
from __future__ import annotations

from ..denoisers import model_range
from ..schedules import Schedule

__all__ = ["karras", "uniform_logsnr", "uniform_t", "quadratic_t", "cosine"]



def karras(model, steps: int, solver: str = "euler", rho: float = 7.0):
    lo, hi = model_range(model)
    return Schedule.karras(steps, lo, hi, rho=rho)


def uniform_logsnr(model, steps: int, solver: str = "euler"):
    lo, hi = model_range(model)
    return Schedule.uniform_logsnr(steps, lo, hi)


def uniform_t(model, steps: int, solver: str = "euler"):
    lo, hi = model_range(model)
    return Schedule.uniform_t(steps, lo, hi)


def quadratic_t(model, steps: int, solver: str = "euler"):
    lo, hi = model_range(model)
    return Schedule.quadratic_t(steps, lo, hi)


def cosine(model, steps: int, solver: str = "euler"):
    lo, hi = model_range(model)
    return Schedule.cosine(steps, lo, hi)
