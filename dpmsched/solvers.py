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
  of convergence (measured in ``tests/test_solvers_multistep.py``).
"""
from __future__ import annotations

from typing import Callable

import math

import torch

__all__ = ["euler", "heun", "ddim", "ddpm_ancestral", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm", "sa_solver",
           "rk4", "reference", "get", "nfe", "solver_order", "SOLVERS", "TAU_WINDOW"]


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


def _coef_sigmas(s: torch.Tensor):
    """The σ's for a solver's scalar coefficient arithmetic: ``s`` itself when it requires grad (keeps
    the graph), else the same float64 values as Python floats — a 0-d tensor op costs microseconds,
    which SA-Solver's per-step Lagrange weights would otherwise add to every step."""
    return s if s.requires_grad else s.tolist()


def _val(v) -> float:
    """A float from a float or a 0-d tensor (detached: no autograd warning)."""
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def _exp(v):
    return torch.exp(v) if isinstance(v, torch.Tensor) else math.exp(v)


def _expm1(v):
    return torch.expm1(v) if isinstance(v, torch.Tensor) else math.expm1(v)


def _log(v):
    return torch.log(v) if isinstance(v, torch.Tensor) else math.log(v)


def _sqrt(v):
    return torch.sqrt(v) if isinstance(v, torch.Tensor) else math.sqrt(v)


def _noise(x: torch.Tensor, generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _check_range(name: str, value, lo, hi=math.inf, integer: bool = False):
    ok = isinstance(value, int) and not isinstance(value, bool) if integer else isinstance(value, (int, float))
    if not ok or not (lo <= value <= hi):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} in [{lo}, {hi}], got {value!r}")
    return value


def ddim(denoiser, x, sigmas, *, eta=0.0, generator=None, callback=None, denoise_to_zero=False):
    """DDIM with stochasticity η (Song et al. 2021, eq. 12) in EDM coordinates.  NFE = N.

    From σ_i to σ_{i+1}: σ_up = η σ_{i+1} √(1 − σ_{i+1}²/σ_i²) (capped at σ_{i+1}), σ_down = √(σ_{i+1}² − σ_up²),
    x ← D + σ_down (x − D)/σ_i + σ_up ξ.  This is DDIM's σ_t(η) divided by √ᾱ_{t−1}: η = 0 is
    :func:`euler` (§2.1), η = 1 is the DDPM posterior step (:func:`ddpm_ancestral`).
    """
    _check_range("eta", eta, 0.0)
    s = as_sigmas(sigmas)
    for i in range(len(s) - 1):
        denoised = denoiser(x, s[i])
        _emit(callback, i, s[i], x, denoised)
        if eta == 0 or s[i + 1] == 0:
            r = s[i + 1] / s[i]
            x = r * x + (1.0 - r) * denoised
        else:
            up = torch.minimum(eta * s[i + 1] * torch.sqrt(1.0 - (s[i + 1] / s[i]) ** 2), s[i + 1])
            down = torch.sqrt(s[i + 1] ** 2 - up**2)
            x = denoised + (down / s[i]) * (x - denoised) + up * _noise(x, generator)
        x = check_finite(x, i)
    return _final(denoiser, x, s, denoise_to_zero, callback)


def ddpm_ancestral(denoiser, x, sigmas, *, generator=None, callback=None, denoise_to_zero=False):
    """DDPM ancestral sampling (Ho et al. 2020, posterior variance β̃) = :func:`ddim` with η = 1.  NFE = N."""
    return ddim(denoiser, x, sigmas, eta=1.0, generator=generator, callback=callback,
                denoise_to_zero=denoise_to_zero)


