"""Benchmark: Huang Phase-2 finetuning on digits-edm, or another shipped EDM UNet (docs/math.md §3.5).

For NFE 4, 5, 6 with Euler and with the best multistep solver (chosen in this run: lowest Fréchet-digits on
EDM-ρ7 at NFE 5), Fréchet-digits of:

* EDM-ρ7 (the baseline every ratio is taken against) and the best training-free optimizer of METHODS;
* the Phase-1-only schedule (Huang, pretrained model) = "before Phase-2";
* after alternating round 1 and round 2 (Phase-1 on the current model, then Phase-2), for each Phase-2 reading.

Writes benchmarks/finetune.json and benchmarks/finetune.md.  Run:  .venv/bin/python benchmarks/bench_finetune.py
(``--quick`` for a smoke run: NFE 5 only, few iterations, few samples — not for the committed table.)
MNIST (unguided mnist-edm, Fréchet-MNIST; the training-free optimizers with bench_schedules.py's MNIST sizes) at
Euler NFE 5 → benchmarks/finetune_mnist-edm.{json,md}:
``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_finetune.py --model mnist-edm --only euler:5``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import torch
from _common import command, md_table, metadata, provenance_line, result_stem, write_outputs
from bench_schedules import options_for

from dpmsched import finetune, optimize
from dpmsched.models import load

MULTISTEP = ["dpmpp_2m", "dpmpp_3m", "unipc", "ipndm"]
#: training-free optimizers compared (the cheap ones on 2 CPU cores: "karras-tuned" (~100 s per schedule), "ays"
#: (~30 s) and "direct" (> 3 min) are left out by default; pass --methods to add them)
TRAINING_FREE = ["uniform-logsnr", "uniform-t", "quadratic-t", "cosine", "gits", "ots", "bound-prop"]
#: Huang Phase-1 settings of this benchmark (fewer teacher trajectories than the optimizer's default n=128,
#: grid_points=128 to fit 2 CPU cores: about 8 s instead of 55 s per schedule on digits-edm)
PHASE1 = {"n": 32, "grid_points": 64}


def frechet(model, sched, solver, n, seed, data="digits"):
    """Fréchet distance of ``n`` samples of ``model`` (seed ``seed``) in the features of ``data``'s classifier."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", finetune.ScheduleMismatchWarning)
        return finetune.evaluate(model, sched, solver, dataset=data, n=n, seed=seed)["frechet"]


def run_alternating(model, steps, solver, x0, cfg, n, rounds=2, phase1_method="huang", data="digits"):
    """Round 0 (Phase-1 only) and rounds 1..R of the alternating loop, each with its Fréchet distance."""
    per_round = []

    def on_round(r, m, s, hist):
        per_round.append({"round": r, "frechet": frechet(m, s, solver, n, 0, data), "sigmas": list(s.sigmas),
                          "phase1_seconds": s.meta.get("phase1_seconds"),
                          "phase2_seconds": hist["seconds"] if hist else 0.0})

    t0 = time.perf_counter()
    finetune.alternate(model, steps, x0, rounds=rounds, solver=solver, config=cfg, device="cpu", on_round=on_round,
                       phase1=lambda m, k, s: optimize.optimize(m, phase1_method, k, solver=s, **PHASE1))
    return {"rounds": per_round, "seconds": time.perf_counter() - t0}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="smoke run (NFE 5, few iterations); not for the table")
    p.add_argument("--model", default="digits-edm")
    p.add_argument("--samples", type=int, default=1000, help="samples per Fréchet estimate")
    p.add_argument("--iters", type=int, default=30, help="Phase-2 iterations per round")
    p.add_argument("--methods", default=",".join(TRAINING_FREE), help="training-free optimizers, comma-separated")
    p.add_argument("--out", default=None, help="output stem (.json and .md; default benchmarks/finetune for digits-edm, "
                   "benchmarks/finetune_<model> otherwise)")
    p.add_argument("--phase1-method", default="huang", help="the schedule optimizer of Phase-1 (default: Huang's bound)")
    p.add_argument("--only", default="", metavar="SOLVER:NFE,...",
                   help="run only these configurations (e.g. euler:5); default: Euler and the best multistep at 4-6")
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
    nfes = [5] if a.quick else [4, 5, 6]
    n = 256 if a.quick else a.samples
    methods = [m for m in a.methods.split(",") if m]
    preset = dict(finetune.PRESETS["cpu-small"]["phase2"], iters=3 if a.quick else a.iters)
    model = load(a.model)
    data = model.config["dataset"]
    out = a.out or str(result_stem("finetune", a.model))
    x0 = finetune.training_data(data, model.event_shape)
    opts_of = options_for(a.model)
    t_start, meta = time.perf_counter(), metadata(command(__file__, argv))   # the code that runs: HEAD at the start

    def fd(m, sched, solver):
        return frechet(m, sched, solver, n, 0, data)

    # the best multistep solver (EDM-ρ7 at NFE 5) picks the second solver; not needed with --only
    base5 = {} if a.only else {s: fd(model, optimize.optimize(model, "karras", 5, solver=s), s) for s in MULTISTEP}
    best_ms = min(base5, key=base5.get) if base5 else None
    rows = []
    # the target row first (Euler, NFE 5), then the rest: the JSON and table are rewritten after every row, so
    # an interrupted run leaves the rows it finished (``"complete": false``)
    order = sorted(((s, k) for s in ["euler", best_ms] for k in nfes), key=lambda sk: (sk[1] != 5, sk[0] != "euler"))
    if a.only:
        order = [(sk.split(":")[0], int(sk.split(":")[1])) for sk in a.only.split(",")]
    for solver, nfe in order:
        steps = nfe                                      # every solver here uses N NFE for N steps
        row = {"solver": solver, "nfe": nfe}
        row["karras"] = fd(model, optimize.optimize(model, "karras", steps, solver=solver), solver)
        free = {}
        for m in methods:
            try:
                free[m] = fd(model, optimize.optimize(model, m, steps, solver=solver, **opts_of(m)), solver)
            except (ValueError, FloatingPointError) as e:   # a method that does not apply is reported
                free[m] = f"n/a: {e}"
        num = {k: v for k, v in free.items() if isinstance(v, float)}
        row["training_free"] = free
        row["best_training_free"] = min(num, key=num.get) if num else None
        row["best_training_free_value"] = num[row["best_training_free"]] if num else None
        # the literal DSM reading only on the Euler NFE-5 row (CPU time)
        for loss in finetune.LOSSES if (solver == "euler" and nfe == 5) else ("distill",):
            row[loss] = run_alternating(model, steps, solver, x0, finetune.Phase2Config(**preset, loss=loss), n,
                                        phase1_method=a.phase1_method, data=data)
        row["phase1_only"] = row["distill"]["rounds"][0]["frechet"]
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("solver", "nfe", "karras", "phase1_only")}
                         | {"distill": [r["frechet"] for r in row["distill"]["rounds"]]}), flush=True)
        res = {"benchmark": "finetune", "model": a.model, "data": data, "samples": n,
               "optimizer_options": {m: opts_of(m) for m in methods}, "phase2": preset, "phase1": PHASE1,
               "phase1_method": a.phase1_method,
               "rows": rows, "complete": len(rows) == len(order), "multistep_karras_nfe5": base5,
               "best_multistep": best_ms, "training_free_methods": methods,
               "seconds": time.perf_counter() - t_start, "quick": a.quick, "gpu_preset": "not yet measured (no GPU)",
               **meta}
        write_outputs(out, res, table(res))
    print(table(res))


