"""Your own model in, our schedules out: diffusers and k-diffusion in both directions.  (docs/math.md §0.1, §0.4)

* :func:`from_vp_model` — wrap ``model(x_t, t)`` with its noise table (ᾱ array, :class:`DiscreteVP` or
  :class:`LinearVP`) through :class:`~dpmsched.denoisers.vp.VPDenoiser`, the one place the VP ↔ EDM
  conversion lives.
* :func:`load_diffusers` — read a *local* diffusers folder (a pipeline folder with ``model_index.json``,
  ``unet/`` and ``scheduler/``, or a folder with the UNet's ``config.json`` next to a
  ``scheduler_config.json``) and return the model as a denoiser.  Nothing is downloaded, and weights are
  read from ``*.safetensors`` only (a folder with only a pickle ``.bin`` is refused).
* :func:`to_diffusers` / :func:`to_kdiffusion` — export a :class:`~dpmsched.schedules.Schedule` to a
  diffusers scheduler (in place) or to k-diffusion's σ tensor; :func:`pipeline_kwargs` — the ``sigmas=`` /
  ``timesteps=`` argument a diffusers pipeline call needs to run it.

diffusers is imported only inside the functions that need it (the optional ``[hub]`` extra).
"""
from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from . import solvers
from .denoisers.vp import PREDICTIONS, VPDenoiser
from .files import read_json
from .noise import DiscreteVP, LinearVP
from .schedules import Schedule

__all__ = ["to_diffusers", "to_kdiffusion", "from_vp_model", "load_diffusers", "is_diffusers_folder", "alphas_cumprod_from_config",
           "schedule_of_scheduler", "set_diffusers_schedule", "sample_with_diffusers", "DIFFUSERS_COUNTERPARTS", "diffusers_scheduler",
           "compare_with_diffusers", "tiny_unet_folder", "pipeline_kwargs",
           "SIGMA_SCHEDULERS", "TIMESTEP_SCHEDULERS"]


def from_vp_model(model, noise, prediction: str = "epsilon", event_shape=(), time_scale: float = 1.0,
                  name: str = "vp-model") -> VPDenoiser:
    """An EDM denoiser ``D(x̃, σ)`` from a VP network ``model(x_t (B, *event), t (B,)) -> (B, *event)``.

    ``noise``: a 1-D array of ᾱ_n (n = 0..T−1, decreasing; the model gets the step index), a
    :class:`DiscreteVP`, or a :class:`LinearVP` (the model gets ``time_scale``·t).  ``prediction``:
    "epsilon", "v_prediction" or "sample".  See :class:`VPDenoiser` for the conversion (§0.1).
    """
    if not isinstance(noise, (DiscreteVP, LinearVP)):
        arr = np.asarray(noise, dtype=np.float64) if isinstance(noise, (list, tuple, np.ndarray, torch.Tensor)) else None
        if arr is None:
            raise TypeError(f"noise must be an alphas_cumprod array, DiscreteVP or LinearVP, got {type(noise).__name__}")
        noise = DiscreteVP(arr)
    return VPDenoiser(model, noise, prediction=prediction, event_shape=event_shape, time_scale=time_scale, name=name)


def alphas_cumprod_from_config(cfg: dict) -> np.ndarray:
    """ᾱ_n (float64, shape (T,)) from a diffusers scheduler config (``beta_schedule`` "linear",
    "scaled_linear", "squaredcos_cap_v2", or ``trained_betas``), as diffusers defines them."""
    T = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("trained_betas") is not None:
        betas = np.asarray(cfg["trained_betas"], dtype=np.float64)
    else:
        kind = cfg.get("beta_schedule", "linear")
        b0, b1 = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
        if kind == "linear":
            betas = np.linspace(b0, b1, T, dtype=np.float64)
        elif kind == "scaled_linear":
            betas = np.linspace(b0**0.5, b1**0.5, T, dtype=np.float64) ** 2
        elif kind == "squaredcos_cap_v2":
            def abar(t):
                return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

            betas = np.array([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)])
        else:
            raise ValueError(f"unsupported beta_schedule {kind!r}; expected 'linear', 'scaled_linear' or "
                             "'squaredcos_cap_v2' (or trained_betas)")
    if cfg.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr gives sigma_max = inf, which an EDM schedule cannot start from")
    return np.cumprod(1.0 - betas)