# -- second order -------------------------------------------------------------------------------
def heun(denoiser, x, sigmas, *, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0, generator=None,
         callback=None, denoise_to_zero=False):
    """EDM Algorithm 2: Heun's method on the PF-ODE, with optional churn (§2.2).

    NFE = 2N, or 2N − 1 when the schedule ends in 0 (no correction on the jump to σ = 0).
    Churn (default off): at S_tmin ≤ σ_i ≤ S_tmax, γ = min(S_churn/N, √2 − 1), σ̂ = σ_i(1 + γ) and
    x̂ = x + √(σ̂² − σ_i²)·S_noise·ξ before the step from σ̂ (N = number of steps, EDM's ``num_steps``).
    """
    for name, v in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_noise", s_noise)):
        _check_range(name, v, 0.0)
    s = as_sigmas(sigmas)
    n = len(s) - 1
    gamma = min(s_churn / n, math.sqrt(2.0) - 1.0) if s_churn > 0 else 0.0
    for i in range(n):
        s_hat = s[i]
        if gamma > 0 and s_tmin <= float(s[i].detach()) <= s_tmax:
            s_hat = s[i] * (1.0 + gamma)
            x = x + torch.sqrt(s_hat**2 - s[i] ** 2) * s_noise * _noise(x, generator)
        denoised = denoiser(x, s_hat)
        _emit(callback, i, s_hat, x, denoised)
        d = (x - denoised) / s_hat
        dt = s[i + 1] - s_hat
        x_next = x + dt * d                                    # Euler step
        if s[i + 1] > 0:                                       # apply 2nd order correction
            d2 = (x_next - denoiser(x_next, s[i + 1])) / s[i + 1]
            x_next = x + dt * 0.5 * (d + d2)
        x = check_finite(x_next, i)
    return _final(denoiser, x, s, denoise_to_zero, callback)


# -- multistep exponential integrators (§2.3, §2.4, §6) -----------------------------------------
def _step_order(i: int, n: int, order: int, lower_order_final: bool) -> int:
    """Order of 0-based step i of n: warm-up min(order, i+1); with lower_order_final also ≤ n − i."""
    p = min(order, i + 1)
    return min(p, n - i) if lower_order_final else p


def _check_bool(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be True or False, got {v!r}")
    return v


def _dpmpp(denoiser, x, sigmas, order, lower_order_final, callback, denoise_to_zero):
    """DPM-Solver++(kM), data prediction, midpoint form (§2.3) with λ = −log σ, α = 1."""
    _check_bool("lower_order_final", lower_order_final)
    s = as_sigmas(sigmas)
    n = len(s) - 1
    lam = -torch.log(s[:n])                                  # λ_i of the evaluated nodes
    ms = []
    for i in range(n):
        denoised = denoiser(x, s[i])
        _emit(callback, i, s[i], x, denoised)
        ms.append(denoised)
        if s[i + 1] == 0:                                      # first-order jump to the data
            x = check_finite(denoised, i)
            break
        h = torch.log(s[i] / s[i + 1])
        phi1 = torch.expm1(-h)                                # e^{−h} − 1
        p = _step_order(i, n, order, lower_order_final)
        x = (s[i + 1] / s[i]) * x - phi1 * ms[-1]
        if p >= 2:
            r0 = (lam[i] - lam[i - 1]) / h
            d1_0 = (ms[-1] - ms[-2]) / r0
            if p == 2:
                x = x - phi1 * 0.5 * d1_0
            else:
                r1 = (lam[i - 1] - lam[i - 2]) / h
                d1_1 = (ms[-2] - ms[-3]) / r1
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi2 = phi1 / h + 1.0
                phi3 = phi2 / h - 0.5
                x = x + phi2 * d1 - phi3 * d2
        x = check_finite(x, i)
        del ms[:-3]
    return _final(denoiser, x, s, denoise_to_zero, callback)


def dpmpp_2m(denoiser, x, sigmas, *, lower_order_final=True, callback=None, denoise_to_zero=False):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2; §2.3), multistep data prediction.  NFE = N."""
    return _dpmpp(denoiser, x, sigmas, 2, lower_order_final, callback, denoise_to_zero)


def dpmpp_3m(denoiser, x, sigmas, *, lower_order_final=True, callback=None, denoise_to_zero=False):
    """DPM-Solver++(3M) (Lu et al. 2022; §2.3), multistep data prediction.  NFE = N."""
    return _dpmpp(denoiser, x, sigmas, 3, lower_order_final, callback, denoise_to_zero)


def _unipc_coefficients(rks, h, order: int, variant: str):
    """UniPC's B(h) and ρ^P, ρ^C (§2.4, data prediction: hh = −h).  ``rks`` (order,) with r_order = 1."""
    hh = -h
    h_phi_k = torch.expm1(hh) / hh - 1.0
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    fact, rows, b = 1, [], []
    for q in range(1, order + 1):
        rows.append(rks ** (q - 1))
        b.append(h_phi_k * fact / b_h)
        fact *= q + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    R, b = torch.stack(rows), torch.stack(b)
    half = torch.full((1,), 0.5, dtype=h.dtype)
    rho_p = half if order == 2 else (torch.linalg.solve(R[:-1, :-1], b[:-1]) if order > 2 else None)
    rho_c = half if order == 1 else torch.linalg.solve(R, b)
    return b_h, rho_p, rho_c


