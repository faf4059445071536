"""``python -m dpmsched sample``: draw samples with a solver and a schedule and write them to a file."""
from __future__ import annotations

import time

import torch

from .. import solvers
from ..models import load
from .common import (
    SAMPLE_SUFFIXES,
    ArgumentParser,
    add_guidance_arguments,
    apply_guidance,
    device,
    parse_opts,
    positive_int,
    save_samples,
    schedule_for,
)

__all__ = ["main"]

#: above this many output values × network evaluations the command asks for --yes (minutes of CPU, a large file)
LARGE_WORK = 500_000_000


def main(argv: list[str]) -> int:
    """``python -m dpmsched sample --model NAME --solver S --schedule FILE.json|--baseline karras --steps N --n 64
    --seed 0 --out samples.safetensors|.npz|.npy [--opt key=value] [--labels 0,1,... [--guidance W]]``"""
    p = ArgumentParser(prog="python -m dpmsched sample", description=main.__doc__)
    p.add_argument("--model", required=True, help="model name (e.g. digits-empirical) or checkpoint/diffusers folder")
    p.add_argument("--solver", default="euler", help=f"one of {sorted(solvers.SOLVERS)} (default: euler)")
    p.add_argument("--schedule", "--baseline", default="karras",
                   help="schedule JSON file or baseline name, e.g. karras (default: karras)")
    p.add_argument("--steps", type=positive_int, default=None, help="number of steps N (needed for a baseline)")
    p.add_argument("--n", type=positive_int, default=64, help="number of samples (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    p.add_argument("--batch", type=positive_int, default=256, help="samples per solver call (default: 256)")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"], help="state dtype (default: float64)")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:K or auto (default: cpu)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="solver option (JSON value), repeatable")
    add_guidance_arguments(p)
    p.add_argument("--yes", action="store_true", help="allow a very large run without asking")
    p.add_argument("--out", required=True, help="output file: .safetensors, .npz or .npy")
    a = p.parse_args(argv)
    if not a.out.endswith(SAMPLE_SUFFIXES):
        p.error(f"--out must end in .safetensors, .npz or .npy, got {a.out!r}")
    solvers.get(a.solver)                              # an unknown solver fails before the model loads
    opts = parse_opts(a.opt)
    model = apply_guidance(load(a.model, device=a.device), a)
    batch = a.batch
    if a.labels is not None and len(a.labels) > 1:      # whole cycles per batch: sample i has class labels[i mod K]
        batch = max(len(a.labels), batch - batch % len(a.labels))
    sched = schedule_for(model, a.schedule, a.steps)
    nfe = solvers.nfe(a.solver, sched, **opts)
    size = a.n * int(torch.Size(model.event_shape).numel())
    if size * nfe * getattr(model, "calls_per_eval", 1) > LARGE_WORK and not a.yes:
        raise ValueError(f"--n {a.n} with {nfe} network evaluations each is a very large run ({size:,} values, "
                         f"{size * 8 / 1e6:,.0f} MB of output); pass --yes to run it anyway")
    t0 = time.perf_counter()
    x = solvers.sample(model, sched, a.solver, a.n, seed=a.seed, batch=batch, dtype=getattr(torch, a.dtype),
                       device=a.device, progress=a.n > batch, **opts)
    secs = time.perf_counter() - t0
    meta = {"model": a.model, "solver": a.solver, "opts": opts, "seed": a.seed, "schedule": sched.name,
            "sigmas": [float(v) for v in sched.sigmas], "nfe": nfe, "seconds": secs}
    if a.labels is not None:
        meta.update(labels=[a.labels[i % len(a.labels)] for i in range(a.n)], guidance=getattr(model, "w", 1.0),
                    network_passes_per_eval=model.calls_per_eval)
    save_samples(a.out, x, meta)
    guide = f", guidance w={model.w:g} ({model.calls_per_eval} network passes per NFE)" if a.labels is not None else ""
    print(f"wrote {a.out}: {tuple(x.shape)} samples, {a.solver} on {sched}, NFE {nfe}{guide}, {secs:.2f} s")
    return 0