def _layout(folder: Path):
    """(unet folder, scheduler config path) of a diffusers folder, or None."""
    if (folder / "model_index.json").is_file():
        unet, sched = folder / "unet", folder / "scheduler" / "scheduler_config.json"
        if (unet / "config.json").is_file() and sched.is_file():
            return unet, sched
        return None
    if (folder / "config.json").is_file() and (folder / "scheduler_config.json").is_file():
        return folder, folder / "scheduler_config.json"
    return None


def is_diffusers_folder(path) -> bool:
    """True for a local folder :func:`load_diffusers` can read."""
    p = Path(path)
    return p.is_dir() and _layout(p) is not None


class _UNetOutput(torch.nn.Module):
    """``UNet2DModel`` as ``f(x_t, t) -> tensor`` in the state's dtype (the net may run in another)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x_t, t):
        dtype = next(self.unet.parameters()).dtype
        return self.unet(x_t.to(dtype), t.to(dtype)).sample.to(x_t.dtype)


def load_diffusers(path, device="cpu", dtype=torch.float32, name: str | None = None) -> VPDenoiser:
    """Load a local diffusers ``UNet2DModel`` + scheduler config as an EDM denoiser.

    ``path``: a pipeline folder (``model_index.json``, ``unet/config.json``, ``scheduler/scheduler_config.json``)
    or a folder holding the UNet's ``config.json`` and weights next to ``scheduler_config.json``.
    The scheduler config supplies the ᾱ table (:func:`alphas_cumprod_from_config`) and
    ``prediction_type`` ("epsilon", "v_prediction", "sample"); the net runs in ``dtype`` on ``device``.
    The result has ``event_shape`` (C, H, W), ``sigma_min``/``sigma_max`` of the table and ``name``.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such model folder: {folder}")
    layout = _layout(folder)
    if layout is None:
        raise FileNotFoundError(f"{folder} is not a diffusers folder: expected model_index.json with unet/ and "
                                "scheduler/, or config.json next to scheduler_config.json")
    try:
        from diffusers import UNet2DModel
    except ImportError as e:
        raise ImportError("loading a diffusers model needs the optional dependency: "
                          "pip install 'dpmsched[hub]' (or pip install diffusers)") from e
    unet_dir, sched_path = layout
    cfg = read_json(sched_path, "diffusers scheduler config")
    prediction = cfg.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise ValueError(f"unsupported prediction_type {prediction!r} in {sched_path}; expected one of {PREDICTIONS}")
    if not any(unet_dir.glob("*.safetensors")):
        found = sorted(q.name for q in unet_dir.iterdir() if q.is_file() and q.name != "config.json")
        raise ValueError(f"{unet_dir} has no *.safetensors weights (found {found}); dpmsched loads diffusers weights "
                         "from safetensors only, never a pickle .bin — convert them with "
                         "UNet2DModel.from_pretrained(...).save_pretrained(folder, safe_serialization=True)")
    unet = UNet2DModel.from_pretrained(str(unet_dir), torch_dtype=dtype, use_safetensors=True).to(device=device).eval()
    size = unet.config.sample_size
    hw = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    den = from_vp_model(_UNetOutput(unet), alphas_cumprod_from_config(cfg), prediction=prediction,
                        event_shape=(unet.config.in_channels, *hw), name=name or folder.name)
    return den.to(device)


def to_kdiffusion(schedule, device=None) -> torch.Tensor:
    """k-diffusion's sigma tensor for ``schedule``: its σ's followed by a 0, float64, shape (N+2,) (or (N+1,)
    when the schedule already ends in 0)."""
    return schedule.with_final_zero().to_torch(device=device)


def to_diffusers(schedule, scheduler, *, rtol: float = 1e-2):
    """Set ``schedule``'s σ's on a diffusers scheduler (in place; returned).  Euler and EDM-Euler take any
    σ's; DPM-Solver(++), Heun, DDPM, LCM and TCD take integer timesteps (σ's rounded to the ᾱ table, a
    warning past ``rtol``); others raise naming the alternatives.  Details: :func:`set_diffusers_schedule`."""
    return set_diffusers_schedule(scheduler, schedule, rtol=rtol)