def unipc(denoiser, x, sigmas, *, order=3, variant="bh1", corrector=True, lower_order_final=True,
          callback=None, denoise_to_zero=False):
    """UniPC: UniP-p predictor + UniC-p corrector (Zhao et al. 2023; §2.4).  NFE = N.

    ``order`` 1–3 (p), ``variant`` "bh1" (B(h) = −h; unconditional few-step) or "bh2" (B(h) = e^{−h} − 1).
    The corrector reuses the model output at the predicted point, which the next step keeps in its
    history, and is skipped on the last step, so it costs no evaluation; with it the global order is p+1.
    ``corrector=False`` leaves the predictor alone (order 1 is then DDIM; order 2 with bh2 is DPM-Solver++(2M)).
    """
    _check_range("order", order, 1, 3, integer=True)
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    _check_bool("corrector", corrector)
    _check_bool("lower_order_final", lower_order_final)
    s = as_sigmas(sigmas)
    n = len(s) - 1
    lam = -torch.log(s[:n])
    denoised = denoiser(x, s[0])
    _emit(callback, 0, s[0], x, denoised)
    ms = [denoised]
    for i in range(n):
        if s[i + 1] == 0:
            x = check_finite(ms[-1], i)
            break
        h = torch.log(s[i] / s[i + 1])
        p = _step_order(i, n, order, lower_order_final)
        rks = torch.stack([(lam[i - k] - lam[i]) / h for k in range(1, p)] + [torch.ones((), dtype=h.dtype)])
        d1s = [(ms[-1 - k] - ms[-1]) / rks[k - 1] for k in range(1, p)]
        b_h, rho_p, rho_c = _unipc_coefficients(rks, h, p, variant)
        x_base = (s[i + 1] / s[i]) * x - torch.expm1(-h) * ms[-1]       # = the DDIM step
        x_pred = x_base
        if p > 1:
            x_pred = x_base - b_h * sum(rho_p[k] * d1s[k] for k in range(p - 1))
        x = check_finite(x_pred, i)
        if i == n - 1:
            break
        m_new = denoiser(x_pred, s[i + 1])                              # the one NFE of this step
        if corrector:
            corr = sum((rho_c[k] * d1s[k] for k in range(p - 1)), torch.zeros_like(x_pred))
            x = check_finite(x_base - b_h * (corr + rho_c[-1] * (m_new - ms[-1])), i)
        _emit(callback, i + 1, s[i + 1], x, m_new)
        ms.append(m_new)
        del ms[:-3]
    return _final(denoiser, x, s, denoise_to_zero, callback)


