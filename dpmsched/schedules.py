"""The one schedule type and every hand-made baseline.  (docs/math.md §0.3, §1)

A :class:`Schedule` is a strictly decreasing float64 array of **EDM noise levels**
``σ_0 = σ_max > σ_1 > … > σ_N = σ_min > 0`` in sampling order, optionally followed by a single
trailing 0 (a final jump to the data, as EDM's Heun and k-diffusion do).  ``N = len(sigmas) − 1``
is the number of solver steps.  Anything else raises :class:`ValueError` naming the problem and
the offending index, so a bad schedule never reaches a solver as a silent NaN.

This is the bottom of the package with :mod:`dpmsched.noise`: it imports nothing else of dpmsched.  NFE
accounting is the solvers' (:func:`dpmsched.solvers.nfe`), export to diffusers and k-diffusion the adapters'
(:func:`dpmsched.adapters.to_diffusers`, :func:`dpmsched.adapters.to_kdiffusion`).

Baselines (s_i = i/N, i = 0..N):

=================  ===========================================================================
``karras``         σ_i = (σ_max^{1/ρ} + s_i(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ      (EDM, ρ = 7)
``uniform_logsnr`` σ_i = σ_max (σ_min/σ_max)^{s_i}   (uniform λ = −log σ; the ρ → ∞ limit)
``uniform_t``      t_i uniform on a VP time axis, σ_i = σ(t_i)    (EDM models: §0.4 VP fit)
``quadratic_t``    t_i = (√t_max + s_i(√t_min − √t_max))², σ_i = σ(t_i)
``cosine``         iDDPM cosine schedule uniform in t: σ = tan θ, θ uniform in [atan σ_max, atan σ_min]
``ddim_uniform``   discrete DDIM steps τ_j = j·⌊T/S⌋ of a DDPM ᾱ table
``iddpm_respace``  discrete steps round(linspace(1, T, S)) (1-indexed)
=================  ===========================================================================
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .noise import DiscreteVP, EDMTimeFit, sigma_to_lambda

__all__ = ["Schedule", "BASELINES", "get"]

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return int(steps)


def _check_range(sigma_min: float, sigma_max: float) -> None:
    for name, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a finite positive number, got {v!r}")
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min ({sigma_min}) must be < sigma_max ({sigma_max})")


class Schedule:
    """A validated sampling schedule of EDM noise levels (sampling order, float64).

    Attributes
    ----------
    sigmas : np.ndarray, shape (N+1,), float64, read-only
        σ_0 = σ_max > … > σ_N = σ_min > 0, optionally with one trailing 0.
    name : str
        Where it came from ("karras", "huang", …).
    meta : dict
        JSON-serialisable details (parameters, objective value, wall time, …).
    """

    __slots__ = ("sigmas", "name", "meta")

    def __init__(self, sigmas, name: str = "custom", meta: dict | None = None):
        self.sigmas = self._validate(sigmas)
        self.name = str(name)
        self.meta = dict(meta or {})

    @staticmethod
    def _validate(sigmas) -> np.ndarray:
        try:
            import torch

            if isinstance(sigmas, torch.Tensor):
                sigmas = sigmas.detach().cpu().double().numpy()
        except ImportError:  # pragma: no cover - torch is a hard dependency
            pass
        s = np.array(sigmas, dtype=np.float64, copy=True)
        if s.ndim != 1:
            raise ValueError(f"sigmas must be 1-D, got shape {s.shape}")
        if s.size < 2:
            raise ValueError(f"a schedule needs at least 2 points (1 step), got {s.size}")
        bad = np.flatnonzero(~np.isfinite(s))
        if bad.size:
            raise ValueError(f"sigmas must be finite; sigmas[{bad[0]}] = {s[bad[0]]}")
        neg = np.flatnonzero(s < 0)
        if neg.size:
            raise ValueError(f"sigmas must be >= 0; sigmas[{neg[0]}] = {s[neg[0]]}")
        zero = np.flatnonzero(s[:-1] == 0)
        if zero.size:
            raise ValueError(f"only the last sigma may be 0; sigmas[{zero[0]}] = 0")
        if s[-1] == 0 and s.size < 3:
            raise ValueError("a schedule ending in 0 needs at least one positive step before it")
        nondec = np.flatnonzero(np.diff(s) >= 0)
        if nondec.size:
            i = int(nondec[0]) + 1
            raise ValueError(
                f"sigmas must be strictly decreasing; sigmas[{i}] = {s[i]} >= sigmas[{i - 1}] = {s[i - 1]}")
        s.setflags(write=False)
        return s

    # -- basic properties -------------------------------------------------------------------
    @property
    def steps(self) -> int:
        """N, the number of solver steps (intervals)."""
        return self.sigmas.size - 1

    def __len__(self) -> int:
        return self.sigmas.size

    @property
    def has_final_zero(self) -> bool:
        return bool(self.sigmas[-1] == 0.0)

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_min(self) -> float:
        """The smallest positive σ (σ_N, or σ_{N−1} when a trailing 0 is present)."""
        return float(self.sigmas[-2] if self.has_final_zero else self.sigmas[-1])

    @property
    def lambdas(self) -> np.ndarray:
        """λ_i = −log σ_i (increasing; +inf for a trailing 0)."""
        with np.errstate(divide="ignore"):
            return sigma_to_lambda(self.sigmas)

    def to_t(self, noise) -> np.ndarray:
        """Times t_i of a VP model (``noise`` has ``t_of_sigma``, e.g. LinearVP, DiscreteVP).  §0.3."""
        if self.has_final_zero:
            raise ValueError("a trailing sigma = 0 has no VP time; use .without_final_zero()")
        return noise.t_of_sigma(self.sigmas)

    def with_final_zero(self) -> Schedule:
        if self.has_final_zero:
            return self
        return Schedule(np.append(self.sigmas, 0.0), self.name, {**self.meta, "final_zero": True})

    def without_final_zero(self) -> Schedule:
        if not self.has_final_zero:
            return self
        meta = {k: v for k, v in self.meta.items() if k != "final_zero"}
        return Schedule(self.sigmas[:-1], self.name, meta)

    def to_torch(self, device=None, dtype=None):
        import torch

        return torch.as_tensor(self.sigmas.copy(), dtype=dtype or torch.float64, device=device)

    # -- I/O ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"sigmas": [float(v) for v in self.sigmas], "name": self.name, "meta": self.meta}

    def to_json(self, **kw) -> str:
        """JSON text ``{"sigmas": [...], "name": ..., "meta": {...}}``; floats round-trip exactly.

        (Write it with :func:`dpmsched.files.atomic_write_text`; this module does no file output.)
        """
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: dict) -> Schedule:
        if not isinstance(d, dict) or "sigmas" not in d:
            raise ValueError("a schedule JSON must be an object with a 'sigmas' list")
        return cls(d["sigmas"], d.get("name", "custom"), d.get("meta") or {})

    @classmethod
    def from_json(cls, text_or_path) -> Schedule:
        """Parse JSON text, or read it from a file path."""
        text, where = str(text_or_path), "schedule JSON"
        if not text.lstrip().startswith("{"):
            where = f"schedule file {text_or_path}"
            try:
                with open(text, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise ValueError(f"cannot read schedule file {text_or_path!r}: {e}") from e
            except UnicodeDecodeError:
                raise ValueError(f"invalid {where}: not a text file") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"invalid {where}: {e}") from e
        if where == "schedule JSON":
            return cls.from_dict(d)
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

    # -- comparison and display ---------------------------------------------------------------
    def __eq__(self, other) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return (self.name == other.name and self.meta == other.meta
                and np.array_equal(self.sigmas, other.sigmas))

    __hash__ = None

    def __repr__(self) -> str:
        body = ", ".join(f"{v:.4g}" for v in self.sigmas)
        return f"Schedule({self.name!r}, steps={self.steps}, sigmas=[{body}])"

    # -- baselines (docs/math.md §1) ---------------------------------------------------------
    @classmethod
    def karras(cls, steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
               rho: float = 7.0) -> Schedule:
        """EDM schedule: σ_i = (σ_max^{1/ρ} + i/N (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.  §1."""
        n = _check_steps(steps)
        _check_range(sigma_min, sigma_max)
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho must be a finite positive number, got {rho!r}")
        s = np.linspace(0.0, 1.0, n + 1)
        a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
        sig = (a + s * (b - a)) ** rho
        sig[0], sig[-1] = sigma_max, sigma_min
        return cls(sig, "karras", {"rho": float(rho)})

    @classmethod
    def uniform_logsnr(cls, steps: int, sigma_min: float = SIGMA_MIN,
                       sigma_max: float = SIGMA_MAX) -> Schedule:
        """Uniform λ = −log σ, i.e. geometric σ: σ_i = σ_max (σ_min/σ_max)^{i/N}.  §1."""
        n = _check_steps(steps)
        _check_range(sigma_min, sigma_max)
        sig = np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n + 1))
        sig[0], sig[-1] = sigma_max, sigma_min
        return cls(sig, "uniform-logsnr")

    @classmethod
    def _from_times(cls, t: np.ndarray, noise, name: str, sigma_min, sigma_max) -> Schedule:
        sig = np.asarray(noise.sigma(t), dtype=np.float64)
        sig[0], sig[-1] = sigma_max, sigma_min
        return cls(sig, name, {"noise": type(noise).__name__})

    @classmethod
    def uniform_t(cls, steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                  noise=None) -> Schedule:
        """Uniform in VP time t.  §1, §0.4.

        ``noise`` is a VP noise schedule (``LinearVP``, ``DiscreteVP``); by default the VP curve fit
        through (1e-3, σ_min) and (1, σ_max) that diff-sampler uses for EDM models.
        """
        n = _check_steps(steps)
        _check_range(sigma_min, sigma_max)
        noise = noise if noise is not None else EDMTimeFit(sigma_min, sigma_max)
        t_hi, t_lo = float(noise.t_of_sigma(sigma_max)), float(noise.t_of_sigma(sigma_min))
        t = t_hi + np.linspace(0.0, 1.0, n + 1) * (t_lo - t_hi)
        return cls._from_times(t, noise, "uniform-t", sigma_min, sigma_max)

    @classmethod
    def quadratic_t(cls, steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                    noise=None) -> Schedule:
        """Quadratic in VP time: t_i = (√t_max + i/N (√t_min − √t_max))² (DDIM).  §1."""
        n = _check_steps(steps)
        _check_range(sigma_min, sigma_max)
        noise = noise if noise is not None else EDMTimeFit(sigma_min, sigma_max)
        t_hi, t_lo = float(noise.t_of_sigma(sigma_max)), float(noise.t_of_sigma(sigma_min))
        t = (math.sqrt(t_hi) + np.linspace(0.0, 1.0, n + 1) * (math.sqrt(t_lo) - math.sqrt(t_hi))) ** 2
        return cls._from_times(t, noise, "quadratic-t", sigma_min, sigma_max)

    @classmethod
    def cosine(cls, steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX) -> Schedule:
        """The iDDPM cosine noise schedule sampled uniformly in t.  §1.

        ᾱ(t) = cos²(θ(t)) with θ linear in t, so the EDM level is σ = √(1−ᾱ)/√ᾱ = tan θ, and with
        the endpoints pinned to [σ_min, σ_max] the offset s drops out: θ_i is uniform between
        atan σ_max and atan σ_min.  (The same curve as AYS's Gaussian-optimal schedule with c = 1.)
        """
        n = _check_steps(steps)
        _check_range(sigma_min, sigma_max)
        theta = np.linspace(math.atan(sigma_max), math.atan(sigma_min), n + 1)
        sig = np.tan(theta)
        sig[0], sig[-1] = sigma_max, sigma_min
        return cls(sig, "cosine")

    @classmethod
    def from_discrete(cls, idx: np.ndarray, noise: DiscreteVP, name: str, final_zero: bool) -> Schedule:
        idx = np.unique(np.asarray(idx, dtype=np.int64))[::-1]  # sampling order: high noise first
        if idx[0] >= noise.T or idx[-1] < 0:
            raise ValueError(f"discrete steps must lie in [0, {noise.T - 1}]")
        sig = noise.sigmas[idx]
        if final_zero:
            sig = np.append(sig, 0.0)
        return cls(sig, name, {"timesteps": [int(i) for i in idx], "T": noise.T})

    @classmethod
    def ddim_uniform(cls, steps: int, noise: DiscreteVP | None = None,
                     final_zero: bool = True) -> Schedule:
        """DDIM's even spacing of a discrete DDPM: τ_j = j·⌊T/S⌋, j = 0..S−1 (0-indexed).  §1.

        With ``final_zero=True`` (DDIM's own sampler) the S = ``steps`` timesteps are followed by a jump
        to σ = 0; otherwise S = steps + 1 timesteps are used and the schedule ends at σ(τ_0) > 0.
        ``noise`` defaults to the linear-β table with T = 1000.  The chosen indices are in
        ``meta["timesteps"]``.
        """
        n = _check_steps(steps)
        noise = noise if noise is not None else DiscreteVP.linear()
        S = n if final_zero else n + 1
        if S > noise.T:
            raise ValueError(f"cannot pick {S} distinct steps out of T = {noise.T}")
        idx = np.arange(S) * (noise.T // S)
        return cls.from_discrete(idx, noise, "ddim-uniform", final_zero)

    @classmethod
    def iddpm_respace(cls, steps: int, noise: DiscreteVP | None = None,
                      final_zero: bool = True) -> Schedule:
        """iDDPM / Analytic-DPM respacing round(linspace(1, T, S)) (1-indexed steps).  §1.

        ``final_zero`` has the meaning of :meth:`ddim_uniform`.
        """
        n = _check_steps(steps)
        noise = noise if noise is not None else DiscreteVP.linear()
        S = n if final_zero else n + 1
        if S > noise.T:
            raise ValueError(f"cannot pick {S} distinct steps out of T = {noise.T}")
        idx = np.round(np.linspace(1, noise.T, S)).astype(np.int64) - 1
        return cls.from_discrete(idx, noise, "iddpm-respace", final_zero)


#: name → constructor(steps, **kw).  Every baseline a notebook, the CLI or a sweep can ask for by name.
BASELINES: dict[str, Callable[..., Schedule]] = {
    "karras": Schedule.karras,
    "uniform-logsnr": Schedule.uniform_logsnr,
    "uniform-t": Schedule.uniform_t,
    "quadratic-t": Schedule.quadratic_t,
    "cosine": Schedule.cosine,
    "ddim-uniform": Schedule.ddim_uniform,
    "iddpm-respace": Schedule.iddpm_respace,
}


def get(name: str, steps: int, **kw: Any) -> Schedule:
    """Build the baseline ``name`` (a key of :data:`BASELINES`) with ``steps`` steps."""
    key = str(name).replace("_", "-").lower()
    if key not in BASELINES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(BASELINES)}")
    return BASELINES[key](steps, **kw)
