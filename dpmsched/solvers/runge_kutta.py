"""Runge–Kutta solvers: Heun (EDM Alg. 2, §2.2), RK4 in log σ, and the accurate reference solve."""
from __future__ import annotations

import math

import torch

from ..schedules import Schedule
from .base import as_sigmas, check_finite, check_number, emit, finish, gaussian_like

__all__ = ["heun", "rk4", "reference"]


def heun(denoiser, x, sigmas, *, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0, generator=None,
         callback=None, denoise_to_zero=False):
    """EDM Algorithm 2: Heun's method on the PF-ODE, with optional churn (§2.2).

    NFE = 2N, or 2N − 1 when the schedule ends in 0 (no correction on the jump to σ = 0).
    Churn (default off): at S_tmin ≤ σ_i ≤ S_tmax, γ = min(S_churn/N, √2 − 1), σ̂ = σ_i(1 + γ) and
    x̂ = x + √(σ̂² − σ_i²)·S_noise·ξ before the step from σ̂ (N = number of steps, EDM's ``num_steps``).
    """
    for name, v in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_noise", s_noise)):
        check_number(name, v, 0.0)
    s = as_sigmas(sigmas)
    n = len(s) - 1
    gamma = min(s_churn / n, math.sqrt(2.0) - 1.0) if s_churn > 0 else 0.0
    for i in range(n):
        s_hat = s[i]
        if gamma > 0 and s_tmin <= float(s[i].detach()) <= s_tmax:
            s_hat = s[i] * (1.0 + gamma)
            x = x + torch.sqrt(s_hat**2 - s[i] ** 2) * s_noise * gaussian_like(x, generator)
        denoised = denoiser(x, s_hat)
        emit(callback, i, s_hat, x, denoised)
        d = (x - denoised) / s_hat
        dt = s[i + 1] - s_hat
        x_next = x + dt * d                                    # Euler step
        if s[i + 1] > 0:                                       # apply 2nd order correction
            d2 = (x_next - denoiser(x_next, s[i + 1])) / s[i + 1]
            x_next = x + dt * 0.5 * (d + d2)
        x = check_finite(x_next, i)
    return finish(denoiser, x, s, denoise_to_zero, callback)


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
        emit(callback, i, s[i], x, denoised)
        k1 = x - denoised
        k2 = f(x + 0.5 * h * k1, tm)
        k3 = f(x + 0.5 * h * k2, tm)
        k4 = f(x + h * k3, t[i + 1])
        x = check_finite(x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4), i)
    return finish(denoiser, x, s, denoise_to_zero, callback)


def reference(denoiser, x, sigma_from: float, sigma_to: float, *, steps: int = 128,
              rho: float = 7.0, callback=None):
    """An accurate PF-ODE solve from σ_from to σ_to > 0: :func:`rk4` on a Karras-ρ grid.

    Measured with the defaults (128 steps, 512 NFE, σ 80 → 0.002): max error 8e-7 against the
    closed-form solution on Gaussian data and 3e-6 against a 4096-step Heun solve on the 2-D ring
    mixture — orders of magnitude below any few-step error we compare (Heun with the same 512 NFE:
    3e-4).  Returns the state at σ_to, shape of ``x``.
    """
    if not sigma_to > 0:
        raise ValueError(f"the reference solve needs sigma_to > 0, got {sigma_to}")
    grid = Schedule.karras(steps, sigma_min=float(sigma_to), sigma_max=float(sigma_from), rho=rho)
    return rk4(denoiser, x, grid, callback=callback)


