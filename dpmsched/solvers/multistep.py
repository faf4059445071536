"""Multistep solvers: DPM-Solver++(2M/3M) (§2.3), UniPC (§2.4), iPNDM (§2.5), in EDM coordinates."""
from __future__ import annotations

import torch

from .base import as_sigmas, check_bool, check_finite, check_number, emit, finish, step_order

__all__ = ["dpmpp_step", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm"]


def dpmpp_step(x, denoised, s, i, order, lam=None):
    """Step i of DPM-Solver++ (data prediction, midpoint form, §2.3; λ = −log σ, α = 1): from σ = ``s[i]`` to
    ``s[i + 1]`` > 0 with ``order`` ∈ {1, 2, 3}, given the model outputs ``denoised[-order:]`` at
    ``s[i − order + 1]``, …, ``s[i]`` (oldest first).

    Order 1 is DDIM, x ← (σ_{i+1}/σ_i) x − (e^{−h} − 1) D_i with h = λ_{i+1} − λ_i; order 2 adds
    −(e^{−h} − 1)(D_i − D_{i−1})/(2 r_0), r_0 = (λ_i − λ_{i−1})/h.  ``s``: the schedule tensor, or any sequence
    of float64 tensors that broadcast against ``x``; ``lam``: −log σ of ``s`` if the caller has it.  The one
    implementation of the step: :func:`dpmpp_2m` / :func:`dpmpp_3m` call it with their history (their arithmetic,
    gradients in the schedule included, is bit for bit what it was before the step was factored out), and the
    step-cost bound (``dpmsched.optimize.bound_step``) with the teacher's, for every grid triplet at once
    (``s = [σ_p, σ_a, σ_c]`` broadcast over (p, c), ``i = 1``).
    """
    if order not in (1, 2, 3) or i - order + 1 < 0 or len(denoised) < order:
        raise ValueError(f"dpmpp_step: order must be 1-3 with order outputs and order <= i + 1, "
                         f"got order={order!r}, i={i}, {len(denoised)} outputs")
    if lam is None:
        lam = {j: -torch.log(s[j]) for j in range(i - order + 1, i + 1)}
    h = torch.log(s[i] / s[i + 1])
    phi1 = torch.expm1(-h)                                # e^{−h} − 1
    x = (s[i + 1] / s[i]) * x - phi1 * denoised[-1]
    if order >= 2:
        r0 = (lam[i] - lam[i - 1]) / h
        d1_0 = (denoised[-1] - denoised[-2]) / r0
        if order == 2:
            x = x - phi1 * 0.5 * d1_0
        else:
            r1 = (lam[i - 1] - lam[i - 2]) / h
            d1_1 = (denoised[-2] - denoised[-3]) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi2 = phi1 / h + 1.0
            phi3 = phi2 / h - 0.5
            x = x + phi2 * d1 - phi3 * d2
    return x


def _dpmpp(denoiser, x, sigmas, order, lower_order_final, callback, denoise_to_zero):
    """DPM-Solver++(kM): :func:`dpmpp_step` of order :func:`~.base.step_order` at every step (§2.3)."""
    check_bool("lower_order_final", lower_order_final)
    s = as_sigmas(sigmas)
    n = len(s) - 1
    lam = -torch.log(s[:n])                                  # λ_i of the evaluated nodes
    ms = []
    for i in range(n):
        denoised = denoiser(x, s[i])
        emit(callback, i, s[i], x, denoised)
        ms.append(denoised)
        if s[i + 1] == 0:                                      # first-order jump to the data
            x = check_finite(denoised, i)
            break
        x = check_finite(dpmpp_step(x, ms, s, i, step_order(i, n, order, lower_order_final), lam), i)
        del ms[:-3]
    return finish(denoiser, x, s, denoise_to_zero, callback)


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
    check_number("order", order, 1, 3, integer=True)
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    check_bool("corrector", corrector)
    check_bool("lower_order_final", lower_order_final)
    s = as_sigmas(sigmas)
    n = len(s) - 1
    lam = -torch.log(s[:n])
    denoised = denoiser(x, s[0])
    emit(callback, 0, s[0], x, denoised)
    ms = [denoised]
    for i in range(n):
        if s[i + 1] == 0:
            x = check_finite(ms[-1], i)
            break
        h = torch.log(s[i] / s[i + 1])
        p = step_order(i, n, order, lower_order_final)
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
        emit(callback, i + 1, s[i + 1], x, m_new)
        ms.append(m_new)
        del ms[:-3]
    return finish(denoiser, x, s, denoise_to_zero, callback)


#: iPNDM's Adams–Bashforth coefficients of orders 1–4 (§2.5)
_IPNDM = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def ipndm(denoiser, x, sigmas, *, max_order=4, lower_order_final=False, callback=None, denoise_to_zero=False):
    """iPNDM (Zhang & Chen 2023, as in diff-sampler; §2.5): fixed-coefficient Adams–Bashforth on
    d = (x − D)/σ in σ.  NFE = N.

    The coefficients assume equal steps in σ, so the order is ``max_order`` on a uniform-σ grid and drops
    to 2 on smoothly graded grids such as Karras (step ratios 1 + O(1/N)).  ``lower_order_final``
    (default False, as diff-sampler) lowers the last steps' order like the other multistep solvers.
    """
    check_number("max_order", max_order, 1, 4, integer=True)
    check_bool("lower_order_final", lower_order_final)
    s = as_sigmas(sigmas)
    n = len(s) - 1
    ds = []
    for i in range(n):
        denoised = denoiser(x, s[i])
        emit(callback, i, s[i], x, denoised)
        ds.append((x - denoised) / s[i])
        coef = _IPNDM[step_order(i, n, max_order, lower_order_final) - 1]
        x = check_finite(x + (s[i + 1] - s[i]) * sum(c * ds[-1 - k] for k, c in enumerate(coef)), i)
        del ds[:-3]
    return finish(denoiser, x, s, denoise_to_zero, callback)
