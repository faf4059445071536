"""Huang Phase-2 — tune the denoiser on the selected noise levels — and the alternating loop.
(ALGORITHMS.md §3.5 [R]; the paper gives only the idea, every choice below is ours and an option.)

**Phase-2 loss, literal reading (``loss="dsm"``, eq. of §3.5).**  Denoising score matching restricted to the
schedule's noise levels σ*_0 > … > σ*_{N−1} (the ones the solver evaluates), with step weights λ_i:

    L_dsm(θ) = E_{x0,ε} Σ_{i=0}^{N−1} λ_i ‖D_θ(x0 + σ*_i ε_i; σ*_i) − x0‖² / d,      Σ λ_i = 1,

estimated *stratified*: every x0 of the batch is noised at every σ*_i (B·N network rows per iteration).
With uniform λ this is ordinary DSM with σ drawn uniformly from {σ*_i} (tested).

**Step weights λ_i** (:func:`step_weights`, all normalised to sum 1 — Adam is almost scale-free anyway):

* ``"convex"``    λ_i ∝ w_i = σ_N(1/σ_{i+1} − 1/σ_i), the convex weights of §3.1 (how much D_i enters x_N);
* ``"convex-sq"`` λ_i ∝ w_i², the MSE surrogate of the error in x_N = Σ w_i D_i;
* ``"uniform"``   λ_i = 1/N;
* ``"edm"``       λ_i ∝ λ_EDM(σ_i) = (σ²+σ_d²)/(σσ_d)², EDM's loss weight (every term becomes an O(1)
  loss on the network's raw output F).

**Alternative reading (``loss="distill"``, flagged in §3.5).**  Make the few-step solve itself match the
model's own accurate ODE solution: L = E_z ‖Solver_σ*(σ_0 z; θ) − x_ref(z)‖²/d, backpropagating through the
N-step solver; x_ref (:func:`teacher_pairs`) comes from the *base* model, computed once
(``distill_teacher="base"``, the default), or from a frozen copy of the current θ, recomputed every round
(``"current"``).  The notebook and the benchmark use "base"; comparing the two is exercise 6 of notebook 04
(a tuned model's own ODE need not stay an accurate target).

**Alternating loop (:func:`alternate`).**  σ ← Phase1(θ) (teacher trajectories of the *current* θ),
θ ← Phase2(θ, σ), R rounds.  The result is tied to its schedule and solver: :func:`save_finetuned` records
both in the checkpoint's config and :func:`load_finetuned` warns when asked for another one.

**Distributed.**  Everything runs on ``device="cpu"|"cuda"|"auto"`` and, under ``torchrun``, data-parallel
through ``torch.distributed`` + ``DistributedDataParallel`` (gloo on CPU, NCCL on GPU).  Every rank draws the
*global* batch from a generator seeded by (seed, iteration) and keeps its contiguous slice, so K processes
with batch B/K each compute the same update as one process with batch B (up to float summation order), and a
resumed run continues the same random stream.  State (model, EMA, Adam, iteration) is checkpointed every M
iterations with atomic writes; ``resume=True`` continues from it.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoints import atomic_write_text
from .schedules import Schedule

__all__ = [
    "WEIGHTS", "LOSSES", "PRESETS", "Phase2Config", "edm_loss_weight", "edm_effective_weight", "step_weights",
    "dsm_loss", "distill_loss", "teacher_pairs", "phase2", "alternate", "default_phase1", "resolve_device",
    "save_finetuned", "load_finetuned", "train_base", "check_schedule", "ScheduleMismatchWarning", "sample",
    "few_step_error", "evaluate", "training_data", "cli_finetune",
]

WEIGHTS = ("convex", "convex-sq", "uniform", "edm")
LOSSES = ("dsm", "distill")
SIGMA_DATA = 0.5


# -- the weights λ_i (§3.5) -----------------------------------------------------------------------
def edm_loss_weight(sigma, sigma_data: float = SIGMA_DATA) -> np.ndarray:
    """EDM's loss weight λ_EDM(σ) = (σ² + σ_d²)/(σ σ_d)² = 1/c_out(σ)² (§0.1); σ array in EDM units."""
    s = np.asarray(sigma, dtype=np.float64)
    if not (np.all(np.isfinite(s)) and np.all(s > 0)):
        raise ValueError("edm_loss_weight needs finite sigma > 0")
    return (s**2 + sigma_data**2) / (s * sigma_data) ** 2