def schedule_of_scheduler(scheduler, noise: DiscreteVP):
    """The σ's a configured diffusers scheduler steps through, as a float64 :class:`Schedule`.

    Taken from its integer ``timesteps`` on our float64 ᾱ table (diffusers holds σ in float32), then its
    final σ: 0 (``final_sigmas_type="zero"``) or the table's first entry (``"sigma_min"``, SA-Solver).
    Heun's repeated timesteps count once.  Needs integer timesteps (e.g. ``timestep_spacing="trailing"``).
    """
    ts = np.asarray(scheduler.timesteps, dtype=np.float64)
    if not np.allclose(ts, np.round(ts)):
        raise ValueError("the scheduler's timesteps are not integers: use timestep_spacing='trailing' or 'leading'")
    idx = np.unique(np.round(ts).astype(np.int64))[::-1]
    last = float(scheduler.sigmas[-1])
    sig = np.append(noise.sigmas[idx], 0.0 if last == 0 else noise.sigmas[0])
    return Schedule(sig, f"diffusers-{type(scheduler).__name__}", {"timesteps": [int(i) for i in idx]})


#: diffusers schedulers that accept a schedule, by how: arbitrary σ's, or integer timesteps on the ᾱ table
SIGMA_SCHEDULERS = ("EulerDiscreteScheduler", "EDMEulerScheduler")
TIMESTEP_SCHEDULERS = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "HeunDiscreteScheduler",
                       "DDPMScheduler", "LCMScheduler", "TCDScheduler")


def _final_sigma(scheduler, table: np.ndarray) -> float:
    """The σ a timestep-driven scheduler ends at: 0, or the table's first σ for ``final_sigmas_type="sigma_min"``."""
    return float(table[0]) if getattr(scheduler.config, "final_sigmas_type", "zero") == "sigma_min" else 0.0


def pipeline_kwargs(schedule, scheduler, *, rtol: float = 1e-2) -> dict:
    """The keyword arguments that make a diffusers pipeline step through ``schedule``: ``{"sigmas": [...]}``
    (``EulerDiscreteScheduler``: the σ's; ``EDMEulerScheduler``: its Karras ramp, a float64 tensor) or
    ``{"timesteps": [...]}`` (the timestep-driven :data:`TIMESTEP_SCHEDULERS`), for the pipeline's own call::

        images = pipe(prompt, **adapters.pipeline_kwargs(schedule, pipe.scheduler)).images

    A pipeline calls ``scheduler.set_timesteps`` itself at the start of every call (diffusers'
    ``retrieve_timesteps``), so a schedule set on the scheduler beforehand is overwritten unless the call passes it
    again — and a call with ``num_inference_steps=None`` and neither ``sigmas`` nor ``timesteps`` raises in
    ``set_timesteps``.  ``scheduler`` is only read (its class and config), not changed.  The values are the ones
    :func:`to_diffusers` sets, with the same checks, rounding and warning (see :func:`set_diffusers_schedule`).
    """
    name = type(scheduler).__name__
    sig = np.asarray(schedule.sigmas, dtype=np.float64)
    if name == "EulerDiscreteScheduler":
        return {"sigmas": [float(v) for v in sig]}
    if name == "EDMEulerScheduler":
        cfg = scheduler.config
        if cfg.sigma_schedule != "karras":
            raise ValueError(f"EDMEulerScheduler with sigma_schedule={cfg.sigma_schedule!r} cannot take custom "
                             "sigmas; use sigma_schedule='karras'")
        end = float(cfg.sigma_min) if cfg.final_sigmas_type == "sigma_min" else 0.0
        if not np.isclose(sig[-1], end, rtol=1e-6, atol=0.0):
            raise ValueError(f"EDMEulerScheduler (final_sigmas_type={cfg.final_sigmas_type!r}) ends at sigma = {end}; "
                             f"the schedule ends at {sig[-1]:g} (use .with_final_zero())")
        lo, hi, rho = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho), cfg.rho
        # the Karras ramp r_i in [0, 1] that EDMEulerScheduler maps back to sigma_i (its "sigmas" argument,
        # which it needs as a tensor)
        return {"sigmas": torch.as_tensor((sig[:-1] ** (1 / rho) - hi) / (lo - hi), dtype=torch.float64)}
    if name not in TIMESTEP_SCHEDULERS:
        raise ValueError(f"{name} cannot take a custom schedule; use one that can: "
                         f"{', '.join(SIGMA_SCHEDULERS)} (any sigmas) or {', '.join(TIMESTEP_SCHEDULERS)} "
                         "(integer timesteps)")
    table = np.sqrt((1.0 - alphas_cumprod_from_config(dict(scheduler.config)))
                    / alphas_cumprod_from_config(dict(scheduler.config)))
    end = _final_sigma(scheduler, table)
    if not np.isclose(sig[-1], end, rtol=rtol, atol=0.0):
        raise ValueError(f"{name} ends at its own final sigma {end:g} (final_sigmas_type); the schedule ends at "
                         f"{sig[-1]:g}: use schedule.with_final_zero() or end the schedule at {end:g}")
    log_table = np.log(table)
    idx = np.abs(np.log(sig[:-1])[:, None] - log_table[None, :]).argmin(axis=1)
    clash = np.nonzero(np.diff(idx) >= 0)[0]
    if clash.size:
        i = int(clash[0])
        raise ValueError(f"sigmas {sig[i]:g} and {sig[i + 1]:g} (index {i}, {i + 1}) round to the same timestep "
                         f"{idx[i]} of {name}'s table; the schedule is too fine for integer timesteps")
    moved = np.abs(table[idx] / sig[:-1] - 1.0)
    if moved.max() > rtol:
        i = int(moved.argmax())
        warnings.warn(f"{name} takes integer timesteps: sigma {sig[i]:g} (index {i}) became {table[idx[i]]:g} "
                      f"(relative change {moved[i]:.3g} > rtol = {rtol})", stacklevel=3)
    return {"timesteps": [int(v) for v in idx]}


