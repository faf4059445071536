"""Phase-2 (finetune on the selected noise levels) and the alternating loop with Phase-1.  (docs/math.md §3.5)"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..files import atomic_write_text
from ..optimize import METHODS, optimize
from ..optimize.teacher import reference_endpoints
from ..schedules import Schedule
from ..train import has_state, load_state, save_state, train
from .distributed import barrier, rank_world, resolve_device
from .losses import LOSSES, SIGMA_DATA, WEIGHTS, distill_loss, dsm_loss, step_weights
from .tuned import save_finetuned

__all__ = ["Phase2Config", "PRESETS", "train_base", "phase2", "default_phase1", "alternate", "distill_pairs"]


# -- configuration and presets ----------------------------------------------------------------------
@dataclass
class Phase2Config:
    """Hyper-parameters of one Phase-2 run (all [OPEN] in the paper; defaults are ours, see README)."""

    iters: int = 200                 # optimizer steps per round
    batch: int = 64                  # global batch (x0 for dsm, latents for distill); divisible by world size
    lr: float = 2e-4                 # Adam learning rate
    weights: str = "convex"          # λ_i, one of WEIGHTS (dsm only)
    loss: str = "distill"            # "distill" (default: the reading that works) or "dsm" (literal)
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


def distill_pairs(model, n: int, schedule, *, seed: int, steps: int, device=None, dtype=None, batch: int = 256):
    """(z, x_ref) for the distillation reading: ``n`` latents of ``seed`` and ``model``'s accurate solves over
    ``schedule``'s range (:func:`dpmsched.optimize.teacher.reference_endpoints`, RK4 with ``steps`` steps, not
    cached), in the model's dtype and on its device unless given."""
    p = next(model.parameters())
    return reference_endpoints(model, n, seed, steps, batch, sigma_range=(schedule.sigma_min, schedule.sigma_max),
                               dtype=dtype or p.dtype, device=device or p.device, cache=False)


# -- resumable state: dpmsched.train's machinery ------------------------------------------------------------
def _state_config(cfg: Phase2Config, s: Schedule, solver: str) -> dict:
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
    :func:`distill_pairs` (``loss="distill"``, computed here from a frozen copy of ``model`` if None).
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
    rank, world = rank_world()
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
            pairs = distill_pairs(copy.deepcopy(net).eval(), cfg.teacher_pairs, s, seed=cfg.seed + 7919,
                                  steps=cfg.teacher_steps, device=dev, dtype=dtype)
        pz, px = (t.to(dev, dtype) for t in pairs)
    ema = copy.deepcopy(net).eval().requires_grad_(False) if cfg.ema_halflife > 0 else None
    decay = 0.5 ** (1.0 / cfg.ema_halflife) if cfg.ema_halflife > 0 else 0.0
    ddp = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    ema_sd = ema.state_dict() if ema is not None else {}   # views of the EMA module's tensors
    state_cfg, rng = _state_config(cfg, s, solver), torch.Generator()   # (batches come from the iteration seed)
    info = {"config": asdict(cfg), "schedule": s.to_dict(), "solver": solver}
    start, losses, wall = 0, [], 0.0
    if resume:
        if state_dir is None:
            raise ValueError("resume=True needs state_dir")
        if has_state(state_dir):
            start, losses, wall = load_state(state_dir, net, ema_sd, opt, rng, state_cfg)
    t0 = time.perf_counter()
    it_range = range(start, cfg.iters)
    if progress and rank == 0:
        from tqdm.auto import tqdm  # noqa: PLC0415 (only with a progress bar)

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
                save_state(state_dir, done, net, ema_sd, opt, rng, losses, wall + time.perf_counter() - t0,
                            state_cfg)
            barrier()
    out = (ema if ema is not None else net).eval()
    out.finetuned_for = {"schedule": s.to_dict(), "solver": solver}
    return out, {"loss": losses, "seconds": wall + time.perf_counter() - t0, "start_iteration": start, **info}


# -- the alternating loop ------------------------------------------------------------------------------------
def default_phase1(model, steps: int, solver: str = "euler", **opts) -> Schedule:
    """Huang Phase-1 (§3.4) for the *current* model: ``optimize(model, "huang", steps, solver=solver, **opts)``.

    The optimizer computes its teacher trajectories from ``model``, so each round sees the current θ.
    ``opts`` go to :func:`dpmsched.optimize.bound.huang` (``n``, ``grid_points``, ...).
    """
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
    if int(rounds) < 1 or int(steps) < 1:
        raise ValueError(f"rounds and steps must be >= 1, got rounds={rounds}, steps={steps}")
    cfg = config or Phase2Config()
    rank, _ = rank_world()
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
                atomic_write_text(sfile, sched.to_json(indent=1))
            barrier()
        if r == 1 and on_round is not None:
            on_round(0, model, sched, None)
        if cfg.loss == "distill" and cfg.distill_teacher == "base" and pairs is None:
            pairs = distill_pairs(model.eval(), cfg.teacher_pairs, sched, seed=cfg.seed + 7919, steps=cfg.teacher_steps)
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
    barrier()
    return model, sched, histories

