"""Benchmark: Huang Phase-2 finetuning on digits-edm (ALGORITHMS.md §3.5).

For NFE 4, 5, 6 with Euler and with the best multistep solver (chosen in this run: lowest Fréchet-digits on
EDM-ρ7 at NFE 5), Fréchet-digits of:

* EDM-ρ7 (the baseline every ratio is taken against) and the best training-free optimizer of METHODS;
* the Phase-1-only schedule (Huang, pretrained model) = "before Phase-2";
* after alternating round 1 and round 2 (Phase-1 on the current model, then Phase-2), for each Phase-2 reading.

Writes benchmarks/finetune.json and benchmarks/finetune.md.  Run:  .venv/bin/python benchmarks/bench_finetune.py
(``--quick`` for a smoke run: NFE 5 only, few iterations, few samples — not for the committed table.)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dpmsched import finetune, metrics, optimize  # noqa: E402
from dpmsched.checkpoints import atomic_write_text  # noqa: E402
from dpmsched.denoisers import load  # noqa: E402

MULTISTEP = ["dpmpp_2m", "dpmpp_3m", "unipc", "ipndm"]
TRAINING_FREE = [m for m in optimize.METHODS if m not in ("huang", "karras")]


def frechet(model, sched, solver, n, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", finetune.ScheduleMismatchWarning)
        x = finetune.sample(model, sched, solver, n=n, seed=seed)
    return float(metrics.frechet_digits(x))


def machine():
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def git_commit():
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=HERE, text=True).strip()
    except Exception:  # noqa: BLE001 - not a git checkout
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="smoke run (NFE 5, few iterations); not for the table")
    p.add_argument("--model", default="digits-edm")
    p.add_argument("--samples", type=int, default=2000, help="samples per Fréchet-digits estimate")
    p.add_argument("--iters", type=int, default=None, help="Phase-2 iterations per round (default: cpu-small)")
    p.add_argument("--out", default=str(HERE / "finetune"), help="output stem (.json and .md)")
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
    nfes = [5] if a.quick else [4, 5, 6]
    n = 256 if a.quick else a.samples
    preset = dict(finetune.PRESETS["cpu-small"]["phase2"])
    if a.iters or a.quick:
        preset["iters"] = a.iters or 10
    model = load(a.model)
    x0 = finetune._training_data("digits", model.event_shape)
    t_start = time.perf_counter()

    base5 = {s: frechet(model, optimize.optimize(model, "karras", 5, solver=s), s, n, 0) for s in MULTISTEP}
    best_ms = min(base5, key=base5.get)
    rows = []
    for solver in ["euler", best_ms]:
        for nfe in nfes:
            steps = nfe                                  # every solver here uses N NFE for N steps
            row = {"solver": solver, "nfe": nfe}
            karras = optimize.optimize(model, "karras", steps, solver=solver)
            row["karras"] = frechet(model, karras, solver, n, 0)
            free = {}
            for m in TRAINING_FREE:
                try:
                    free[m] = frechet(model, optimize.optimize(model, m, steps, solver=solver), solver, n, 0)
                except (ValueError, FloatingPointError) as e:   # a method that does not apply is reported
                    free[m] = f"n/a: {e}"
            num = {k: v for k, v in free.items() if isinstance(v, float)}
            row["training_free"] = free
            row["best_training_free"] = min(num, key=num.get) if num else None
            row["best_training_free_value"] = num[row["best_training_free"]] if num else None
            t0 = time.perf_counter()
            phase1 = finetune.default_phase1(model, steps, solver)
            row["phase1_seconds"] = time.perf_counter() - t0
            row["phase1_only"] = frechet(model, phase1, solver, n, 0)
            row["phase1_sigmas"] = list(phase1.sigmas)
            for loss in finetune.LOSSES:
                cfg = finetune.Phase2Config(**preset, loss=loss)
                per_round = []

                def on_round(r, m, s, hist):
                    per_round.append({"round": r, "frechet": frechet(m, s, solver, n, 0), "sigmas": list(s.sigmas),
                                      "phase2_seconds": hist["seconds"]})

                t0 = time.perf_counter()
                finetune.alternate(model, steps, x0, rounds=2, solver=solver, config=cfg, device="cpu",
                                   on_round=on_round)
                row[loss] = {"rounds": per_round, "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("solver", "nfe", "karras", "phase1_only")}), flush=True)
    res = {"benchmark": "finetune", "model": a.model, "samples": n, "phase2": preset, "rows": rows,
           "multistep_karras_nfe5": base5, "best_multistep": best_ms,
           "seconds": time.perf_counter() - t_start, "quick": a.quick,
           "command": "python benchmarks/bench_finetune.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": machine(), "git_commit": git_commit(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(a.out + ".json", json.dumps(res, indent=1))
    atomic_write_text(a.out + ".md", table(res))
    print(table(res))


def table(res):
    lines = [f"# Phase-2 finetuning on {res['model']} (Fréchet-digits, lower is better; ratio vs EDM-ρ7 in brackets)",
             "", f"`{res['command']}` — {res['date']}, commit {res['git_commit']}, {res['machine']['platform']}, "
             f"{res['samples']} samples per entry, Phase-2 {res['phase2']['iters']} iterations × batch "
             f"{res['phase2']['batch']} per round, total {res['seconds']:.0f} s.", "",
             "| solver | NFE | EDM-ρ7 | best training-free | Phase-1 only | " + " | ".join(
                 f"{l} round 1 | {l} round 2" for l in finetune.LOSSES) + " | Phase-2 gain vs Phase-1 (best round) |",
             "|---|---|---|---|---|" + "---|" * (2 * len(finetune.LOSSES)) + "---|"]
    for r in res["rows"]:
        k = r["karras"]

        def f(v):
            return f"{v:.3f} ({v / k:.2f})"

        cells = [r["solver"], str(r["nfe"]), f"{k:.3f}",
                 f"{r['best_training_free']}: {f(r['best_training_free_value'])}" if r["best_training_free"] else "—",
                 f(r["phase1_only"])]
        best = r["phase1_only"]
        for l in finetune.LOSSES:
            for rr in r[l]["rounds"]:
                cells.append(f(rr["frechet"]))
                best = min(best, rr["frechet"])
        cells.append(f"{100 * (1 - best / r['phase1_only']):+.0f} %")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Wall time per configuration (s): " + "; ".join(
        f"{r['solver']}/{r['nfe']}: Phase-1 {r['phase1_seconds']:.1f}, "
        + ", ".join(f"{l} 2 rounds {r[l]['seconds']:.1f}" for l in finetune.LOSSES) for r in res["rows"]),
        "", f"Best multistep solver (EDM-ρ7, NFE 5, this run): {res['best_multistep']} "
        + str({k: round(v, 3) for k, v in res['multistep_karras_nfe5'].items()})]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
