"""Samplers of the probability-flow ODE, k-diffusion style.  (ALGORITHMS.md §0.2, §2)

Every solver has the same signature::

    solver(denoiser, x, sigmas, *, callback=None, denoise_to_zero=False, **opts) -> Tensor

* ``denoiser`` — ``D(x, sigma) -> E[x0|x]`` in EDM coordinates (see :mod:`dpmsched.denoisers`).
* ``x`` — the state at σ_0, i.e. ``z * sigmas[0]`` for standard normal z; shape (B, *event).
* ``sigmas`` — a :class:`~dpmsched.schedules.Schedule` or a 1-D tensor, decreasing, σ_N ≥ 0.
* ``callback`` — called once per network evaluation on the schedule with
  ``{"i": step, "sigma": σ_i, "x": state, "denoised": D(x_i; σ_i)}``.
* ``denoise_to_zero`` — one extra evaluation ``x ← D(x; σ_N)`` at the end (+1 NFE).

Coefficients are computed in float64 from the schedule as 0-d tensors (so the state keeps the dtype
of ``x`` and the solve is differentiable in ``sigmas`` when it requires grad); a NaN/Inf state raises
``FloatingPointError`` naming the step.

The PF-ODE in σ (EDM form) is ``dx/dσ = (x − D(x;σ))/σ``  (§0.2).
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["euler", "heun", "rk4", "reference", "get", "nfe", "SOLVERS"]


# -- shared plumbing ----------------------------------------------------------------------------
def as_sigmas(sigmas) -> torch.Tensor:
    """A validated float64 tensor of σ's from a Schedule, array or tensor (validation by Schedule).

    A tensor that requires grad is returned as float64 *with its graph*, so that a solver written
    with tensor coefficients (``s[i + 1] / s[i]``, never ``float(...)``) is differentiable in the
    schedule — what the LD3-style direct optimizer backpropagates through.
    """
    from .schedules import Schedule

    if isinstance(sigmas, torch.Tensor) and sigmas.requires_grad:
        Schedule(sigmas.detach())                      # validate the values; keep the graph
        return sigmas.to(torch.float64)
    if not isinstance(sigmas, Schedule):
        sigmas = Schedule(sigmas)
    return torch.from_numpy(sigmas.sigmas.copy())


def check_finite(x: torch.Tensor, i: int) -> torch.Tensor:
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"solver state became NaN/Inf at step {i}")
    return x


def _emit(callback, i, sigma, x, denoised):
    if callback is not None:
        callback({"i": i, "sigma": float(sigma), "x": x, "denoised": denoised})


def _final(denoiser, x, s, denoise_to_zero, callback):
    if denoise_to_zero:
        if s[-1] == 0:
            raise ValueError("denoise_to_zero needs a schedule that ends at sigma_min > 0")
        x = denoiser(x, s[-1])
        _emit(callback, len(s) - 1, s[-1], x, x)
    return x


# -- first order --------------------------------------------------------------------------------
def euler(denoiser, x, sigmas, *, callback=None, denoise_to_zero=False):
    """Euler / DDIM(η=0) / DPM-Solver-1 on the PF-ODE (§2.1).  NFE = N (+1 with denoise_to_zero).

    x_{i+1} = (σ_{i+1}/σ_i) x_i + (1 − σ_{i+1}/σ_i) D(x_i; σ_i) — the convex form that §3.1 unrolls.
    """
    s = as_sigmas(sigmas)
    for i in range(len(s) - 1):
        denoised = denoiser(x, s[i])
        _emit(callback, i, s[i], x, denoised)
        r = s[i + 1] / s[i]
        x = check_finite(r * x + (1.0 - r) * denoised, i)
    return _final(denoiser, x, s, denoise_to_zero, callback)


# -- second order -------------------------------------------------------------------------------
def heun(denoiser, x, sigmas, *, callback=None, denoise_to_zero=False):
    """EDM Algorithm 2, deterministic (S_churn = 0): Heun's method on the PF-ODE (§2.2).

    NFE = 2N, or 2N − 1 when the schedule ends in 0 (no correction on the jump to σ = 0).
    """
    s = as_sigmas(sigmas)
    for i in range(len(s) - 1):
        denoised = denoiser(x, s[i])
        _emit(callback, i, s[i], x, denoised)
        d = (x - denoised) / s[i]
        dt = s[i + 1] - s[i]
        x_next = x + dt * d                                    # Euler step
        if s[i + 1] > 0:                                       # apply 2nd order correction
            d2 = (x_next - denoiser(x_next, s[i + 1])) / s[i + 1]
            x_next = x + dt * 0.5 * (d + d2)
        x = check_finite(x_next, i)
    return _final(denoiser, x, s, denoise_to_zero, callback)


# -- fourth order, and the reference solve ------------------------------------------------------
def rk4(denoiser, x, sigmas, *, callback=None, denoise_to_zero=False):
    """Classical Runge–Kutta 4 on the PF-ODE in t = log σ:  dx/dt = x − D(x; e^t).  NFE = 4N.

    Not a few-step sampler: it is the accurate integrator behind :func:`reference` (global error
    O(h⁴) in log σ).  The schedule must end at σ_N > 0.
    """
    s = as_sigmas(sigmas)
    if s[-1] == 0:
        raise ValueError("rk4 integrates in log sigma and needs sigma_N > 0")
    t = torch.log(s)

    def f(x, ti):
        return x - denoiser(x, torch.exp(ti))

    for i in range(len(s) - 1):
        h = t[i + 1] - t[i]
        tm = 0.5 * (t[i] + t[i + 1])
        denoised = denoiser(x, s[i])
        _emit(callback, i, s[i], x, denoised)
        k1 = x - denoised
        k2 = f(x + 0.5 * h * k1, tm)
        k3 = f(x + 0.5 * h * k2, tm)
        k4 = f(x + h * k3, t[i + 1])
        x = check_finite(x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4), i)
    return _final(denoiser, x, s, denoise_to_zero, callback)


def reference(denoiser, x, sigma_from: float, sigma_to: float, *, steps: int = 128,
              rho: float = 7.0, callback=None):
    """An accurate PF-ODE solve from σ_from to σ_to > 0: :func:`rk4` on a Karras-ρ grid.

    Measured with the defaults (128 steps, 512 NFE, σ 80 → 0.002): max error 8e-7 against the
    closed-form solution on Gaussian data and 3e-6 against a 4096-step Heun solve on the 2-D ring
    mixture — orders of magnitude below any few-step error we compare (Heun with the same 512 NFE:
    3e-4).  Returns the state at σ_to, shape of ``x``.
    """
    from .schedules import Schedule

    if not sigma_to > 0:
        raise ValueError(f"the reference solve needs sigma_to > 0, got {sigma_to}")
    grid = Schedule.karras(steps, sigma_min=float(sigma_to), sigma_max=float(sigma_from), rho=rho)
    return rk4(denoiser, x, grid, callback=callback)


# -- registry and NFE accounting (§0.3) -----------------------------------------------------------
SOLVERS: dict[str, Callable] = {"euler": euler, "ddim": euler, "heun": heun, "rk4": rk4}

_NFE: dict[str, Callable[..., int]] = {
    "euler": lambda n, final_zero, **o: n,
    "ddim": lambda n, final_zero, **o: n,
    "heun": lambda n, final_zero, **o: 2 * n - (1 if final_zero else 0),
    "rk4": lambda n, final_zero, **o: 4 * n,
}


def _key(name: str) -> str:
    key = str(name).lower().replace("-", "_")
    if key not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; expected one of {sorted(SOLVERS)}")
    return key


def get(name: str) -> Callable:
    """The solver function registered under ``name``."""
    return SOLVERS[_key(name)]


def nfe(name: str, steps: int, *, final_zero: bool = False, denoise_to_zero: bool = False, **opts) -> int:
    """Network evaluations of solver ``name`` over ``steps`` steps (§0.3)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return _NFE[_key(name)](int(steps), final_zero, **opts) + (1 if denoise_to_zero else 0)
