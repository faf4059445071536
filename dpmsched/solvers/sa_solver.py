"""SA-Solver: stochastic Adams predictor–corrector on the variance-controlled SDE family (§6)."""
from __future__ import annotations

import math

from ..noise import DiscreteVP
from .base import (
    as_sigmas,
    check_bool,
    check_finite,
    check_number,
    coef_sigmas,
    emit,
    fexp,
    fexpm1,
    finish,
    flog,
    fsqrt,
    gaussian_like,
    scalar_value,
)

__all__ = ["sa_solver", "sa_coefficients", "TAU_WINDOW"]


def _tau_window_default() -> tuple[float, float]:
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
        if scalar_value(x) < 1.0:
            term = fexp(-x) * x ** (k + 1) / math.factorial(k + 1)
            total = term
            for j in range(1, 40):
                term = term * x / (k + 1 + j)
                total = total + term
                if scalar_value(term) <= 1e-18 * scalar_value(total):
                    break
            p = total
        else:
            p = 1.0 - fexp(-x) * sum(x**m / math.factorial(m) for m in range(k + 1))
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
    e = fexpm1(-a * h) + a * h                                 # a h − 1 + e^{−a h}
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
    check_number("predictor_order", predictor_order, 1, 4, integer=True)
    check_number("corrector_order", corrector_order, 0, 4, integer=True)
    if mode not in ("few_steps", "more_steps"):
        raise ValueError(f"mode must be 'few_steps' or 'more_steps', got {mode!r}")
    check_bool("rescale", rescale)
    check_bool("lower_order_final", lower_order_final)
    if callable(tau):
        tau_of = tau
    else:
        check_number("tau", tau, 0.0)
        if tau_window is not None and not (len(tau_window) == 2 and 0 <= tau_window[0] <= tau_window[1]):
            raise ValueError(f"tau_window must be (sigma_lo, sigma_hi) with 0 <= lo <= hi, got {tau_window!r}")

        def tau_of(sig):
            return tau if tau_window is None or tau_window[0] <= sig <= tau_window[1] else 0.0

    s = as_sigmas(sigmas)
    sc = coef_sigmas(s)                                            # floats unless differentiating
    n = len(s) - 1
    denoised = denoiser(x, s[0])
    emit(callback, 0, s[0], x, denoised)
    ms, lams = [denoised], [-flog(sc[0])]
    for i in range(n):
        if s[i + 1] == 0:
            x = check_finite(ms[-1], i)
            break
        last = i == n - 1
        t_ = 0.0 if last and mode == "few_steps" else float(tau_of(scalar_value(sc[i])))
        if t_ < 0 or not math.isfinite(t_):
            raise ValueError(f"tau must be finite and >= 0, got {t_} at sigma {scalar_value(sc[i])}")
        h = flog(sc[i] / sc[i + 1])
        lam_t = -flog(sc[i + 1])
        decay = 1.0 if t_ == 0 else fexp(-(t_**2) * h)
        x_lin = (decay * (sc[i + 1] / sc[i])) * x
        xi = gaussian_like(x, generator) if t_ > 0 else None
        noise = (sc[i + 1] * fsqrt(-fexpm1(-2.0 * t_**2 * h))) * xi if t_ > 0 else 0.0
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
        emit(callback, i + 1, s[i + 1], x, m_new)
        ms.append(m_new)
        lams.append(lam_t)
        del ms[:-4], lams[:-4]
    return finish(denoiser, x, s, denoise_to_zero, callback)

