"""How classifier-free guidance changes the few-step problem on mnist-edm.  Writes benchmarks/guidance.json and .md.

For each guidance weight w (0: the unconditional model through its null label; 1: the conditional model; classes 0..9
in turn over the latents, ``denoisers.guidance.guided(..., cycle=True)``) and each solver (Euler, DPM-Solver++(2M)) at
NFE 6 on Karras-ρ7: the truncation error (RMSE of the endpoint against an RK4 solve with REF_STEPS steps from the same
``N`` held-out latents, seed SEED) with its standard error over latents, and the class accuracy of the accurate
endpoints (``mnist-classifier``).  Ratios are to w = 0 in the same run.  Notebook 08 reads this table.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_guidance.py`` (or ``make bench``; a few minutes on one
CPU thread).
"""
from __future__ import annotations

import sys

import torch
from _common import OUT, command, md_table, metadata, provenance_line, write_outputs

from dpmsched import Schedule, metrics, solvers
from dpmsched.denoisers.guidance import guided
from dpmsched.models import load
from dpmsched.optimize.teacher import reference_endpoints

WEIGHTS, SOLVERS, NFE, N, SEED, REF_STEPS = (0.0, 1.0, 2.0, 4.0), ("euler", "dpmpp_2m"), 6, 40, 11, 16


def main(argv=None) -> int:
    torch.set_num_threads(1)
    meta = metadata(command(__file__, argv), threads=1)
    model = load("mnist-edm")
    sched = Schedule.karras(NFE, model.sigma_min, model.sigma_max)
    rows = []
    for w in WEIGHTS:
        den = guided(model, torch.arange(10), w, cycle=True)
        z, ref = reference_endpoints(den, n=N, seed=SEED, steps=REF_STEPS, cache=False)
        _, predicted = metrics.image_features(ref.float(), "mnist-classifier", "mnist")
        acc = float((predicted == torch.arange(N) % 10).double().mean())
        for solver in SOLVERS:
            with torch.no_grad():
                per = ((solvers.get(solver)(den, sched.sigmas[0] * z, sched) - ref) ** 2).flatten(1).mean(1)
            rmse = float(per.mean().sqrt())
            se = float(per.std() / N**0.5 / (2 * rmse))             # delta method: SE of sqrt(mean) from SE of mean
            rows.append({"w": w, "solver": solver, "nfe": NFE, "rmse": rmse, "se": se, "class_accuracy": acc,
                         "network_passes_per_eval": den.calls_per_eval})
            print(f"w = {w:g} {solver}: RMSE {rmse:.4f} ± {se:.4f}, class accuracy {acc:.2f}", flush=True)
    for r in rows:
        r["ratio_w0"] = r["rmse"] / next(q["rmse"] for q in rows if q["solver"] == r["solver"] and q["w"] == 0.0)
    result = {**meta, "config": {"weights": WEIGHTS, "solvers": SOLVERS, "nfe": NFE, "n": N, "seed": SEED,
                                 "reference": f"rk4, {REF_STEPS} steps", "schedule": "karras rho 7"}, "rows": rows}
    md = ["# Guidance and the few-step error (mnist-edm)", "", provenance_line(result), "",
          f"Karras-ρ7 at NFE {NFE}; RMSE of the endpoint vs an RK4 solve ({REF_STEPS} steps) of the same {N} held-out "
          f"latents (seed {SEED}; latent i asks for class i mod 10), ± its standard error over latents; ratio to "
          "w = 0 in the same run; class accuracy of the accurate endpoints (mnist-classifier). w ∉ {0, 1} costs two "
          "network passes per NFE.", ""]
    md += md_table(["w", "solver", "RMSE", "± SE", "/ w = 0", "class accuracy"], [
        [f"{r['w']:g}", r["solver"], f"{r['rmse']:.4f}", f"{r['se']:.4f}", f"{r['ratio_w0']:.2f}",
         f"{r['class_accuracy']:.2f}"] for r in rows])
    write_outputs(OUT / "guidance", result, md)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
