"""How many training latents does the `direct` limit need?  Writes benchmarks/limit.json and limit.md.

`direct` (LD3-style, docs/math.md §8.4) fits the schedule to the teacher endpoints of ``n`` *training* latents
(seed 0); the benchmark judges it on *held-out* latents (seed 1) against an RK4 reference.  With too few training
latents the fit is tuned to their noise and loses to a hand-made schedule on held-out noise — then it is no limit.
For each model and cell (solver, NFE) and each n of a sweep this script fits ``direct(init="best")`` (started from
the best of hand-tuned, GITS and bound-prop on the same teacher, then Adam and a Nelder–Mead polish with the budget
of bench_schedules' CONFIG) and reports

* the training RMSE and the held-out RMSE (± its standard error over the held-out latents) — their gap is the
  overfitting;
* the paired difference of held-out MSE against the hand-tuned schedule (same latents: mean ± SE; negative = the
  fit beats it): the limit must not lose;
* the teacher's own endpoint error: RMSE between the teacher's endpoints (Heun on the grid) and the RK4 reference
  on the same training latents — the fit's target is the teacher, not the reference, and a gap between the two
  is a floor under every fit.

``chosen n``: the smallest n from which on every fit's held-out RMSE is within one standard error of the largest n's.
Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_limit.py [--models toy2d-edm,digits-edm]
[--cells euler:5,dpmpp_2m:5] [--ns 16,32,64,128,256]``; results are rewritten after every fit (a partial run leaves
a valid table) and other models' results are kept.
"""
from __future__ import annotations

import argparse
import sys

import torch
from _common import OUT, command, md_table, metadata, provenance_line, write_outputs
from bench_schedules import CONFIG, _solve, load_entry, method_options

from dpmsched import metrics
from dpmsched.files import read_json
from dpmsched.optimize import optimize
from dpmsched.optimize import teacher as TT


def per_latent_mse(model, sched, solver, z, x_ref) -> torch.Tensor:
    """(B,) mean squared endpoint error per latent (data units²) of ``solver`` on ``sched``."""
    return metrics.truncation_error(_solve(model, sched, z, solver), x_ref, per_sample=True).pow(2)


def rmse_se(mse: torch.Tensor) -> tuple[float, float]:
    """RMSE of per-latent MSEs and its standard error (:func:`dpmsched.metrics.rmse_se`)."""
    return metrics.rmse_se(mse.sqrt())


def fit_cell(model, cfg, solver: str, nfe: int, n: int, zr, xr, hand_mse) -> dict:
    s = optimize(model, "direct", nfe, solver, n=n, grid_points=cfg["grid_points"], seed=0, init="best",
                 iters=cfg["direct"]["iters"], polish=cfg["direct"]["polish"])
    mse = per_latent_mse(model, s, solver, zr, xr)
    held, held_se = rmse_se(mse)
    d = mse - hand_mse
    return {"n": n, "train_rmse": s.meta["train_rmse"], "heldout_rmse": held, "heldout_se": held_se,
            "gap": held - s.meta["train_rmse"], "vs_hand_mse": float(d.mean()), "vs_hand_se": float(d.std() / len(d) ** 0.5),
            "init": s.meta["init"], "seconds": s.meta["seconds"], "sigmas": [float(v) for v in s.sigmas]}