#: iPNDM's Adams–Bashforth coefficients of orders 1–4 (§2.5)
_IPNDM = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def ipndm(denoiser, x, sigmas, *, max_order=4, lower_order_final=False, callback=None, denoise_to_zero=False):
    """iPNDM (Zhang & Chen 2023, as in diff-sampler; §2.5): fixed-coefficient Adams–Bashforth on
    d = (x − D)/σ in σ.  NFE = N.

    The coefficients assume equal steps in σ, so the order is ``max_order`` on a uniform-σ grid and drops
    to 2 on smoothly graded grids such as Karras (step ratios 1 + O(1/N)).  ``lower_order_final``
    (default False, as diff-sampler) lowers the last steps' order like the other multistep solvers.
    """
    _check_range("max_order", max_order, 1, 4, integer=True)
    _check_bool("lower_order_final", lower_order_final)
    s = as_sigmas(sigmas)
    n = len(s) - 1
    ds = []
    for i in range(n):
        denoised = denoiser(x, s[i])
        _emit(callback, i, s[i], x, denoised)
        ds.append((x - denoised) / s[i])
        coef = _IPNDM[_step_order(i, n, max_order, lower_order_final) - 1]
        x = check_finite(x + (s[i + 1] - s[i]) * sum(c * ds[-1 - k] for k, c in enumerate(coef)), i)
        del ds[:-3]
    return _final(denoiser, x, s, denoise_to_zero, callback)


def _tau_window_default() -> tuple[float, float]:
    from .noise import DiscreteVP

    sig = DiscreteVP.linear(1000).sigmas
    return float(sig[200]), float(sig[800])


#: SA-Solver's default τ window (σ_lo, σ_hi): the training steps [200, 800] of the linear DDPM (§6.2)
TAU_WINDOW: tuple[float, float] = _tau_window_default()


def _exp_moments(a, h, kmax: int):
    """I_k = ∫_{−h}^{0} e^{a u} u^k du, k = 0..kmax, as floats or 0-d tensors like ``h`` (a > 0, h > 0).

    I_k = (−1)^k k!/a^{k+1} P(k+1, ah), P the regularised lower incomplete gamma function, summed as
    its series below ah = 1 (the closed form 1 − e^{−x}Σ x^m/m! cancels there); the series stops when
    a term is below 1e-18 of the sum (the terms fall by a factor < 1/2 each, so the tail is smaller).
    """
    x = a * h
    out = []
    for k in range(kmax + 1):
        if _val(x) < 1.0:
            term = _exp(-x) * x ** (k + 1) / math.factorial(k + 1)
            total = term
            for j in range(1, 40):
                term = term * x / (k + 1 + j)
                total = total + term
                if _val(term) <= 1e-18 * _val(total):
                    break
            p = total
        else:
            p = 1.0 - _exp(-x) * sum(x**m / math.factorial(m) for m in range(k + 1))
        out.append((-1) ** k * math.factorial(k) / a ** (k + 1) * p)
    return out


def sa_coefficients(nodes, h, tau):
    """SA-Solver's weights c_j = (1+τ²) ∫_{−h}^{0} e^{(1+τ²)u} ℓ_j(u) du  (§6.2, in EDM coordinates).

    ``nodes``: the λ offsets u_j = λ_j − λ_t ≤ 0 of the interpolation nodes (a list of floats or 0-d
    tensors; tensors keep the graph), ``h`` = λ_t − λ_s > 0, ``tau`` ≥ 0.  ℓ_j is the Lagrange basis polynomial of node j.  With these,
    x_t = e^{−τ²h}(σ_t/σ_s) x_s + Σ_j c_j m_j + σ_t √(1 − e^{−2τ²h}) ξ  (the b_j of §6.2 times (1+τ²)σ_t e^{−τ²λ_t}).
    """
    a = 1.0 + tau**2
    moments = _exp_moments(a, h, len(nodes) - 1)
    out = []
    for j, uj in enumerate(nodes):
        poly = [1.0]                                               # monomial coefficients of ℓ_j
        for k, uk in enumerate(nodes):
            if k != j:
                new = [0.0] * (len(poly) + 1)
                for m, c in enumerate(poly):
                    new[m + 1] = new[m + 1] + c / (uj - uk)
                    new[m] = new[m] - c * uk / (uj - uk)
                poly = new
        out.append(a * sum(c * moments[m] for m, c in enumerate(poly)))
    return out


