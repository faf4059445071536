"""Hand-made schedules as optimizer methods (same call signature as every optimizer), on the
model's own σ range.  (ALGORITHMS.md §1)"""
from __future__ import annotations

from .. import schedules as S

__all__ = ["karras", "uniform_logsnr", "uniform_t", "quadratic_t", "cosine"]


def _range(model):
    return float(getattr(model, "sigma_min", S.SIGMA_MIN)), float(getattr(model, "sigma_max", S.SIGMA_MAX))


def karras(model, steps: int, solver: str = "euler", rho: float = 7.0):
    lo, hi = _range(model)
    return S.Schedule.karras(steps, lo, hi, rho=rho)


def uniform_logsnr(model, steps: int, solver: str = "euler"):
    lo, hi = _range(model)
    return S.Schedule.uniform_logsnr(steps, lo, hi)


def uniform_t(model, steps: int, solver: str = "euler"):
    lo, hi = _range(model)
    return S.Schedule.uniform_t(steps, lo, hi)


def quadratic_t(model, steps: int, solver: str = "euler"):
    lo, hi = _range(model)
    return S.Schedule.quadratic_t(steps, lo, hi)


def cosine(model, steps: int, solver: str = "euler"):
    lo, hi = _range(model)
    return S.Schedule.cosine(steps, lo, hi)
