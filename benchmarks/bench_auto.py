"""``method="auto"`` from cold: its wall time with every teacher included, and its held-out error against the table.

The auto rows of ``benchmarks/schedules.json`` are timed with the shared training teacher already cached and on a
machine busy with other cells.  This benchmark answers the practitioner's question instead — how long does one
``optimize(model, "auto", N, solver)`` take from nothing, and what does it give — for a few settings of auto's
budget (``--settings``, each a JSON object of auto's options on top of the table's teacher size), every run
from an empty teacher cache.  Each result is judged exactly like the table's rows: the RMSE of the solver's output
against the RK4 reference of the table's held-out latents, next to that cell's limit (``direct``), Karras-ρ7 and
the best other method of the table (auto's own stored row excluded).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_auto.py [--cells digits-edm:euler:5,...]
[--settings '[{}, {"n_val": 64, "adam": 20}]']`` (default: digits-edm at NFE 5 with Euler and DPM-Solver++(2M),
the table's settings and two cheaper ones).  Writes benchmarks/auto.json and .md (``--out NAME``: NAME.json, .md).
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

#: the table's settings (validation on 128 latents, Adam ≤ 60 then Nelder–Mead), fewer validation latents, and
#: fewer validation latents with at most 20 Adam steps or none (Nelder–Mead alone)
SETTINGS = [{}, {"n_val": 64}, {"n_val": 64, "adam": 20}, {"n_val": 64, "adam": 0}]
CELLS = "digits-edm:euler:5,digits-edm:dpmpp_2m:5"


def run_cell(entry: dict, model, solver: str, nfe: int, opts: dict, ref) -> dict:
    """One cold ``auto`` run of a table cell with auto options ``opts``: held-out error, wall and CPU seconds."""
    TT.clear_cache()                                       # from cold: the teachers are part of the cost
    t0, c0 = time.perf_counter(), time.process_time()
    s = optimize(model, "auto", nfe, solver, **{**entry["teacher"], **opts})
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
    return md + [""]


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
    table = read_json(OUT / "schedules.json", "benchmark results")["results"]
    out = {**metadata(command(__file__, argv), threads=1), "rows": []}
    models = {}
    for cell in a.cells.split(","):
        name, solver, nfe = cell.split(":")
        if name not in table:
            raise ValueError(f"--cells {cell}: no results for {name} in schedules.json; expected one of {sorted(table)}")
        entry = table[name]
        model = models.setdefault(name, load(name))
        ho = entry["heldout"]                              # the table's held-out set (cached per model)
        ref = TT.reference_endpoints(model, n=ho["n"], seed=ho["seed"], steps=int(ho["reference"].split()[1]))
        for opts in settings:
            r = {"model": name, **run_cell(entry, model, solver, int(nfe), opts, ref)}
            out["rows"].append(r)
            print(f"{name} {solver} NFE {nfe} {opts}: auto {r['err']:.4f} ({100 * r['vs_limit']:+.1f} % vs limit), "
                  f"{r['wall_s']:.1f} s", flush=True)
            write_outputs(OUT / a.out, out, markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
