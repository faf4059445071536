"""Samplers of the probability-flow ODE, k-diffusion style.  (docs/math.md §0.2, §2)

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

The PF-ODE in σ (EDM form) is ``dx/dσ = (x − D(x;σ))/σ``  (§0.2).  The exponential integrators
(DPM-Solver++, UniPC, SA-Solver) are written in EDM coordinates ``x̃ = x_t/α_t``, where the VP formulas
of §2.3–§2.4 and §6 hold with ``α_t → 1``, ``σ_t → σ`` and ``λ = −log σ`` (so ``σ_t e^{λ_t} = 1``).

Conventions shared by every solver here:

* a step *to* σ = 0 (a schedule with a trailing 0) is the first-order jump ``x ← D(x_i; σ_i)``
  (except Heun, which skips only its correction, and iPNDM, whose step is linear in σ);
* ``lower_order_final`` (multistep solvers, default True) lowers the order of the last steps to
  ``min(order, N − i)`` at 0-based step i — applied for every N, as UniPC and diff-sampler do and as
  DM-NonUniform's objective assumes (diffusers applies it only for N < 15, DPM-Solver for N < 10);
* stochastic solvers (``ddim`` with η > 0, ``ddpm_ancestral``, ``heun`` with churn, ``sa_solver`` with
  τ > 0) draw their noise from ``generator`` (a ``torch.Generator``) so a run is reproducible;
* :func:`nfe` gives the network evaluations and :func:`solver_order` the deterministic global order
  of convergence (measured in ``tests/test_solvers_multistep.py``); :func:`sample` draws samples.

Layout: ``base`` (plumbing), ``first_order`` (Euler, DDIM, DDPM), ``runge_kutta`` (Heun, RK4, the reference
solve), ``multistep`` (DPM-Solver++, UniPC, iPNDM), ``sa_solver``, ``registry`` (names, NFE, orders) and
``sampling``.  This package imports only :mod:`dpmsched.schedules` and :mod:`dpmsched.noise`.
"""
from __future__ import annotations

from .base import as_sigmas, check_finite
from .first_order import ddim, ddpm_ancestral, euler, euler_step
from .multistep import dpmpp_2m, dpmpp_3m, dpmpp_step, ipndm, unipc
from .registry import SOLVERS, get, nfe, solver_order
from .runge_kutta import heun, reference, rk4
from .sa_solver import TAU_WINDOW, sa_coefficients, sa_solver
from .sampling import latents, sample

__all__ = ["euler", "heun", "ddim", "ddpm_ancestral", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm", "sa_solver",
           "sa_coefficients", "rk4", "reference", "get", "nfe", "solver_order", "SOLVERS", "TAU_WINDOW", "sample",
           "latents", "as_sigmas", "check_finite", "euler_step", "dpmpp_step"]