@torch.no_grad()
def teacher_error(model, cfg, n: int) -> float:
    """RMSE between the teacher's endpoints and the RK4 reference on the same ``n`` training latents (seed 0)."""
    T = TT.teacher(model, n=n, grid_points=cfg["grid_points"], seed=0)
    _, xref = TT.reference_endpoints(model, n=n, seed=0, steps=cfg["ref_steps"])
    return float((T.x[-1].double() - xref.double()).pow(2).mean().sqrt())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="toy2d-edm,digits-edm", help="entries of bench_schedules' CONFIG")
    p.add_argument("--cells", default="euler:5,dpmpp_2m:5", help="SOLVER:NFE cells, comma-separated")
    p.add_argument("--ns", default="16,32,64,128,256", help="training-latent counts of the sweep")
    p.add_argument("--md-only", action="store_true", help="only rewrite limit.md from limit.json")
    a = p.parse_args(argv)
    path = OUT / "limit.json"
    res = read_json(path, "benchmark results") if path.exists() else {"models": {}}
    if a.md_only:
        write_outputs(OUT / "limit", res, table(res))
        return 0
    torch.set_num_threads(1)
    meta = metadata(command(__file__, argv), threads=1)
    ns = [int(v) for v in a.ns.split(",")]
    for name in [m for m in a.models.split(",") if m]:
        cfg = CONFIG[name]
        model = load_entry(name, cfg)
        zr, xr = TT.reference_endpoints(model, n=cfg["heldout"], seed=1, steps=cfg["ref_steps"])
        cells = [c.split(":") for c in a.cells.split(",")]
        kept = [c for c in res["models"].get(name, {}).get("cells", []) if [c["solver"], str(c["nfe"])] not in cells]
        entry = {**meta, "heldout": cfg["heldout"], "ref_steps": cfg["ref_steps"], "grid_points": cfg["grid_points"],
                 "direct": cfg["direct"], "teacher_vs_reference": teacher_error(model, cfg, max(ns)), "cells": kept}
        res["models"][name] = entry          # cells of other (solver, NFE) of this model are kept
        for solver, nfe in cells:
            hand = optimize(model, "hand-tuned", int(nfe), solver, **method_options(cfg, "hand-tuned"))
            hand_mse = per_latent_mse(model, hand, solver, zr, xr)
            row = {"solver": solver, "nfe": int(nfe), "hand_tuned": rmse_se(hand_mse), "fits": []}
            entry["cells"].append(row)
            for n in ns:
                row["fits"].append(fit_cell(model, cfg, solver, int(nfe), n, zr, xr, hand_mse))
                f = row["fits"][-1]
                print(f"{name} {solver}:{nfe} n={n}: train {f['train_rmse']:.4f} held-out {f['heldout_rmse']:.4f} "
                      f"± {f['heldout_se']:.4f}; vs hand-tuned {f['vs_hand_mse']:+.2e} ± {f['vs_hand_se']:.1e} "
                      f"({f['seconds']:.0f} s)", flush=True)
                write_outputs(OUT / "limit", res, table(res))
    write_outputs(OUT / "limit", res, table(res))
    return 0


def chosen_n(fits: list[dict]) -> int | None:
    """The smallest n from which on every fit's held-out RMSE is within one SE of the largest n's."""
    if not fits:
        return None
    last = fits[-1]
    ok = [f["heldout_rmse"] <= last["heldout_rmse"] + last["heldout_se"] for f in fits]
    return next(f["n"] for i, f in enumerate(fits) if all(ok[i:]))


def table(res: dict) -> list[str]:
    md = ["# How many training latents does the `direct` limit need?", ""]
    for name, e in res["models"].items():
        md += [f"## {name}", "", f"{provenance_line(e)} Held-out: {e['heldout']} latents (seed 1) vs RK4 with "
               f"{e['ref_steps']} steps; teacher grid {e['grid_points']} points; direct budget {e['direct']}, "
               f"init = best of hand-tuned / GITS / bound-prop. Teacher endpoints vs the RK4 reference on the "
               f"training latents: RMSE {e['teacher_vs_reference']:.2e} (a floor under every fit's target).", ""]
        for c in e["cells"]:
            h, h_se = c["hand_tuned"]
            md += [f"### {c['solver']}, NFE {c['nfe']} (hand-tuned held-out {h:.4f} ± {h_se:.4f})", ""]
            md += md_table(["n", "train RMSE", "held-out RMSE ± SE", "gap", "held-out MSE − hand-tuned (± SE)",
                            "init", "s"],
                           [[f["n"], f"{f['train_rmse']:.4f}", f"{f['heldout_rmse']:.4f} ± {f['heldout_se']:.4f}",
                             f"{f['gap']:+.4f}", f"{f['vs_hand_mse']:+.2e} ± {f['vs_hand_se']:.1e}", f["init"],
                             f"{f['seconds']:.0f}"] for f in c["fits"]])
            md += ["", f"Chosen n (from it on, held-out within one SE of the largest n): {chosen_n(c['fits'])}.", ""]
    return md


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
