"""Shared plumbing of every solver: the σ tensor, NaN checks, callbacks, scalar helpers, option checks.

Helpers named ``f*`` (``fexp``, ``flog``, …) compute on a Python float or a 0-d tensor alike, so a solver's
coefficient arithmetic stays in floats (fast) unless the schedule requires grad (then it keeps the graph).
"""
from __future__ import annotations

import math

import torch

from ..schedules import Schedule

__all__ = ["as_sigmas", "check_finite", "emit", "finish", "coef_sigmas", "scalar_value", "fexp", "fexpm1", "flog",
           "fsqrt", "gaussian_like", "check_number", "check_bool", "step_order"]


def as_sigmas(sigmas) -> torch.Tensor:
    """A validated float64 tensor of σ's from a Schedule, array or tensor (validation by Schedule).

    A tensor that requires grad is returned as float64 *with its graph*, so that a solver written
    with tensor coefficients (``s[i + 1] / s[i]``, never ``float(...)``) is differentiable in the
    schedule — what the LD3-style direct optimizer backpropagates through.
    """
    if isinstance(sigmas, torch.Tensor) and sigmas.requires_grad:
        Schedule(sigmas.detach())                      # validate the values; keep the graph
        return sigmas.to(torch.float64)
    if not isinstance(sigmas, Schedule):
        sigmas = Schedule(sigmas)
    return torch.from_numpy(sigmas.sigmas.copy())


def check_finite(x: torch.Tensor, i: int) -> torch.Tensor:
    """``x`` unchanged, or FloatingPointError naming step ``i`` when it holds NaN/Inf."""
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"solver state became NaN/Inf at step {i}")
    return x


def emit(callback, i, sigma, x, denoised):
    """Call ``callback`` (if any) with one network evaluation on the schedule."""
    if callback is not None:
        callback({"i": i, "sigma": float(sigma), "x": x, "denoised": denoised})


def finish(denoiser, x, s, denoise_to_zero, callback):
    """The optional final evaluation x ← D(x; σ_N) (``denoise_to_zero``, +1 NFE)."""
    if denoise_to_zero:
        if s[-1] == 0:
            raise ValueError("denoise_to_zero needs a schedule that ends at sigma_min > 0")
        x = denoiser(x, s[-1])
        emit(callback, len(s) - 1, s[-1], x, x)
    return x


def coef_sigmas(s: torch.Tensor):
    """The σ's for a solver's scalar coefficient arithmetic: ``s`` itself when it requires grad (keeps
    the graph), else the same float64 values as Python floats — a 0-d tensor op costs microseconds,
    which SA-Solver's per-step Lagrange weights would otherwise add to every step."""
    return s if s.requires_grad else s.tolist()


def scalar_value(v) -> float:
    """A float from a float or a 0-d tensor (detached: no autograd warning)."""
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def fexp(v):
    return torch.exp(v) if isinstance(v, torch.Tensor) else math.exp(v)


def fexpm1(v):
    return torch.expm1(v) if isinstance(v, torch.Tensor) else math.expm1(v)


def flog(v):
    return torch.log(v) if isinstance(v, torch.Tensor) else math.log(v)


def fsqrt(v):
    return torch.sqrt(v) if isinstance(v, torch.Tensor) else math.sqrt(v)


def gaussian_like(x: torch.Tensor, generator) -> torch.Tensor:
    """Standard normal noise of ``x``'s shape, dtype and device from ``generator``."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def check_number(name: str, value, lo, hi=math.inf, integer: bool = False):
    ok = isinstance(value, int) and not isinstance(value, bool) if integer else isinstance(value, (int, float))
    if not ok or not (lo <= value <= hi):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} in [{lo}, {hi}], got {value!r}")
    return value


def step_order(i: int, n: int, order: int, lower_order_final: bool) -> int:
    """Order of 0-based step i of n: warm-up min(order, i+1); with lower_order_final also ≤ n − i."""
    p = min(order, i + 1)
    return min(p, n - i) if lower_order_final else p


def check_bool(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be True or False, got {v!r}")
    return v

