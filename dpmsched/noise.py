"""Noise-level conventions: EDM σ ↔ λ = −log σ ↔ VP (α_t, σ_t, t).  (docs/math.md §0.1, §0.4)

Everything in dpmsched stores a schedule as **EDM σ** (float64).  A VP model sees
``x_t = α_t x0 + σ_t ε`` with ``α_t² + σ_t² = 1``; dividing by α_t gives EDM coordinates
``x̃ = x0 + σ ε`` with ``σ = σ_t/α_t = e^{−λ_t}``, where ``λ_t = log(α_t/σ_t)`` is the half-log-SNR.
So the one conversion every VP model needs is ``λ = −log σ`` followed by the model's inverse
``t(λ)``; the functions here do exactly that and nothing else.

All functions take and return float64 numpy arrays (scalars broadcast).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "sigma_to_lambda", "lambda_to_sigma", "vp_alpha_sigma", "sigma_from_alphas_cumprod",
    "LinearVP", "DiscreteVP", "EDMTimeFit", "linear_betas",
]


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def sigma_to_lambda(sigma) -> np.ndarray:
    """λ = −log σ (half-log-SNR of the EDM noise level σ > 0).  §0.1."""
    return -np.log(_f64(sigma))


def lambda_to_sigma(lam) -> np.ndarray:
    """σ = e^{−λ}.  §0.1."""
    return np.exp(-_f64(lam))


def vp_alpha_sigma(sigma) -> tuple[np.ndarray, np.ndarray]:
    """VP (α_t, σ_t) at EDM level σ: α = 1/√(1+σ²), σ_t = σ/√(1+σ²).  §0.1.

    Computed through λ so that it is accurate at both ends (σ = 0.002 and σ = 80).
    """
    lam = sigma_to_lambda(sigma)
    alpha = np.exp(-0.5 * np.logaddexp(0.0, -2.0 * lam))   # 1/√(1+e^{−2λ})
    sig = np.exp(-0.5 * np.logaddexp(0.0, 2.0 * lam))      # 1/√(1+e^{2λ})
    return alpha, sig


def sigma_from_alphas_cumprod(alphas_cumprod) -> np.ndarray:
    """EDM σ of a discrete DDPM step: σ_n = √((1 − ᾱ_n)/ᾱ_n).  §0.4."""
    a = _f64(alphas_cumprod)
    return np.sqrt((1.0 - a) / a)


def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """The DDPM linear β table (Ho et al. 2020), shape (T,)."""
    if T < 2:
        raise ValueError(f"T must be >= 2, got {T}")
    return np.linspace(beta_start, beta_end, T, dtype=np.float64)


@dataclass(frozen=True)
class LinearVP:
    """Continuous linear VP SDE (β(t) = β_0 + t(β_1 − β_0), t ∈ [0, 1]).  §0.4.

    ``log α_t = −¼t²(β_1−β_0) − ½tβ_0``.  Default range t ∈ [1e-3, 1].
    """

    beta_0: float = 0.1
    beta_1: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0

    def log_alpha(self, t) -> np.ndarray:
        t = _f64(t)
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def lam(self, t) -> np.ndarray:
        """λ_t = log α_t − log σ_t, with σ_t = √(1 − α_t²)."""
        la = self.log_alpha(t)
        return la - 0.5 * np.log(-np.expm1(2.0 * la))

    def sigma(self, t) -> np.ndarray:
        """EDM σ(t) = σ_t/α_t = √(e^{−2 log α_t} − 1)."""
        return np.sqrt(np.expm1(-2.0 * self.log_alpha(t)))

    def t_of_lambda(self, lam) -> np.ndarray:
        """Closed-form inverse of λ_t (DPM-Solver's ``inverse_lambda``)."""
        lam = _f64(lam)
        db = self.beta_1 - self.beta_0
        tmp = 2.0 * db * np.logaddexp(-2.0 * lam, 0.0)
        delta = self.beta_0**2 + tmp
        return tmp / (np.sqrt(delta) + self.beta_0) / db

    def t_of_sigma(self, sigma) -> np.ndarray:
        return self.t_of_lambda(sigma_to_lambda(sigma))


@dataclass(frozen=True)
class DiscreteVP:
    """Discrete DDPM noise table ᾱ_n (n = 0..T−1, 0-indexed training steps).  §0.4.

    The continuous time of step n is ``t_n = (n+1)/T`` and ``log α_t`` is linearly
    interpolated in t (DPM-Solver's ``NoiseScheduleVP('discrete')``); the model is called with the
    index ``T·(t − 1/T)`` (= n at the grid points).
    """

    alphas_cumprod: np.ndarray

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteVP:
        return cls(np.cumprod(1.0 - linear_betas(T, beta_start, beta_end)))

    def __post_init__(self):
        a = _f64(self.alphas_cumprod)
        if a.ndim != 1 or a.size < 2:
            raise ValueError(f"alphas_cumprod must be a 1-D array of length >= 2, got shape {a.shape}")
        if not np.all(np.isfinite(a)) or np.any(a <= 0) or np.any(a >= 1):
            raise ValueError("alphas_cumprod must lie strictly inside (0, 1)")
        if np.any(np.diff(a) >= 0):
            i = int(np.argmax(np.diff(a) >= 0))
            raise ValueError(f"alphas_cumprod must be strictly decreasing; fails at index {i + 1}")
        object.__setattr__(self, "alphas_cumprod", a)

    @property
    def T(self) -> int:
        return int(self.alphas_cumprod.size)

    @property
    def sigmas(self) -> np.ndarray:
        """EDM σ of every training step, increasing with n, shape (T,)."""
        return sigma_from_alphas_cumprod(self.alphas_cumprod)

    @property
    def t_min(self) -> float:
        return 1.0 / self.T

    @property
    def t_max(self) -> float:
        return 1.0

    def _grid(self):
        t = (np.arange(self.T) + 1.0) / self.T
        log_alpha = 0.5 * np.log(self.alphas_cumprod)
        return t, log_alpha

    def log_alpha(self, t) -> np.ndarray:
        t_grid, la = self._grid()
        return np.interp(_f64(t), t_grid, la)

    def lam(self, t) -> np.ndarray:
        la = self.log_alpha(t)
        return la - 0.5 * np.log(-np.expm1(2.0 * la))

    def sigma(self, t) -> np.ndarray:
        return np.sqrt(np.expm1(-2.0 * self.log_alpha(t)))

    def t_of_lambda(self, lam) -> np.ndarray:
        """Inverse of λ_t by interpolating log α in λ (λ is decreasing in t)."""
        lam = _f64(lam)
        t_grid, la = self._grid()
        log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * lam)
        # log α is decreasing in t: interpolate on the reversed (increasing) table.
        return np.interp(log_alpha, la[::-1], t_grid[::-1])

    def t_of_sigma(self, sigma) -> np.ndarray:
        return self.t_of_lambda(sigma_to_lambda(sigma))

    def index_of_t(self, t) -> np.ndarray:
        """Continuous model input T·(t − 1/T) (the discrete step index at grid points)."""
        return self.T * (_f64(t) - 1.0 / self.T)

    def index_of_sigma(self, sigma) -> np.ndarray:
        return self.index_of_t(self.t_of_sigma(sigma))