def edm_effective_weight(sigma, p_mean: float = -1.2, p_std: float = 1.2,
                         sigma_data: float = SIGMA_DATA) -> np.ndarray:
    """EDM's effective training weight per unit ln σ: λ_EDM(σ) · N(ln σ; P_mean, P_std²)  (§3.5).

    (EDM draws ln σ ~ N(−1.2, 1.2²); the product is how much each noise level counts in its loss.)
    """
    s = np.asarray(sigma, dtype=np.float64)
    dens = np.exp(-0.5 * ((np.log(s) - p_mean) / p_std) ** 2) / (p_std * math.sqrt(2 * math.pi))
    return edm_loss_weight(s, sigma_data) * dens


def step_weights(schedule, kind: str = "convex", sigma_data: float = SIGMA_DATA) -> np.ndarray:
    """λ_i for the N denoiser calls of ``schedule`` (σ_0..σ_{N−1}), float64 (N,), summing to 1.  §3.5.

    ``kind`` is one of :data:`WEIGHTS` (see the module docstring).
    """
    from .theory import convex_weights

    s = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    if kind == "uniform":
        lam = np.ones(s.steps)
    elif kind in ("convex", "convex-sq"):
        lam = convex_weights(s)[1]
        lam = lam**2 if kind == "convex-sq" else lam
    elif kind == "edm":
        lam = edm_loss_weight(s.sigmas[:-1], sigma_data)
    else:
        raise ValueError(f"unknown step weights {kind!r}; expected one of {WEIGHTS}")
    return lam / lam.sum()


# -- the two losses ---------------------------------------------------------------------------------
def dsm_loss(model, x0: torch.Tensor, eps: torch.Tensor, sigmas, lam) -> torch.Tensor:
    """Phase-2 DSM loss (§3.5) of one batch, stratified over the schedule's noise levels.

    ``x0`` (B, *event) clean data; ``eps`` (B, N, *event) standard normal noise; ``sigmas`` (N,) the σ*_i of
    the N denoiser calls; ``lam`` (N,) their weights.  Returns the 0-d tensor
    (1/B) Σ_b Σ_i λ_i ‖D(x0_b + σ_i ε_bi; σ_i) − x0_b‖²/d  (one network call on B·N rows).
    """
    B, N = eps.shape[:2]
    if eps.shape[0] != x0.shape[0] or eps.shape[2:] != x0.shape[1:]:
        raise ValueError(f"eps must have shape (B, N, *event) = ({x0.shape[0]}, N, "
                         f"{', '.join(map(str, x0.shape[1:]))}), got {tuple(eps.shape)}")
    sig = torch.as_tensor(np.array(sigmas, dtype=np.float64), dtype=x0.dtype, device=x0.device)
    w = torch.as_tensor(np.array(lam, dtype=np.float64), dtype=x0.dtype, device=x0.device)
    if sig.shape != (N,) or w.shape != (N,):
        raise ValueError(f"sigmas and lam must have shape ({N},), got {tuple(sig.shape)}, {tuple(w.shape)}")
    X0 = x0[:, None].expand(eps.shape).reshape(B * N, *x0.shape[1:])
    S = sig.repeat(B)                                                       # row b·N + i has σ_i
    xs = X0 + S.reshape(-1, *([1] * (x0.ndim - 1))) * eps.reshape(B * N, *x0.shape[1:])
    mse = ((model(xs, S) - X0) ** 2).reshape(B, N, -1).mean(-1)             # (B, N)
    return (mse * w).sum(1).mean()


def distill_loss(model, z: torch.Tensor, x_ref: torch.Tensor, schedule, solver: str = "euler") -> torch.Tensor:
    """Alternative Phase-2 reading (§3.5): ‖Solver_σ*(σ_0 z; θ) − x_ref‖²/d averaged over the batch.

    ``z`` (B, *event) standard normal latents, ``x_ref`` (B, *event) the teacher's accurate solve from the same
    z; the gradient flows through every network call of the few-step solve.
    """
    from . import solvers

    s = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    x = solvers.get(solver)(model, z * float(s.sigmas[0]), s)
    return ((x - x_ref) ** 2).reshape(z.shape[0], -1).mean(1).mean()


@torch.no_grad()
def teacher_pairs(model, n: int, event_shape, sigma_max: float, sigma_min: float, *, seed: int = 0,
                  steps: int = 32, batch: int = 256, device="cpu", dtype=torch.float32):
    """(z, x_ref): ``n`` latents and the model's accurate PF-ODE solves σ_max → σ_min (4·steps NFE each).

    Uses :func:`dpmsched.solvers.reference` (RK4 in log σ on a Karras grid).  Deterministic under ``seed``;
    z is drawn on the CPU, so CPU and GPU runs see the same latents.
    """
    from .solvers import reference

    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n, *event_shape, generator=g).to(device=device, dtype=dtype)
    refs = [reference(model, z[i:i + batch] * sigma_max, sigma_max, sigma_min, steps=steps)
            for i in range(0, n, batch)]
    return z, torch.cat(refs)


