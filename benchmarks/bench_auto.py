"""``method="auto"`` from cold: its wall time with every teacher included, and its held-out error against the table.

The auto rows of ``benchmarks/schedules.json`` are timed with the shared training teacher already cached and on a
machine busy with other cells.  This benchmark answers the practitioner's question instead — how long does one
``optimize(model, "auto", N, solver)`` take from nothing, and what does it give — for a few settings of auto's
budget (``--settings``, each a JSON object of auto's options on top of the table's: its teacher size and the
entry's ``method_opts["auto"]``, so ``{}`` is exactly the table's auto), every run
from an empty teacher cache.  Each result is judged exactly like the table's rows: the RMSE of the solver's output
against the RK4 reference of the table's held-out latents, next to that cell's limit (``direct``), Karras-ρ7 and
the best other method of the table (auto's own stored row excluded).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_auto.py [--cells digits-edm:euler:5,...]
[--settings '[{}, {"n_val": 64, "adam": 20}]']`` (default: digits-edm at NFE 5 with Euler and DPM-Solver++(2M),
the table's settings and the cheaper ones of :data:`SETTINGS`).  Writes benchmarks/auto.json and .md (``--out NAME``:
NAME.json, .md), with a table of the validation teacher's accuracy per grid (:func:`teacher_accuracy`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from _common import OUT, command, md_table, metadata, provenance_line, write_outputs

from dpmsched import metrics, solvers
from dpmsched.files import read_json
from dpmsched.models import load
from dpmsched.optimize import optimize
from dpmsched.optimize import teacher as TT
from dpmsched.optimize.direct import validation_teacher

#: on top of the table's settings (digits: 256 training latents, mini-batch 64, 256 validation latents on a
#: 32-point Heun grid, Adam ≤ 60 then Nelder–Mead): none; the earlier table's 64 validation latents on the training grid;
#: 64 training latents (full batch); those and no Adam (Nelder–Mead alone); and with 64 validation latents too
SETTINGS = [{}, {"n_val": 64, "val_grid_points": 0}, {"n": 64, "batch": 0}, {"n": 64, "batch": 0, "adam": 0},
            {"n": 64, "batch": 0, "adam": 0, "n_val": 64, "val_grid_points": 0}]
CELLS = "digits-edm:euler:5,digits-edm:dpmpp_2m:5"


def run_cell(entry: dict, table_opts: dict, model, solver: str, nfe: int, opts: dict, ref) -> dict:
    """One cold ``auto`` run of a table cell with auto options ``opts`` on top of the table's ``table_opts``:
    held-out error, wall and CPU seconds."""
    TT.clear_cache()                                       # from cold: the teachers are part of the cost
    t0, c0 = time.perf_counter(), time.process_time()
    s = optimize(model, "auto", nfe, solver, **{**entry["teacher"], **table_opts, **opts})
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    z, x_ref = ref
    with torch.no_grad():
        err = metrics.truncation_error(solvers.get(solver)(model, s.sigmas[0] * z, s).double(), x_ref)
    rows = {r["method"]: r["err"] for r in entry["rows"] if r["solver"] == solver and r["nfe"] == nfe}
    others = {m: e for m, e in rows.items() if m not in ("auto", "direct")}
    best = min(others, key=others.get)
    return {"solver": solver, "nfe": nfe, "settings": opts, "err": err, "wall_s": wall, "cpu_s": cpu,
            "teacher_s": s.meta["teacher_seconds"], "choice": s.meta["choice"], "polished": s.meta["polished"],
            "adam_iters": s.meta["adam_iters"], "polish_evals": s.meta["polish_evals"],
            "limit": rows["direct"], "vs_limit": err / rows["direct"] - 1.0, "karras": rows["karras"],
            "best_other": best, "best_other_err": others[best], "le_every_other": err <= others[best],
            "table_auto": rows.get("auto"), "sigmas": [float(v) for v in s.sigmas]}


def markdown(out: dict) -> list[str]:
    md = ["# `auto` from cold: wall time (teachers included) and held-out error", "", provenance_line(out), "",
          "Each row one `optimize(model, \"auto\", N, solver, **settings)` from an empty teacher cache on one thread, "
          "settings on top of the table's auto options (" + tables_opts(out) + "), "
          "judged on the held-out latents of `benchmarks/schedules.md`: table's auto = that table's auto row (its "
          "settings, same latents); vs limit = auto / direct − 1; best other = the best method of that table but "
          "auto and direct.", ""]
    md += md_table(["model", "solver", "NFE", "settings", "auto", "table's auto", "vs limit", "/karras", "best other", "≤ it",
                    "from", "Adam / NM", "teachers s", "wall s"],
                   [[r["model"], r["solver"], r["nfe"], json.dumps(r["settings"]) if r["settings"] else "table's",
                     f"{r['err']:.4f}", "—" if r["table_auto"] is None else f"{r['table_auto']:.4f}", f"{100 * r['vs_limit']:+.1f} %", f"{r['err'] / r['karras']:.2f}",
                     f"{r['best_other']} {r['best_other_err']:.4f}", "yes" if r["le_every_other"] else "no",
                     r["choice"] + (" + polish" if r["polished"] else ""), f"{r['adam_iters']} / {r['polish_evals']}",
                     f"{r['teacher_s']:.1f}", f"{r['wall_s']:.1f}"] for r in out["rows"]])
    return md + [""] + accuracy_markdown(out.get("teacher_accuracy", []))


#: the grids of the validation teachers that teacher_accuracy compares (``val_grid_points``)
GRIDS = (16, 24, 32, 64)


def teacher_accuracy(model, ref_steps: int, n: int = 128, seed: int = 2) -> list[dict]:
    """What a coarser validation teacher costs in accuracy: the RMSE of the endpoints of
    :func:`dpmsched.optimize.direct.validation_teacher` on each grid of :data:`GRIDS` against RK4 with ``ref_steps``
    steps from the same ``n`` latents (``seed``), its network calls a latent and seconds."""
    z, x_ref = TT.reference_endpoints(model, n=n, seed=seed, steps=ref_steps)
    rows = []
    for g in GRIDS:
        TT.clear_cache()
        T = validation_teacher(model, n, seed, g)
        assert torch.equal(T.z.to(z.dtype), z), "teacher and reference latents differ"
        rows.append({"grid_points": g, "nfe": 2 * g - 1, "rmse": metrics.truncation_error(T.x[-1], x_ref),
                     "seconds": T.seconds, "n": n, "seed": seed, "reference": f"rk4, {ref_steps} steps"})
    return rows


def accuracy_markdown(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    r0 = rows[0]
    return ["## The validation teacher's accuracy", "",
            f"The endpoints of the validation teacher (Heun on G grid points, `val_grid_points=G`) from {r0['n']} "
            f"latents (seed {r0['seed']}) against {r0['reference']} from the same latents; the schedules they rank "
            "have errors of 0.025–0.2 on digits.", ""] + \
        md_table(["grid points", "network calls / latent", "endpoint RMSE", "seconds"],
                 [[r["grid_points"], r["nfe"], f"{r['rmse']:.4f}", f"{r['seconds']:.1f}"] for r in rows]) + [""]


def tables_opts(out: dict) -> str:
    """The table's auto options of each model in ``out``, for the markdown."""
    seen = {r["model"]: r.get("table_settings", {}) for r in out["rows"]}
    return "; ".join(f"{m}: `{json.dumps(o)}`" for m, o in seen.items())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default=CELLS, help="comma-separated MODEL:SOLVER:NFE of benchmarks/schedules.json")
    p.add_argument("--settings", default=json.dumps(SETTINGS), help="JSON list of auto option objects")
    p.add_argument("--out", default="auto", help="output name under benchmarks/ (writes NAME.json and NAME.md)")
    a = p.parse_args(argv)
    settings = json.loads(a.settings)
    if not isinstance(settings, list) or not all(isinstance(s, dict) for s in settings):
        raise ValueError(f"--settings must be a JSON list of objects, got {a.settings!r}")
    torch.set_num_threads(1)
    doc = read_json(OUT / "schedules.json", "benchmark results")
    table = doc["results"]
    out = {**metadata(command(__file__, argv), threads=1), "rows": [], "teacher_accuracy": []}
    models = {}
    for cell in a.cells.split(","):
        name, solver, nfe = cell.split(":")
        if name not in table:
            raise ValueError(f"--cells {cell}: no results for {name} in schedules.json; expected one of {sorted(table)}")
        entry = table[name]
        model = models.setdefault(name, load(name))
        ho = entry["heldout"]                              # the table's held-out set (cached per model)
        ref = TT.reference_endpoints(model, n=ho["n"], seed=ho["seed"], steps=int(ho["reference"].split()[1]))
        if not out["teacher_accuracy"]:                     # the first model's (every cell here is one model)
            out["teacher_accuracy"] = teacher_accuracy(model, int(ho["reference"].split()[1]))
            write_outputs(OUT / a.out, out, markdown(out))
        for opts in settings:
            table_opts = doc["config"][name].get("method_opts", {}).get("auto", {})
            r = {"model": name, "table_settings": table_opts,
                 **run_cell(entry, table_opts, model, solver, int(nfe), opts, ref)}
            out["rows"].append(r)
            print(f"{name} {solver} NFE {nfe} {opts}: auto {r['err']:.4f} ({100 * r['vs_limit']:+.1f} % vs limit), "
                  f"{r['wall_s']:.1f} s", flush=True)
            write_outputs(OUT / a.out, out, markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
