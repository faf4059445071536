"""Notebook 06 (SA-Solver) on the trained ``digits-edm`` UNet, the run its text quotes.  Writes
benchmarks/sa_solver.json and sa_solver.md.

docs/math.md §6.  The notebook's default model is the exact denoiser of the digits training set; on the trained
network a run is slower, so this script runs the notebook once through papermill with small parameters
(``PARAMS``: NFE 5 and 10, τ ∈ {0, 1}, 32 samples, one SDE noise seed) and stores its results — the RMSE of each
τ = 0 solver against an accurate solve of the same noise and the sliced W2 of the SA-Solver samples to the
training digits, with the floor of random training subsets.  Notebook 06 reads this file and prints the
command with the numbers.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sa_solver.py`` (about a minute on one CPU thread).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import OUT, command, md_table, metadata, provenance_line, write_outputs

from dpmsched.batch import run_notebook

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "06_sa_solver.ipynb"
#: the notebook's parameters for the trained network (its other parameters keep their defaults)
PARAMS = {"model": "digits-edm", "nfe_list": "5,10", "tau_list": "0.0,1.0", "n_samples": 32, "noise_seeds": 1}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(OUT / "sa_solver"), help="output stem (default: benchmarks/sa_solver)")
    a = p.parse_args(argv)
    meta = metadata(command(__file__, argv), threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        res = run_notebook(NOTEBOOK, Path(tmp) / NOTEBOOK.name, PARAMS, results_json=Path(tmp) / "r.json")
    if res["error"]:
        print(res["error"])
        return 1
    r = res["results"]
    payload = {**meta, "notebook": "notebooks/06_sa_solver.ipynb", "parameters": PARAMS,
               "seconds": res["seconds"], "results": r}
    nfes, taus = r["nfes"], r["taus"]
    md = ["# SA-Solver on the trained digits UNet (notebook 06)", "", provenance_line(meta), "",
          f"Notebook 06 with `{' '.join(f'-p {k} {v}' for k, v in PARAMS.items())}`; {res['seconds']:.0f} s.", "",
          "**RMSE against the accurate ODE solve of the same noise** (Karras ρ = 7 schedule)", ""]
    md += md_table(["solver"] + [f"NFE {n}" for n in nfes],
                   [[k] + [f"{v:.3f}" for v in errs] for k, errs in r["ode_rmse"].items()])
    md += ["", f"**Sliced W2 to the training digits** (SA-Solver; floor {r['sw_floor']:.3f} ± {r['sw_floor_sd']:.3f})", ""]
    md += md_table(["τ"] + [f"NFE {n}" for n in nfes],
                   [[f"{t:g}"] + [f"{v:.3f}" for v in row] for t, row in zip(taus, r["sw_train"])])
    write_outputs(a.out, payload, md)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
