"""``python -m dpmsched finetune``: Huang Phase-2 alternating with Phase-1, resumable, torchrun-ready."""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write_text, read_json
from ..finetune import (
    LOSSES,
    PRESETS,
    WEIGHTS,
    Phase2Config,
    alternate,
    barrier,
    default_phase1,
    evaluate,
    init_distributed,
    rank_world,
    resolve_device,
    train_base,
    training_data,
)
from ..models import load
from ..optimize.teacher import reference_endpoints
from .common import (
    ArgumentParser,
    add_guidance_arguments,
    apply_guidance,
    device,
    parse_opts,
    positive_float,
    positive_int,
)

__all__ = ["main", "check_run_settings", "RUN_FILE"]

#: the settings of a run in --out, written at its start and compared on --resume
RUN_FILE = "run.json"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_run_settings(out: Path, settings: dict, resume: bool) -> None:
    """Record ``settings`` in ``out/run.json`` (a new run), or refuse a ``--resume`` whose settings differ from
    the recorded ones, naming each differing setting — a resumed run would otherwise silently reuse the old
    round's schedule and state while its summary records the new settings."""
    settings = json.loads(json.dumps(settings))
    path = out / RUN_FILE
    if resume and path.is_file():
        old = read_json(path, "finetune run settings")
        a, b = _flat(old), _flat(settings)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            raise ValueError(f"--resume with other settings than the run in {out}: "
                             + "; ".join(f"{k} was {a.get(k)!r}, now {b.get(k)!r}" for k in diff[:6])
                             + " — use the same settings, or a new --out")
        return
    if not resume and any(out.glob("round*/schedule.json")):
        raise ValueError(f"{out} already holds a finetune run; pass --resume to continue it, or use a new --out")
    atomic_write_text(path, json.dumps(settings, indent=1))


def main(argv: list[str]) -> int:
    """``python -m dpmsched finetune --model digits-edm --steps 5 --solver euler --rounds 2 --iters N --out DIR``

    Runs the alternating loop (Phase-1 = the Huang optimizer, Phase-2 = this module) and writes, under
    ``--out``: ``round<r>/schedule.json``, ``round<r>/state.*`` (resumable), ``model/`` (the finetuned
    checkpoint, tied to its schedule and solver) and ``summary.json``.  Under ``torchrun --nproc_per_node K``
    it runs data-parallel (gloo on CPU, NCCL on GPU).  With ``--labels K[,K...] [--guidance W]`` (a
    class-conditional model) the *guided* denoiser is what Phase-1 optimizes for and Phase-2 tunes; the
    checkpoint records the guidance and loads guided.
    """
    p = ArgumentParser(prog="python -m dpmsched finetune", description=main.__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None,
                   help="model name or checkpoint folder (default with --scale gpu: train the preset's base model)")
    p.add_argument("--steps", type=positive_int, required=True, help="number of solver steps N")
    p.add_argument("--solver", default="euler", help="solver the schedule and the model are tuned for")
    p.add_argument("--rounds", type=positive_int, default=2, help="alternating rounds R")
    p.add_argument("--scale", default="cpu-small", choices=sorted(PRESETS), help="hyper-parameter preset")
    p.add_argument("--iters", type=positive_int, default=None, help="Phase-2 iterations per round (default: the preset's)")
    p.add_argument("--batch", type=positive_int, default=None, help="global batch (default: the preset's)")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: the preset's)")
    p.add_argument("--loss", default="distill", choices=LOSSES,
                   help="Phase-2 reading: distill (through the solver; the one that works, README) or dsm (literal)")
    p.add_argument("--weights", default="convex", choices=WEIGHTS, help="step weights (dsm)")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, help="save the resumable state every M iterations")
    p.add_argument("--teacher-pairs", type=positive_int, default=None,
                   help="distill: accurate-solve pairs per round (default: the preset's)")
    p.add_argument("--teacher-steps", type=positive_int, default=None,
                   help="distill: RK4 steps of each accurate solve (default: the preset's)")
    p.add_argument("--data", default=None, help="training data for the dsm loss (default: the model's data set)")
    p.add_argument("--device", type=device, default="auto", help="cpu, cuda, cuda:K or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-samples", type=positive_int, default=None, help="latents for the per-round evaluation")
    p.add_argument("--phase1-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="option of the Huang Phase-1 optimizer (JSON value), repeatable; overrides the preset's")
    p.add_argument("--base-steps", type=positive_int, default=None,
                   help="--scale gpu without --model: training steps of the base model (default: the preset's)")
    add_guidance_arguments(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    a = p.parse_args(argv)
    preset = PRESETS[a.scale]
    if a.model is None and "base" not in preset:
        p.error(f"--model is required with --scale {a.scale}")
    opts = dict(preset["phase2"], loss=a.loss, weights=a.weights, seed=a.seed)
    for key, val in (("iters", a.iters), ("batch", a.batch), ("lr", a.lr), ("checkpoint_every", a.checkpoint_every),
                     ("teacher_pairs", a.teacher_pairs), ("teacher_steps", a.teacher_steps)):
        if val is not None:
            opts[key] = val
    cfg = Phase2Config(**opts)
    p1_opts = dict(preset.get("phase1", {}), **parse_opts(a.phase1_opt))
    check_run_settings(Path(a.out), {"model": a.model, "steps": a.steps, "solver": a.solver, "rounds": a.rounds,
                                     "scale": a.scale, "data": a.data, "phase1": p1_opts, "phase2": asdict(cfg),
                                     "labels": a.labels, "guidance": a.guidance},
                       a.resume)
    dev = resolve_device(a.device)
    started = init_distributed(dev)
    try:
        if a.model is None:                        # --scale gpu: train the preset's base model first (rank 0)
            if rank_world()[0] == 0:
                train_base(a.scale, a.out, device=dev, steps=a.base_steps)
            barrier()
        model = load(a.model or Path(a.out) / "base", device=str(dev))
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model {a.model!r} is not a trainable network (exact denoisers cannot be finetuned)")
        dataset = (getattr(model, "config", None) or {}).get("dataset")
        model = apply_guidance(model, a)           # --labels/--guidance: Phase-1 and Phase-2 see the guided denoiser
        if cfg.loss == "dsm" and (a.data or dataset) is None:
            raise ValueError(f"model {a.model!r} records no data set; pass --data")
        x0 = training_data(a.data or dataset, model.event_shape, seed=a.seed) if cfg.loss == "dsm" else None
        n_eval = a.eval_samples or preset["eval_samples"]
        rank, world = rank_world()
        rows = []
        p0 = next(model.parameters())
        base_pairs = (reference_endpoints(model.eval(), n_eval, a.seed + 12345, 32, 256, dtype=p0.dtype,
                                          device=p0.device, cache=False) if rank == 0 else None)

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
        barrier()                                  # no rank tears the group down while another still uses it
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0