def set_diffusers_schedule(scheduler, schedule, *, rtol: float = 1e-2):
    """Make a diffusers ``scheduler`` step through ``schedule``'s σ's; returns the scheduler (set in place).

    * ``EulerDiscreteScheduler``: the σ's themselves (``set_timesteps(sigmas=…)``; the model gets the
      fractional timestep diffusers interpolates in log σ).
    * ``EDMEulerScheduler`` (``sigma_schedule="karras"``): the Karras ramp r_i that reproduces σ_i,
      r = (σ^{1/ρ} − σ_max^{1/ρ}) / (σ_min^{1/ρ} − σ_max^{1/ρ}); the schedule must end where the scheduler
      ends (0 for ``final_sigmas_type="zero"``).
    * timestep-driven schedulers (:data:`TIMESTEP_SCHEDULERS`): σ_0..σ_{N−1} become the nearest integer
      timesteps of the scheduler's ᾱ table (nearest in log σ); the last σ must be the scheduler's own final
      σ (0, or the table's σ at t = 0 for ``final_sigmas_type="sigma_min"``).  Rounding that moves a σ
      by more than ``rtol`` (relative) warns; two σ's landing on one timestep raise.

    Any other scheduler raises ``ValueError`` naming these alternatives.  The realised schedule is
    :func:`schedule_of_scheduler` (timestep-driven) or ``scheduler.sigmas`` (σ-driven).  It is exactly
    ``scheduler.set_timesteps(**pipeline_kwargs(schedule, scheduler))``; a pipeline call must pass the same
    keyword arguments (:func:`pipeline_kwargs`), or it resets the scheduler.
    """
    scheduler.set_timesteps(**pipeline_kwargs(schedule, scheduler, rtol=rtol))
    return scheduler


@torch.no_grad()
def sample_with_diffusers(den: VPDenoiser, scheduler, x: torch.Tensor, generator=None) -> torch.Tensor:
    """Run a configured diffusers scheduler loop with ``den``'s network from the EDM state ``x`` at the
    scheduler's first σ; returns the final state in EDM coordinates (x̃ = x_t/α_t).

    Euler/Heun-type schedulers (``init_noise_sigma != 1``) step x̃ itself; DPM-Solver/UniPC/SA-Solver
    step x_t = α x̃.  The σ of the first timestep is read from ``den``'s float64 table, so both sides
    start from the same numbers.  Used by the diffusers cross-check and ``benchmarks/bench_solvers.py``.
    """
    ve = float(scheduler.init_noise_sigma) != 1.0
    if ve:                                   # steps x̃ itself at the scheduler's own σ's (any, even fractional t)
        sample = x
    else:
        sched = schedule_of_scheduler(scheduler, den.noise)
        s0, s_end = sched.sigmas[0], float(sched.sigmas[-1])
        sample = x / math.sqrt(1.0 + s0**2)
    kw = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(sample, t)
        out = den.model(inp, t.to(x.dtype).expand(x.shape[0]))
        sample = scheduler.step(out, t, sample, **kw).prev_sample
    if ve:
        return sample
    return sample * math.sqrt(1.0 + s_end**2) if s_end > 0 else sample


#: the scheduler settings every counterpart shares: linear-β DDPM (T = 1000), ε-prediction, integer
#: "trailing" timesteps (999, 874, … at 8 steps: the σ's lie on the ᾱ table, so the network sees the same t)
DIFFUSERS_COMMON = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
                    "prediction_type": "epsilon", "timestep_spacing": "trailing"}