def _sa_rescale(c, h, a, h_prev, corrector: bool):
    """SA-Solver's O(h³) change of the order-2 weights for few steps (paper App. D; diffusers)."""
    e = _expm1(-a * h) + a * h                                 # a h − 1 + e^{−a h}
    delta = a * (h / 2 - e / (a**2 * h)) if corrector else a * (h**2 / 2 - e / a**2) / h_prev
    return [c[0] + delta, c[1] - delta]


def sa_solver(denoiser, x, sigmas, *, predictor_order=3, corrector_order=4, tau=1.0, tau_window=TAU_WINDOW,
              mode="few_steps", rescale=True, lower_order_final=True, generator=None, callback=None,
              denoise_to_zero=False):
    """SA-Solver: stochastic Adams predictor–corrector, PEC mode (Xue et al. 2023; §6).  NFE = N
    (``mode="few_steps"``) or N + 1 (``"more_steps"``).

    Solves the variance-controlled SDE family (§6.1): τ = 0 is the PF-ODE, τ = 1 the reverse SDE.
    ``tau`` is a number or a callable σ ↦ τ, used on the step from σ_s at τ(σ_s); a number applies
    inside ``tau_window`` = (σ_lo, σ_hi) only (default :data:`TAU_WINDOW`, the [200, 800] steps of
    the linear DDPM ≈ σ ∈ [0.72, 25]; ``None`` = everywhere).  ``predictor_order`` p ∈ 1..4,
    ``corrector_order`` c ∈ 0..4 (0 = no corrector); warm-up and ``lower_order_final`` as diffusers:
    p_i = min(p, i+1, N−i), c_i = min(c, i+2, N−i+1).  ``few_steps``: τ = 0 and no corrector on the
    last step; ``more_steps``: one more evaluation corrects the last step too.  ``rescale`` adds the
    O(h³) term of App. D to order-2 weights (diffusers always does).  The predictor and corrector of
    a step share their noise ξ; the history keeps the model output at the predicted point.
    Deterministic order (τ = 0): min(p + 1, c), or p without corrector.
    """
    _check_range("predictor_order", predictor_order, 1, 4, integer=True)
    _check_range("corrector_order", corrector_order, 0, 4, integer=True)
    if mode not in ("few_steps", "more_steps"):
        raise ValueError(f"mode must be 'few_steps' or 'more_steps', got {mode!r}")
    _check_bool("rescale", rescale)
    _check_bool("lower_order_final", lower_order_final)
    if callable(tau):
        tau_of = tau
    else:
        _check_range("tau", tau, 0.0)
        if tau_window is not None and not (len(tau_window) == 2 and 0 <= tau_window[0] <= tau_window[1]):
            raise ValueError(f"tau_window must be (sigma_lo, sigma_hi) with 0 <= lo <= hi, got {tau_window!r}")

        def tau_of(sig):
            return tau if tau_window is None or tau_window[0] <= sig <= tau_window[1] else 0.0

    s = as_sigmas(sigmas)
    sc = _coef_sigmas(s)                                            # floats unless differentiating
    n = len(s) - 1
    denoised = denoiser(x, s[0])
    _emit(callback, 0, s[0], x, denoised)
    ms, lams = [denoised], [-_log(sc[0])]
    for i in range(n):
        if s[i + 1] == 0:
            x = check_finite(ms[-1], i)
            break
        last = i == n - 1
        t_ = 0.0 if last and mode == "few_steps" else float(tau_of(_val(sc[i])))
        if t_ < 0 or not math.isfinite(t_):
            raise ValueError(f"tau must be finite and >= 0, got {t_} at sigma {_val(sc[i])}")
        h = _log(sc[i] / sc[i + 1])
        lam_t = -_log(sc[i + 1])
        decay = 1.0 if t_ == 0 else _exp(-(t_**2) * h)
        x_lin = (decay * (sc[i + 1] / sc[i])) * x
        xi = _noise(x, generator) if t_ > 0 else None
        noise = (sc[i + 1] * _sqrt(-_expm1(-2.0 * t_**2 * h))) * xi if t_ > 0 else 0.0
        p = min(predictor_order, i + 1, n - i) if lower_order_final else min(predictor_order, i + 1)
        nodes = [lams[-1 - k] - lam_t for k in range(p)]
        c = sa_coefficients(nodes, h, t_)
        if p == 2 and rescale:
            c = _sa_rescale(c, h, 1.0 + t_**2, lams[-1] - lams[-2], corrector=False)
        x_pred = check_finite(x_lin + sum(c[k] * ms[-1 - k] for k in range(p)) + noise, i)
        x = x_pred
        if last and mode == "few_steps":
            break
        m_new = denoiser(x_pred, s[i + 1])
        q = min(corrector_order, i + 2, n - i + 1) if lower_order_final else min(corrector_order, i + 2)
        if q > 0:
            nodes = [0.0 * h] + [lams[-1 - k] - lam_t for k in range(q - 1)]
            c = sa_coefficients(nodes, h, t_)
            if q == 2 and rescale:
                c = _sa_rescale(c, h, 1.0 + t_**2, None, corrector=True)
            hist = [m_new] + [ms[-1 - k] for k in range(q - 1)]
            x = check_finite(x_lin + sum(ck * mk for ck, mk in zip(c, hist)) + noise, i)
        _emit(callback, i + 1, s[i + 1], x, m_new)
        ms.append(m_new)
        lams.append(lam_t)
        del ms[:-4], lams[:-4]
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