def table(res):
    """The markdown table of ``res`` (the JSON written by :func:`main`)."""
    losses = [l for l in finetune.LOSSES if any(l in r for r in res["rows"])]
    data = res.get("data", "digits")
    metric, test = ("Fréchet-digits", "the 360-image test split") if data == "digits" else \
        ("Fréchet-MNIST", "the 1,000-image MNIST test split; unguided samples (the null label)")
    lines = [f"# Phase-2 finetuning on {res['model']} ({metric}, lower is better; ratio vs EDM-ρ7 in brackets)",
             "", f"{provenance_line(res)} {res['samples']} samples per {metric} entry (vs {test}; "
             f"for the metric's floor see models.md); Phase-1 = `{res.get('phase1_method', 'huang')}` {res['phase1']}; Phase-2 {res['phase2']['iters']} "
             f"iterations × batch {res['phase2']['batch']} per round, lr {res['phase2']['lr']}; total "
             f"{res['seconds']:.0f} s (a 2-core machine shared with other jobs: wall times vary with its load)." + ("" if res.get("complete", True) else
             f" **Incomplete run: {len(res['rows'])} configuration(s) finished.**"), "",
             "Round 0 = Phase-1 only (the pretrained model on its Phase-1 schedule); round r = after r alternations "
             "σ ← Phase1(θ), θ ← Phase2(θ, σ). `distill` = the few-step solve matches the base model's 32-step RK4 "
             "solution; `dsm` = the literal reading (DSM at the schedule's σ with convex λ), run on the Euler NFE-5 "
             f"row only. The last two columns: relative change of {metric} after round 2 (negative = better). "
             "Training-free optimizers compared: " + ", ".join(res["training_free_methods"]) + ".", ""]
    header = ["solver", "NFE", "EDM-ρ7", "best training-free", "Phase-1 only",
              *(f"{l} round {i}" for l in losses for i in (1, 2)), "distill round 2 vs Phase-1 only", "vs best training-free"]
    cells_of = []
    for r in res["rows"]:
        k = r["karras"]

        def f(v, k=k):
            return f"{v:.2f} ({v / k:.2f})"

        cells = [r["solver"], str(r["nfe"]), f"{k:.2f}",
                 f"{r['best_training_free']}: {f(r['best_training_free_value'])}" if r["best_training_free"] else "—",
                 f(r["phase1_only"])]
        for l in losses:
            rounds = [rr for rr in r[l]["rounds"] if rr["round"] > 0] if l in r else []
            cells += [f(rr["frechet"]) for rr in rounds] + ["—"] * (2 - len(rounds))
        last = r["distill"]["rounds"][-1]["frechet"]
        cells.append(f"{100 * (last / r['phase1_only'] - 1):+.0f} %")
        bt = r["best_training_free_value"]
        cells.append(f"{100 * (last / bt - 1):+.0f} %" if bt else "—")
        cells_of.append(cells)
    lines += md_table(header, cells_of)
    lines += ["", "Wall time per configuration (s, Phase-1 + Phase-2 of both rounds, without the evaluations): "
              + "; ".join(f"{r['solver']}/{r['nfe']}: " + ", ".join(
                  f"{l} {sum((rr['phase1_seconds'] or 0) + rr['phase2_seconds'] for rr in r[l]['rounds']):.0f}"
                  for l in losses if l in r) for r in res["rows"]),
              "", f"Best multistep solver (EDM-ρ7, NFE 5, this run): {res['best_multistep']} "
              + str({k: round(v, 2) for k, v in res['multistep_karras_nfe5'].items()}) if res["best_multistep"]
              else "Configurations chosen with --only (no multistep solver picked).",
              "", f"GPU preset (`--scale gpu`): {res['gpu_preset']}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