def _tau_zero(t):
    return 0


#: case → (diffusers scheduler class, its settings, our solver, our options): the pairs that must agree.
#: ``lower_order_final=True`` is diffusers' default (applied at N < 15, as ours at every N);
#: ``final_sigmas_type="zero"`` where available, except UniPC-bh1, which returns NaN with it in
#: diffusers 0.42 (B(h) = −h = −∞ on the jump to σ = 0) and is compared ending at σ(t = 0)
#: ("sigma_min"; SASolverScheduler always ends there).  SA-Solver at τ = 0 (``tau_func`` ≡ 0).
DIFFUSERS_COUNTERPARTS = {
    "euler": ("EulerDiscreteScheduler", {"final_sigmas_type": "zero"}, "euler", {}),
    "heun": ("HeunDiscreteScheduler", {}, "heun", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                 "solver_type": "midpoint", "lower_order_final": True, "final_sigmas_type": "zero"}, "dpmpp_2m", {}),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3,
                 "solver_type": "midpoint", "lower_order_final": True, "final_sigmas_type": "zero"}, "dpmpp_3m", {}),
    "unipc_bh2_2": ("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2", "lower_order_final": True,
                    "final_sigmas_type": "zero"}, "unipc", {"order": 2, "variant": "bh2"}),
    "unipc_bh1_3": ("UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1", "lower_order_final": True,
                    "final_sigmas_type": "sigma_min"}, "unipc", {"order": 3, "variant": "bh1"}),
    "sa_solver_3_4": ("SASolverScheduler", {"predictor_order": 3, "corrector_order": 4, "lower_order_final": True,
                      "algorithm_type": "data_prediction", "tau_func": _tau_zero},
                      "sa_solver", {"predictor_order": 3, "corrector_order": 4, "tau": 0.0}),
    "sa_solver_2_2": ("SASolverScheduler", {"predictor_order": 2, "corrector_order": 2, "lower_order_final": True,
                      "algorithm_type": "data_prediction", "tau_func": _tau_zero},
                      "sa_solver", {"predictor_order": 2, "corrector_order": 2, "tau": 0.0}),
}


def diffusers_scheduler(case: str, steps: int):
    """The diffusers scheduler of :data:`DIFFUSERS_COUNTERPARTS` ``case``, set to ``steps`` steps."""
    import diffusers

    if case not in DIFFUSERS_COUNTERPARTS:
        raise ValueError(f"unknown case {case!r}; expected one of {sorted(DIFFUSERS_COUNTERPARTS)}")
    cls, extra, _, _ = DIFFUSERS_COUNTERPARTS[case]
    sched = getattr(diffusers, cls)(**DIFFUSERS_COMMON, **extra)
    sched.set_timesteps(steps)
    return sched


def compare_with_diffusers(den: VPDenoiser, case: str, steps: int, z: torch.Tensor, reference=None):
    """Run ``case`` both ways from x = σ_0 z; returns (ours, theirs, max|ours − theirs| / max|theirs|).

    Ours runs in ``z``'s dtype on the float64 σ's of the scheduler's timesteps; diffusers runs in the same
    dtype.  ``reference`` (optional): compare diffusers with this tensor instead of our output.
    """
    sched = diffusers_scheduler(case, steps)
    s = schedule_of_scheduler(sched, den.noise)
    x = float(s.sigmas[0]) * z
    _, _, name, opts = DIFFUSERS_COUNTERPARTS[case]
    with torch.no_grad():
        ours = solvers.get(name)(den, x, s, **opts)
    theirs = sample_with_diffusers(den, sched, x)
    ref = ours if reference is None else reference
    rel = float((ref.double() - theirs.double()).abs().max() / theirs.double().abs().max())
    return ours, theirs, rel


def tiny_unet_folder(path, seed: int = 0):
    """Write a tiny random ε-prediction ``UNet2DModel`` (8×8, 1 channel, block_out_channels (8, 16),
    layers_per_block 1, norm_num_groups 4; init seed ``seed``) and its DDPM scheduler config to ``path``.

    For tests, benchmarks and the tutorial: the real loading code on small data.  Returns ``path``.
    """
    import diffusers

    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(path)
    cfg = {k: v for k, v in DIFFUSERS_COMMON.items() if k != "timestep_spacing"}
    diffusers.DDPMScheduler(**cfg).save_config(path)
    return path