# -- configuration and presets ----------------------------------------------------------------------
@dataclass
class Phase2Config:
    """Hyper-parameters of one Phase-2 run (all [OPEN] in the paper; defaults are ours, see README)."""

    iters: int = 200                 # optimizer steps per round
    batch: int = 64                  # global batch (x0 for dsm, latents for distill); divisible by world size
    lr: float = 2e-4                 # Adam learning rate
    weights: str = "convex"          # λ_i, one of WEIGHTS (dsm only)
    loss: str = "dsm"                # "dsm" (literal reading) or "distill"
    ema_halflife: float = 20.0       # EMA half-life in iterations (0: no EMA, the raw weights are the result)
    grad_clip: float = 1.0           # max global gradient norm (0: off)
    teacher_pairs: int = 512         # distill: teacher (z, x_ref) pairs per round
    teacher_steps: int = 32          # distill: RK4 steps of the teacher solve
    distill_teacher: str = "base"    # distill, alternating loop: x_ref from the "base" θ (once) or the "current" θ each round
    checkpoint_every: int = 0        # write the resumable state every M iterations (0: only at the end)
    seed: int = 0

    def __post_init__(self):
        if self.weights not in WEIGHTS:
            raise ValueError(f"unknown step weights {self.weights!r}; expected one of {WEIGHTS}")
        if self.distill_teacher not in ("current", "base"):
            raise ValueError(f"distill_teacher must be 'current' or 'base', got {self.distill_teacher!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown Phase-2 loss {self.loss!r}; expected one of {LOSSES}")
        for name in ("iters", "batch", "teacher_pairs", "teacher_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("ema_halflife", "grad_clip", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


#: scale presets of the CLI/notebook.  "cpu-small" finetunes a shipped model in about a minute on 2 cores.
#: "gpu" is the real-size experiment for one GPU: it first trains ``base`` (a wider, deeper EDM UNet than the
#: shipped digits-edm, 4× the batch and 8× the steps, with dpmsched.train) and then runs the alternating loop on
#: it with a larger batch, many more Phase-2 iterations and 10 000 evaluation samples.  The digits stay 8×8:
#: Fréchet-digits is defined on the classifier's 8×8 input.  Its results are "not yet measured" (README).
PRESETS: dict[str, dict] = {
    "cpu-small": {"phase1": {},
                  "phase2": {"iters": 150, "batch": 64, "lr": 2e-4, "ema_halflife": 20.0, "teacher_pairs": 256},
                  "eval_samples": 512},
    "gpu": {"base": {"name": "digits-edm-gpu", "kind": "edm", "data": "digits",
                     "arch": {"type": "unet", "in_ch": 1, "ch": 96, "mults": [1, 2, 2], "blocks": 2,
                              "emb_dim": 128, "dropout": 0.1, "size": 8},
                     "steps": 40000, "batch": 256, "lr": 1e-3, "warmup": 500, "ema": 0.9995, "seed": 0,
                     "ckpt_every": 2000},
            "phase1": {"n": 1024, "grid_points": 256},
            "phase2": {"iters": 5000, "batch": 512, "lr": 1e-4, "ema_halflife": 500.0, "teacher_pairs": 8192,
                       "teacher_steps": 64, "checkpoint_every": 500},
            "eval_samples": 10000},
}


def train_base(preset: str, out, *, device="auto", steps: int | None = None, resume: bool = True,
               progress: bool = True) -> Path:
    """Train the base model of ``PRESETS[preset]["base"]`` with :func:`dpmsched.train.train` into ``out/base``
    (resumable state in ``out/base-state``); returns the checkpoint folder.  ``steps`` overrides the preset's
    (a tiny value tests the plumbing on a CPU).  An already finished checkpoint is reused."""
    from .train import train

    if "base" not in PRESETS.get(preset, {}):
        raise ValueError(f"preset {preset!r} has no base model to train; presets with one: "
                         f"{[k for k, v in PRESETS.items() if 'base' in v]}")
    out = Path(out)
    cfg = dict(PRESETS[preset]["base"], out=str(out / "base"), state_dir=str(out / "base-state"),
               device=str(resolve_device(device) if isinstance(device, str) else device))
    if steps is not None:
        cfg.update(steps=int(steps), ckpt_every=max(1, min(int(steps), cfg["ckpt_every"])),
                   warmup=min(cfg["warmup"], int(steps)))
    if not (out / "base" / "config.json").is_file():
        train(cfg, resume=resume, progress=progress)
    return out / "base"


# -- devices and torch.distributed --------------------------------------------------------------------
def resolve_device(device: str = "auto") -> torch.device:
    """"auto" → cuda if available else cpu; under torchrun with CUDA, the GPU of ``LOCAL_RANK``."""
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:K' or 'auto', got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch.cuda.is_available() is False")
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return torch.device(device)


def _dist():
    """(rank, world size) of the torch.distributed group, (0, 1) when not distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU.

    Returns True when a group was initialised here.  A plain ``python`` run is left alone.
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def _barrier():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# -- resumable state: dpmsched.train's machinery ------------------------------------------------------------
def _state_config(cfg: "Phase2Config", s: Schedule, solver: str) -> dict:
    """What must not change between an interrupted run and its resumption (train.py compares it; the
    iteration count ``steps`` may grow)."""
    d = asdict(cfg)
    d["steps"] = d.pop("iters")
    return d | {"schedule": [float(v) for v in s.sigmas], "solver": str(solver)}


@torch.no_grad()
def _ema_update(ema, model, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p.detach(), 1.0 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


# -- Phase-2 ---------------------------------------------------------------------------------------------
def _iteration_generator(seed: int, it: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(it))


def phase2(model: torch.nn.Module, schedule, data: torch.Tensor | None = None, *, config: Phase2Config | None = None,
           solver: str = "euler", device="auto", state_dir=None, resume: bool = False,
           pairs=None, callback: Callable | None = None, progress: bool = False):
    """Finetune ``model`` (a denoiser module D(x, σ)) on ``schedule``'s noise levels.  §3.5.

    ``data`` (M, *event): the training set x0 (``loss="dsm"``); ``pairs`` = (z, x_ref) from
    :func:`teacher_pairs` (``loss="distill"``, computed here from a frozen copy of ``model`` if None).
    Works in place on a copy: returns ``(finetuned, history)`` where ``finetuned`` is the EMA model (or the raw
    one when ``ema_halflife = 0``) in eval mode and ``history`` a dict with the loss per iteration and the wall
    time.  Under torch.distributed every rank must call it with the same arguments.

    ``state_dir``: folder for the resumable state (every ``config.checkpoint_every`` iterations and at the
    end); ``resume=True`` continues from it, giving the same parameters as an uninterrupted run on CPU.
    ``callback(it, loss)`` is called after each iteration (rank 0 and others alike).
    """
    cfg = config or Phase2Config()
    s = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    if s.has_final_zero:
        raise ValueError("Phase-2 needs a schedule ending at sigma_min > 0 (drop the trailing 0)")
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    rank, world = _dist()
    if cfg.batch % world:
        raise ValueError(f"batch {cfg.batch} must be divisible by the world size {world}")
    local = cfg.batch // world
    lo = rank * local
    net = copy.deepcopy(model).to(dev).train().requires_grad_(True)
    dtype = next(net.parameters()).dtype
    if cfg.loss == "dsm":
        if data is None:
            raise ValueError("loss='dsm' needs the training data x0")
        data = torch.as_tensor(data).to(dtype)
        lam = step_weights(s, cfg.weights, getattr(model, "sigma_data", SIGMA_DATA))
        sig = s.sigmas[:-1]
    else:
        if pairs is None:
            ev = getattr(model, "event_shape", None)
            if ev is None:
                raise ValueError("loss='distill' needs pairs=(z, x_ref) or a model with an event_shape")
            pairs = teacher_pairs(copy.deepcopy(net).eval(), cfg.teacher_pairs, ev, s.sigma_max, s.sigma_min,
                                  seed=cfg.seed + 7919, steps=cfg.teacher_steps, device=dev, dtype=dtype)
        pz, px = (t.to(dev, dtype) for t in pairs)
    ema = copy.deepcopy(net).eval().requires_grad_(False) if cfg.ema_halflife > 0 else None
    decay = 0.5 ** (1.0 / cfg.ema_halflife) if cfg.ema_halflife > 0 else 0.0
    ddp = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    from .train import _load_state, _save_state      # the same atomic state format as model training

    ema_sd = ema.state_dict() if ema is not None else {}   # views of the EMA module's tensors
    state_cfg, rng = _state_config(cfg, s, solver), torch.Generator()   # (batches come from the iteration seed)
    info = {"config": asdict(cfg), "schedule": s.to_dict(), "solver": solver}
    start, losses, wall = 0, [], 0.0
    if resume:
        if state_dir is None:
            raise ValueError("resume=True needs state_dir")
        if (Path(state_dir) / "state.json").exists():
            start, losses, wall = _load_state(Path(state_dir), net, ema_sd, opt, rng, state_cfg)
    t0 = time.perf_counter()
    it_range = range(start, cfg.iters)
    if progress and rank == 0:
        from tqdm.auto import tqdm

        it_range = tqdm(it_range, desc="phase2", initial=start, total=cfg.iters)
    for it in it_range:
        g = _iteration_generator(cfg.seed, it)
        if cfg.loss == "dsm":
            idx = torch.randint(len(data), (cfg.batch,), generator=g)[lo:lo + local]
            eps = torch.randn(cfg.batch, s.steps, *data.shape[1:], generator=g, dtype=dtype)[lo:lo + local]
            loss = dsm_loss(ddp, data[idx].to(dev), eps.to(dev), sig, lam)
        else:
            idx = torch.randint(len(pz), (cfg.batch,), generator=g)[lo:lo + local].to(dev)
            loss = distill_loss(ddp, pz[idx], px[idx], s, solver)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        if ema is not None:
            _ema_update(ema, net, decay)
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"Phase-2 loss became {lv} at iteration {it}")
        losses.append(lv)
        if callback is not None:
            callback(it, lv)
        done = it + 1
        if state_dir is not None and (done == cfg.iters or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)):
            if rank == 0:
                _save_state(Path(state_dir), done, net, ema_sd, opt, rng, losses, wall + time.perf_counter() - t0,
                            state_cfg)
            _barrier()
    out = (ema if ema is not None else net).eval()
    out.finetuned_for = {"schedule": s.to_dict(), "solver": solver}
    return out, {"loss": losses, "seconds": wall + time.perf_counter() - t0, "start_iteration": start, **info}


# -- the alternating loop ------------------------------------------------------------------------------------
def default_phase1(model, steps: int, solver: str = "euler", **opts) -> Schedule:
    """Huang Phase-1 (§3.4) for the *current* model: ``optimize(model, "huang", steps, solver=solver, **opts)``.

    The optimizer computes its teacher trajectories from ``model``, so each round sees the current θ.
    ``opts`` go to :func:`dpmsched.optimize.bound.huang` (``n``, ``grid_points``, ...).
    """
    from .optimize import METHODS, optimize

    if "huang" not in METHODS:
        raise ValueError("Phase-1 ('huang' in dpmsched.optimize.METHODS) is not available in this version; "
                         "pass phase1=callable(model, steps, solver) -> Schedule")
    return optimize(model, "huang", steps, solver=solver, **opts)


def alternate(model: torch.nn.Module, steps: int, data: torch.Tensor | None = None, *, rounds: int = 2,
              solver: str = "euler", phase1: Callable = default_phase1, config: Phase2Config | None = None,
              device="auto", out_dir=None, resume: bool = False, on_round: Callable | None = None,
              progress: bool = False):
    """The alternating loop of §3.5: for r = 1..R, σ ← Phase1(θ), θ ← Phase2(θ, σ).

    ``phase1(model, steps, solver) -> Schedule`` (default :func:`default_phase1`, the Huang optimizer); round r's
    Phase-2 uses seed ``config.seed + r``.  With ``out_dir``, round r keeps its schedule and resumable state in
    ``out_dir/round<r>/`` and the final model is written by :func:`save_finetuned` to ``out_dir/model``;
    ``resume=True`` skips finished rounds and continues an interrupted one.
    ``on_round(r, model, schedule, history)`` is called after each round (e.g. to evaluate), and once with
    ``r = 0, history = None`` right after the first Phase-1: the pretrained model on its Phase-1-only schedule.
    Returns ``(model, schedule, histories)``: the finetuned model is tied to the last ``schedule``.
    """
    from dataclasses import replace

    if int(rounds) < 1 or int(steps) < 1:
        raise ValueError(f"rounds and steps must be >= 1, got rounds={rounds}, steps={steps}")
    cfg = config or Phase2Config()
    rank, _ = _dist()
    histories, sched, pairs = [], None, None
    for r in range(1, int(rounds) + 1):
        rdir = Path(out_dir) / f"round{r}" if out_dir is not None else None
        sfile = rdir / "schedule.json" if rdir is not None else None
        if resume and sfile is not None and sfile.exists():
            sched = Schedule.from_json(sfile)
        else:
            t0 = time.perf_counter()
            sched = phase1(model.eval(), steps, solver)
            sched.meta.setdefault("phase1_seconds", time.perf_counter() - t0)
            if sfile is not None and rank == 0:
                sched.to_json(sfile, indent=1)
            _barrier()
        if r == 1 and on_round is not None:
            on_round(0, model, sched, None)
        if cfg.loss == "distill" and cfg.distill_teacher == "base" and pairs is None:
            pairs = teacher_pairs(model.eval(), cfg.teacher_pairs, model.event_shape, sched.sigma_max,
                                  sched.sigma_min, seed=cfg.seed + 7919, steps=cfg.teacher_steps,
                                  device=next(model.parameters()).device, dtype=next(model.parameters()).dtype)
        model, hist = phase2(model, sched, data, config=replace(cfg, seed=cfg.seed + r), solver=solver,
                             device=device, state_dir=rdir, resume=resume, pairs=pairs, progress=progress)
        hist["round"] = r
        histories.append(hist)
        if on_round is not None:
            on_round(r, model, sched, hist)
    if out_dir is not None and rank == 0:
        save_finetuned(model, Path(out_dir) / "model", sched, solver,
                       {"rounds": int(rounds), "phase2": asdict(cfg),
                        "seconds": [h["seconds"] for h in histories]})
    _barrier()
    return model, sched, histories


# -- a checkpoint tied to its schedule and solver ----------------------------------------------------------------
class ScheduleMismatchWarning(UserWarning):
    """A finetuned model is used with a schedule or solver other than the one it was tuned for."""


def _tuned_for(model) -> dict | None:
    """{"schedule", "solver"} a model was finetuned for: set by :func:`phase2`, or read from the config of a
    checkpoint written by :func:`save_finetuned` (so ``denoisers.load`` of such a folder is covered too)."""
    tuned = getattr(model, "finetuned_for", None)
    return tuned if tuned is not None else (getattr(model, "config", None) or {}).get("finetune")


def check_schedule(model, schedule, solver: str | None = None) -> bool:
    """Warn (:class:`ScheduleMismatchWarning`) when ``model`` was finetuned for another schedule or solver.

    After Phase-2 the model is specific to σ* and its solver (§3.5); a model that was not finetuned passes.
    Returns True when the pair matches (or the model is not finetuned).
    """
    tuned = _tuned_for(model)
    if tuned is None:
        return True
    s = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    want = np.asarray(tuned["schedule"]["sigmas"], dtype=np.float64)
    problems = []
    if want.shape != s.sigmas.shape or not np.allclose(want, s.sigmas, rtol=1e-9, atol=0):
        problems.append(f"schedule {np.array2string(s.sigmas, precision=4)} (tuned for "
                        f"{np.array2string(want, precision=4)})")
    if solver is not None and str(solver).lower() != str(tuned["solver"]).lower():
        problems.append(f"solver {solver!r} (tuned for {tuned['solver']!r})")
    if problems:
        warnings.warn("this model was finetuned (Phase-2) for another setting: " + "; ".join(problems)
                      + " — its few-step quality is only measured for the tuned pair",
                      ScheduleMismatchWarning, stacklevel=2)
        return False
    return True


# -- evaluation used by the CLI, the benchmark and notebook 04 ---------------------------------------------------
@torch.no_grad()
def sample(model, schedule, solver: str = "euler", n: int = 512, seed: int = 0, batch: int = 1024):
    """``n`` samples (n, *event) of ``model`` with ``solver`` on ``schedule`` from latents drawn with ``seed``
    (on the CPU, so every device sees the same z).  Warns if the model was finetuned for another pair."""
    from . import solvers

    s = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    check_schedule(model, s, solver)
    p = next(model.parameters(), None)
    dev, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float64)
    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n, *model.event_shape, generator=g).to(dev, dtype)
    fn = solvers.get(solver)
    return torch.cat([fn(model, z[i:i + batch] * float(s.sigmas[0]), s) for i in range(0, n, batch)])


@torch.no_grad()
def few_step_error(model, schedule, solver: str = "euler", pairs=None, n: int = 256, seed: int = 0,
                   ref_steps: int = 32) -> float:
    """RMSE of the few-step solve against the model's own accurate solve from the same latents
    (:func:`dpmsched.metrics.truncation_error`); ``pairs`` = :func:`teacher_pairs` output to reuse."""
    from . import solvers
    from .metrics import truncation_error

    s = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    if pairs is None:
        p = next(model.parameters())
        pairs = teacher_pairs(model, n, model.event_shape, s.sigma_max, s.sigma_min, seed=seed, steps=ref_steps,
                              device=p.device, dtype=p.dtype)
    z, x_ref = pairs
    return truncation_error(solvers.get(solver)(model, z * float(s.sigmas[0]), s), x_ref)


def evaluate(model, schedule, solver: str = "euler", *, pairs=None, dataset: str | None = None, n: int = 512,
             seed: int = 0) -> dict:
    """Few-step quality of ``model`` on ``schedule`` with ``solver``, as a dict of floats (lower is better):

    * ``"rmse"`` — :func:`few_step_error` against ``pairs`` = (z, x_ref) (pass the *base* model's
      :func:`teacher_pairs` to measure distance to what the pretrained model would produce);
    * ``dataset`` "toy2d-*" (an exact mixture of ``dpmsched.denoisers.EXACT_MODELS``): ``"nll"`` (exact mean
      −log p of ``n`` samples, nats) and ``"sw"`` (sliced Wasserstein to ``n`` true samples);
    * ``dataset`` "digits": ``"frechet"`` = the ``"fd"`` of ``dpmsched.metrics.frechet_digits`` of ``n`` samples.
    Samples come from :func:`sample` with ``seed``.
    """
    from . import metrics

    out = {}
    if pairs is not None:
        out["rmse"] = few_step_error(model, schedule, solver, pairs=pairs)
    if dataset is None:
        return out
    if str(dataset).startswith("toy2d"):
        from .denoisers import EXACT_MODELS

        if dataset not in EXACT_MODELS:
            raise ValueError(f"unknown toy data {dataset!r}; expected one of {sorted(EXACT_MODELS)}")
        mix = EXACT_MODELS[dataset]()
        x = sample(model, schedule, solver, n=n, seed=seed).double()
        out["nll"] = metrics.gmm_nll(x, mix)
        out["sw"] = metrics.sliced_wasserstein(x, mix.sample(n, torch.Generator().manual_seed(int(seed) + 1)))
    elif dataset == "digits":
        out["frechet"] = float(metrics.frechet_digits(sample(model, schedule, solver, n=n, seed=seed))["fd"])
    else:
        raise ValueError(f"evaluate: unknown dataset {dataset!r}; expected 'toy2d-*' or 'digits'")
    return out


# -- the command line ------------------------------------------------------------------------------------------------
def training_data(name: str, event_shape, n_toy: int = 8192, seed: int = 0) -> torch.Tensor:
    """x0 for the DSM Phase-2 loss: the digits train split (M, 1, 8, 8), or ``n_toy`` samples of a 2-D toy
    mixture drawn with ``seed`` (through :func:`dpmsched.train.make_data`, the data the model was trained on)."""
    from .train import make_data

    if name == "digits":
        from .data import digits

        x = digits("train")
    else:
        x = make_data(name)[0](int(n_toy), torch.Generator().manual_seed(int(seed)))[0]
    if tuple(x.shape[1:]) != tuple(event_shape):
        raise ValueError(f"data {name!r} has event shape {tuple(x.shape[1:])}, the model expects {tuple(event_shape)}")
    return x


def cli_finetune(argv: list[str]) -> int:
    """``python -m dpmsched finetune --model digits-edm --steps 5 --solver euler --rounds 2 --iters N --out DIR``

    Runs the alternating loop (Phase-1 = the Huang optimizer, Phase-2 = this module) and writes, under
    ``--out``: ``round<r>/schedule.json``, ``round<r>/state.*`` (resumable), ``model/`` (the finetuned
    checkpoint, tied to its schedule and solver) and ``summary.json``.  Under ``torchrun --nproc_per_node K``
    it runs data-parallel (gloo on CPU, NCCL on GPU).
    """
    import argparse

    p = argparse.ArgumentParser(prog="python -m dpmsched finetune", description=cli_finetune.__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None,
                   help="model name or checkpoint folder (default with --scale gpu: train the preset's base model)")
    p.add_argument("--steps", type=int, required=True, help="number of solver steps N")
    p.add_argument("--solver", default="euler", help="solver the schedule and the model are tuned for")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds R")
    p.add_argument("--scale", default="cpu-small", choices=sorted(PRESETS), help="hyper-parameter preset")
    p.add_argument("--iters", type=int, default=None, help="Phase-2 iterations per round (default: the preset's)")
    p.add_argument("--batch", type=int, default=None, help="global batch (default: the preset's)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the preset's)")
    p.add_argument("--loss", default="dsm", choices=LOSSES, help="Phase-2 reading")
    p.add_argument("--weights", default="convex", choices=WEIGHTS, help="step weights (dsm)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="save the resumable state every M iterations")
    p.add_argument("--data", default=None, help="training data for the dsm loss (default: the model's data set)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-samples", type=int, default=None, help="latents for the per-round evaluation")
    p.add_argument("--phase1-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="option of the Huang Phase-1 optimizer (JSON value), repeatable; overrides the preset's")
    p.add_argument("--base-steps", type=int, default=None,
                   help="--scale gpu without --model: training steps of the base model (default: the preset's)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    a = p.parse_args(argv)
    preset = PRESETS[a.scale]
    if a.model is None and "base" not in preset:
        p.error(f"--model is required with --scale {a.scale}")
    opts = dict(preset["phase2"], loss=a.loss, weights=a.weights, seed=a.seed)
    for key, val in (("iters", a.iters), ("batch", a.batch), ("lr", a.lr), ("checkpoint_every", a.checkpoint_every)):
        if val is not None:
            opts[key] = val
    cfg = Phase2Config(**opts)
    from .optimize import _parse_opt

    p1_opts = dict(preset.get("phase1", {}), **dict(_parse_opt(o) for o in a.phase1_opt))
    dev = resolve_device(a.device)
    started = init_distributed(dev)
    try:
        from .denoisers import load

        if a.model is None:                        # --scale gpu: train the preset's base model first (rank 0)
            if _dist()[0] == 0:
                train_base(a.scale, a.out, device=dev, steps=a.base_steps)
            _barrier()
        model = load(a.model or Path(a.out) / "base", device=str(dev))
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model {a.model!r} is not a trainable network (exact denoisers cannot be finetuned)")
        dataset = (getattr(model, "config", None) or {}).get("dataset")
        if cfg.loss == "dsm" and (a.data or dataset) is None:
            raise ValueError(f"model {a.model!r} records no data set; pass --data")
        x0 = training_data(a.data or dataset, model.event_shape, seed=a.seed) if cfg.loss == "dsm" else None
        n_eval = a.eval_samples or preset["eval_samples"]
        rank, world = _dist()
        rows = []
        p0 = next(model.parameters())
        base_pairs = (teacher_pairs(model.eval(), n_eval, model.event_shape, model.sigma_max, model.sigma_min,
                                    seed=a.seed + 12345, device=p0.device, dtype=p0.dtype) if rank == 0 else None)

        def on_round(r, m, sched, hist):
            if rank == 0:
                q = evaluate(m, sched, a.solver, pairs=base_pairs, dataset=dataset, n=n_eval, seed=a.seed + 54321)
                rows.append({"round": r, "sigmas": list(sched.sigmas), **q,
                             "phase2_seconds": hist["seconds"] if hist else 0.0,
                             "final_loss": hist["loss"][-1] if hist and hist["loss"] else None})
                print(f"round {r}{' (Phase-1 only)' if r == 0 else ''}: schedule "
                      f"{np.array2string(sched.sigmas, precision=4)}; " + ", ".join(f"{k} {v:.4f}" for k, v in q.items())
                      + (f"; Phase-2 {hist['seconds']:.1f} s" if hist else ""), flush=True)

        t0 = time.perf_counter()
        alternate(model, a.steps, x0, rounds=a.rounds, solver=a.solver, config=cfg, device=dev, out_dir=a.out,
                  resume=a.resume, on_round=on_round, progress=True,
                  phase1=lambda m, n, s: default_phase1(m, n, s, **p1_opts))
        if rank == 0:
            summary = {"command": "python -m dpmsched finetune " + " ".join(argv), "world_size": world,
                       "device": str(dev), "seconds": time.perf_counter() - t0, "rounds": rows,
                       "config": asdict(cfg), "phase1": p1_opts}
            atomic_write_text(Path(a.out) / "summary.json", json.dumps(summary, indent=1))
            print(f"wrote {a.out}/model (finetuned for its schedule and solver) and {a.out}/summary.json")
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


def save_finetuned(model, folder, schedule, solver: str, info: dict | None = None) -> Path:
    """Write a finetuned EDM model with :func:`dpmsched.checkpoints.save_model`; its ``config.json`` gets a
    ``"finetune"`` entry {"schedule", "solver", "base_model", **info} that ties it to the pair it was tuned for."""
    from .checkpoints import save_model

    s = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    base = dict(getattr(model, "config", None) or {})
    tuned = {"schedule": s.to_dict(), "solver": str(solver),
             "base_model": base.get("finetune", {}).get("base_model", getattr(model, "name", None)), **(info or {})}
    return save_model(model, folder, kind="edm", dataset=base.get("dataset", "unknown"),
                      training=base.get("training"), extra={"finetune": tuned})


def load_finetuned(path, schedule=None, solver: str | None = None, device="cpu"):
    """Load a checkpoint written by :func:`save_finetuned`.  ``schedule``/``solver``: the pair you intend to
    use; a different one raises :class:`ScheduleMismatchWarning`.  Returns ``(model, tuned_schedule, solver)``.
    """
    from .checkpoints import load_model

    model = load_model(path, device=device)
    tuned = (getattr(model, "config", None) or {}).get("finetune")
    if tuned is None:
        raise ValueError(f"{path} is not a finetuned checkpoint (its config.json has no 'finetune' entry)")
    model.finetuned_for = {"schedule": tuned["schedule"], "solver": tuned["solver"]}
    if schedule is not None:
        check_schedule(model, schedule, solver)
    return model, Schedule.from_dict(tuned["schedule"]), tuned["solver"]