# -- registry, NFE accounting (§0.3) and orders ---------------------------------------------------
SOLVERS: dict[str, Callable] = {
    "euler": euler, "ddim": ddim, "ddpm_ancestral": ddpm_ancestral, "heun": heun,
    "dpmpp_2m": dpmpp_2m, "dpmpp_3m": dpmpp_3m, "unipc": unipc, "ipndm": ipndm, "sa_solver": sa_solver,
    "rk4": rk4,
}

_NFE: dict[str, Callable[..., int]] = {
    "euler": lambda n, final_zero, **o: n,
    "ddim": lambda n, final_zero, **o: n,
    "ddpm_ancestral": lambda n, final_zero, **o: n,
    "heun": lambda n, final_zero, **o: 2 * n - (1 if final_zero else 0),
    "dpmpp_2m": lambda n, final_zero, **o: n,
    "dpmpp_3m": lambda n, final_zero, **o: n,
    "unipc": lambda n, final_zero, **o: n,
    "ipndm": lambda n, final_zero, **o: n,
    "sa_solver": lambda n, final_zero, mode="few_steps", **o: n + (1 if mode == "more_steps" and not final_zero else 0),
    "rk4": lambda n, final_zero, **o: 4 * n,
}

_ORDER: dict[str, Callable[..., int]] = {
    "euler": lambda **o: 1,
    "ddim": lambda **o: 1,
    "ddpm_ancestral": lambda **o: 1,
    "heun": lambda **o: 2,
    "dpmpp_2m": lambda **o: 2,
    "dpmpp_3m": lambda **o: 3,
    "unipc": lambda order=3, corrector=True, **o: order + (1 if corrector else 0),
    "ipndm": lambda max_order=4, **o: max_order,
    "sa_solver": lambda predictor_order=3, corrector_order=4, **o: (
        min(predictor_order + 1, corrector_order) if corrector_order else predictor_order),
    "rk4": lambda **o: 4,
}


def _key(name: str) -> str:
    key = str(name).lower().replace("-", "_").replace("++", "pp")
    if key not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; expected one of {sorted(SOLVERS)}")
    return key


#: integer options whose value changes a solver's NFE or order, and their ranges (as the solvers check)
_INT_OPTIONS = {"order": (1, 3), "max_order": (1, 4), "predictor_order": (1, 4), "corrector_order": (0, 4)}