@dataclass(frozen=True)
class EDMTimeFit:
    """A VP curve through (t = eps_s, σ_min) and (t = 1, σ_max), used to define "uniform t" for
    EDM models (diff-sampler ``get_schedule('time_uniform')``).  §0.4.

    ``σ(t) = √(exp(½β_d t² + β_min t) − 1)`` with
    ``β_d = 2(ln(σ_min²+1)/eps_s − ln(σ_max²+1))/(eps_s − 1)``, ``β_min = ln(σ_max²+1) − ½β_d``.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    eps_s: float = 1e-3

    @property
    def t_min(self) -> float:
        return self.eps_s

    @property
    def t_max(self) -> float:
        return 1.0

    def _betas(self):
        e = self.eps_s
        beta_d = 2.0 * (np.log(self.sigma_min**2 + 1.0) / e - np.log(self.sigma_max**2 + 1.0)) / (e - 1.0)
        beta_min = np.log(self.sigma_max**2 + 1.0) - 0.5 * beta_d
        return beta_d, beta_min

    def sigma(self, t) -> np.ndarray:
        beta_d, beta_min = self._betas()
        t = _f64(t)
        return np.sqrt(np.expm1(0.5 * beta_d * t**2 + beta_min * t))

    def t_of_sigma(self, sigma) -> np.ndarray:
        """Positive root of ½β_d t² + β_min t = ln(1 + σ²)."""
        beta_d, beta_min = self._betas()
        rhs = np.log1p(_f64(sigma) ** 2)
        return (-beta_min + np.sqrt(beta_min**2 + 2.0 * beta_d * rhs)) / beta_d

    def t_of_lambda(self, lam) -> np.ndarray:
        return self.t_of_sigma(lambda_to_sigma(lam))
