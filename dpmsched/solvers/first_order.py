"""First-order solvers: Euler / DDIM(η) / DDPM ancestral (docs/math.md §2.1)."""
from __future__ import annotations

import torch

from .base import as_sigmas, check_finite, check_number, emit, finish, gaussian_like

__all__ = ["euler", "euler_step", "ddim", "ddpm_ancestral"]


def euler_step(x, denoised, sigma, sigma_next):
    """One Euler / DDIM(η=0) step from σ to σ_next given D(x; σ): (σ_next/σ) x + (1 − σ_next/σ) D (§2.1).

    The one implementation of the step, used by :func:`euler`, :func:`ddim` (η = 0) and the step-cost
    bound (``dpmsched.optimize.bound_step``, which feeds it teacher states).  σ's: floats or float64
    tensors that broadcast against ``x``.
    """
    r = sigma_next / sigma
    return r * x + (1.0 - r) * denoised


def euler(denoiser, x, sigmas, *, callback=None, denoise_to_zero=False):
    """Euler / DDIM(η=0) / DPM-Solver-1 on the PF-ODE (§2.1).  NFE = N (+1 with denoise_to_zero).

    x_{i+1} = (σ_{i+1}/σ_i) x_i + (1 − σ_{i+1}/σ_i) D(x_i; σ_i) — the convex form that §3.1 unrolls.
    """
    s = as_sigmas(sigmas)
    for i in range(len(s) - 1):
        denoised = denoiser(x, s[i])
        emit(callback, i, s[i], x, denoised)
        x = check_finite(euler_step(x, denoised, s[i], s[i + 1]), i)
    return finish(denoiser, x, s, denoise_to_zero, callback)


def ddim(denoiser, x, sigmas, *, eta=0.0, generator=None, callback=None, denoise_to_zero=False):
    """DDIM with stochasticity η (Song et al. 2021, eq. 12) in EDM coordinates.  NFE = N.

    From σ_i to σ_{i+1}: σ_up = η σ_{i+1} √(1 − σ_{i+1}²/σ_i²) (capped at σ_{i+1}), σ_down = √(σ_{i+1}² − σ_up²),
    x ← D + σ_down (x − D)/σ_i + σ_up ξ.  This is DDIM's σ_t(η) divided by √ᾱ_{t−1}: η = 0 is
    :func:`euler` (§2.1), η = 1 is the DDPM posterior step (:func:`ddpm_ancestral`).
    """
    check_number("eta", eta, 0.0)
    s = as_sigmas(sigmas)
    for i in range(len(s) - 1):
        denoised = denoiser(x, s[i])
        emit(callback, i, s[i], x, denoised)
        if eta == 0 or s[i + 1] == 0:
            x = euler_step(x, denoised, s[i], s[i + 1])
        else:
            up = torch.minimum(eta * s[i + 1] * torch.sqrt(1.0 - (s[i + 1] / s[i]) ** 2), s[i + 1])
            down = torch.sqrt(s[i + 1] ** 2 - up**2)
            x = denoised + (down / s[i]) * (x - denoised) + up * gaussian_like(x, generator)
        x = check_finite(x, i)
    return finish(denoiser, x, s, denoise_to_zero, callback)


def ddpm_ancestral(denoiser, x, sigmas, *, generator=None, callback=None, denoise_to_zero=False):
    """DDPM ancestral sampling (Ho et al. 2020, posterior variance β̃) = :func:`ddim` with η = 1.  NFE = N."""
    return ddim(denoiser, x, sigmas, eta=1.0, generator=generator, callback=callback,
                denoise_to_zero=denoise_to_zero)