def _check_opts(key: str, opts: dict) -> None:
    """``opts`` must be keyword options of solver ``key``, and the ones :func:`nfe` and :func:`solver_order`
    read must have valid values — a typo would otherwise give a silently wrong count or order."""
    import inspect

    params = inspect.signature(SOLVERS[key]).parameters
    allowed = {k for k, v in params.items() if v.kind is v.KEYWORD_ONLY} - {"callback", "denoise_to_zero"}
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for solver {key!r}; expected some of {sorted(allowed)}")
    for name, (lo, hi) in _INT_OPTIONS.items():
        if name in opts:
            _check_range(name, opts[name], lo, hi, integer=True)
    if "corrector" in opts:
        _check_bool("corrector", opts["corrector"])
    if opts.get("mode", "few_steps") not in ("few_steps", "more_steps"):
        raise ValueError(f"mode must be 'few_steps' or 'more_steps', got {opts['mode']!r}")


def get(name: str) -> Callable:
    """The solver function registered under ``name`` (case-insensitive; "-" = "_", "dpm++" = "dpmpp")."""
    return SOLVERS[_key(name)]


def nfe(name: str, steps: int, *, final_zero: bool = False, denoise_to_zero: bool = False, **opts) -> int:
    """Network evaluations of solver ``name`` over ``steps`` steps (§0.3).

    ``final_zero``: the schedule ends in σ = 0 (matters for Heun: 2N − 1, and SA-Solver "more_steps");
    ``opts``: the solver's options (``mode`` for sa_solver); others do not change the count.  An option
    the solver does not have, or a bad value of one that counts, raises ValueError.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    key = _key(name)
    _check_opts(key, opts)
    return _NFE[key](int(steps), final_zero, **opts) + (1 if denoise_to_zero else 0)


def solver_order(name: str, **opts) -> int:
    """Global order of convergence of the deterministic solver ``name`` with options ``opts``.

    Euler/DDIM/DDPM 1, Heun 2, DPM-Solver++(2M) 2, (3M) 3, UniPC p + 1 with the corrector (p without),
    iPNDM ``max_order`` on uniform-σ grids (2 on graded grids), SA-Solver at τ = 0 min(p + 1, c)
    (p without corrector), RK4 4.  The "order-matched" schedule optimizers read this.  Measured
    against closed-form Gaussian solutions in tests/test_solvers_multistep.py.
    """
    key = _key(name)
    _check_opts(key, opts)
    return int(_ORDER[key](**opts))


# -- command line ---------------------------------------------------------------------------------
def _schedule_for(model, schedule: str, steps: int | None):
    """A Schedule from a JSON file, or the baseline ``schedule`` over the model's σ range."""
    import inspect
    from pathlib import Path

    from .schedules import BASELINES, Schedule
    from .schedules import get as get_baseline

    if schedule.endswith(".json") or Path(schedule).is_file():
        if not Path(schedule).is_file():
            raise FileNotFoundError(f"no such schedule file: {schedule}")
        s = Schedule.from_json(schedule)
        if steps is not None and steps != s.steps:
            raise ValueError(f"--steps {steps} contradicts the {s.steps}-step schedule in {schedule}")
        return s
    if steps is None:
        raise ValueError(f"--steps is needed with the baseline schedule {schedule!r}")
    key = schedule.replace("_", "-").lower()
    kw = {}
    if key in BASELINES and "sigma_min" in inspect.signature(BASELINES[key]).parameters:
        kw = {"sigma_min": float(model.sigma_min), "sigma_max": float(model.sigma_max)}
    return get_baseline(schedule, steps, **kw)


def _save_samples(path: str, samples: torch.Tensor, meta: dict) -> None:
    import io
    import json

    import numpy as np

    from .checkpoints import atomic_write_bytes

    arr = samples.detach().cpu()
    if path.endswith(".safetensors"):
        from safetensors.torch import save

        data = save({"samples": arr.contiguous()}, metadata={"meta": json.dumps(meta)})
    elif path.endswith(".npz") or path.endswith(".npy"):
        buf = io.BytesIO()
        if path.endswith(".npz"):
            np.savez(buf, samples=arr.numpy(), sigmas=np.asarray(meta["sigmas"]), meta=json.dumps(meta))
        else:
            np.save(buf, arr.numpy())
        data = buf.getvalue()
    else:
        raise ValueError(f"--out must end in .safetensors, .npz or .npy, got {path!r}")
    atomic_write_bytes(path, data)


def sample(model, solver: str, schedule, n: int, seed: int = 0, batch: int = 256, dtype=torch.float64,
           device="cpu", **opts) -> torch.Tensor:
    """``n`` samples of ``model`` (a denoiser with ``event_shape``) with ``solver`` on ``schedule``.

    Noise z ~ N(0, I) from ``torch.Generator().manual_seed(seed)`` drawn once for all n (so a batch
    size does not change the result), x_0 = σ_0 z; a stochastic solver gets a generator seeded with
    ``seed + 1``.  Returns (n, *event_shape) on CPU.
    """
    fn = get(solver)
    if n < 1 or batch < 1:
        raise ValueError(f"n and batch must be >= 1, got n={n}, batch={batch}")
    import inspect

    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n, *model.event_shape, generator=g, dtype=dtype)
    if "generator" in inspect.signature(fn).parameters:
        opts = {**opts, "generator": torch.Generator(device=device).manual_seed(int(seed) + 1)}
    s0 = float(schedule.sigmas[0])
    out = []
    with torch.no_grad():
        for i in range(0, n, batch):
            out.append(fn(model, s0 * z[i:i + batch].to(device), schedule, **opts).cpu())
    return torch.cat(out)


def cli_sample(argv: list[str]) -> int:
    """``python -m dpmsched sample --model NAME --solver S --schedule FILE.json|--baseline karras --steps N --n 64
    --seed 0 --out samples.safetensors|.npz|.npy [--opt key=value]``"""
    import argparse
    import time

    from .denoisers import load
    from .optimize import _parse_opt

    p = argparse.ArgumentParser(prog="python -m dpmsched sample", description=cli_sample.__doc__)
    p.add_argument("--model", required=True, help="model name (e.g. digits-empirical) or checkpoint/diffusers folder")
    p.add_argument("--solver", default="euler", help=f"one of {sorted(SOLVERS)} (default: euler)")
    p.add_argument("--schedule", "--baseline", default="karras",
                   help="schedule JSON file or baseline name, e.g. karras (default: karras)")
    p.add_argument("--steps", type=int, default=None, help="number of steps N (needed for a baseline)")
    p.add_argument("--n", type=int, default=64, help="number of samples (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    p.add_argument("--batch", type=int, default=256, help="samples per solver call (default: 256)")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"], help="state dtype (default: float64)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="solver option (JSON value), repeatable")
    p.add_argument("--out", required=True, help="output file: .safetensors, .npz or .npy")
    a = p.parse_args(argv)
    if not a.out.endswith((".safetensors", ".npz", ".npy")):
        p.error(f"--out must end in .safetensors, .npz or .npy, got {a.out!r}")
    model = load(a.model, device=a.device)
    sched = _schedule_for(model, a.schedule, a.steps)
    opts = dict(_parse_opt(o) for o in a.opt)
    t0 = time.perf_counter()
    x = sample(model, a.solver, sched, a.n, a.seed, a.batch, getattr(torch, a.dtype), a.device, **opts)
    secs = time.perf_counter() - t0
    meta = {"model": a.model, "solver": a.solver, "opts": opts, "seed": a.seed, "schedule": sched.name,
            "sigmas": [float(v) for v in sched.sigmas], "nfe": sched.nfe(a.solver, **opts), "seconds": secs}
    _save_samples(a.out, x, meta)
    print(f"wrote {a.out}: {tuple(x.shape)} samples, {a.solver} on {sched}, NFE {meta['nfe']}, {secs:.2f} s")
    return 0
