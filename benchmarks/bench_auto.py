"""``method="auto"`` against the committed comparison: held-out error, wall time, and where it stands.

For every cell (model, solver, NFE) of ``benchmarks/schedules.json`` that is asked for, ``auto`` runs with the
benchmark's teacher (training latents, seed 0) and validation latents of seed 2, and is judged exactly like the
rows of that table: the RMSE of the solver's output against the RK4 reference solve of the same *held-out* latents
(seed 1, the benchmark's size and reference steps).  The table puts it next to the stored Karras-ρ7, hand-tuned, the
best training-free peer (OTS, GITS, AYS), the best error-bound method and the ``direct`` fit, and reports whether
auto is ≤ every one of them and how far it is from the best of all (the empirical limit of that cell).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_auto.py [--cells toy2d-edm:euler:5,...]`` (default: every
toy2d-edm cell and digits-edm at NFE 5).  Writes benchmarks/auto.json and .md.
"""
from __future__ import annotations

import argparse
import json
import time

import _common
import torch

from dpmsched import metrics, solvers
from dpmsched.models import load
from dpmsched.optimize import optimize
from dpmsched.optimize import teacher as TT

PEERS = ("ots", "gits", "ays")
BOUNDS = ("huang", "bound-prop")


def cells_of(bench: dict, spec: str) -> list[tuple[str, str, int]]:
    if spec:
        return [(m, s, int(n)) for m, s, n in (c.split(":") for c in spec.split(","))]
    out = sorted({("toy2d-edm", r["solver"], r["nfe"]) for r in bench["results"]["toy2d-edm"]["rows"]})
    return out + [("digits-edm", s, 5) for s in ("euler", "dpmpp_2m")]


def run_cell(bench: dict, name: str, solver: str, nfe: int, models: dict, refs: dict) -> dict:
    res = bench["results"][name]
    model = models.setdefault(name, load(name))
    if name not in refs:
        ho = res["heldout"]
        refs[name] = TT.reference_endpoints(model, n=ho["n"], seed=ho["seed"], steps=int(ho["reference"].split()[1]))
    z, x_ref = refs[name]
    t0, c0 = time.perf_counter(), time.process_time()
    s = optimize(model, "auto", nfe, solver, **res["teacher"], n_val=res["teacher"]["n"], val_seed=2)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    with torch.no_grad():
        x = solvers.get(solver)(model, s.sigmas[0] * z, s).double()
    err = metrics.truncation_error(x, x_ref)
    rows = {r["method"]: r for r in res["rows"] if r["solver"] == solver and r["nfe"] == nfe}
    e = {m: r["err"] for m, r in rows.items()}
    peer = min(PEERS, key=lambda m: e[m])
    bound = min(BOUNDS, key=lambda m: e[m])
    limit = min(e.values())
    return {"model": name, "solver": solver, "nfe": nfe, "err": err, "sigmas": [float(v) for v in s.sigmas],
            "choice": s.meta["choice"], "polished": s.meta["polished"], "polish_evals": s.meta["polish_evals"],
            "wall_s": wall, "cpu_s": cpu, "karras": e["karras"], "hand_tuned": e["hand-tuned"], "best_peer": peer,
            "best_peer_err": e[peer], "best_bound": bound, "best_bound_err": e[bound], "direct": e["direct"],
            "best_stored": min(e, key=e.get), "best_stored_err": limit,
            "le_every_stored": err <= limit, "vs_best_stored": err / limit - 1.0}


def markdown(out: dict) -> list[str]:
    md = ["# `auto` against the stored comparison", "", _common.provenance_line(out), "",
          "Held-out RMSE (the protocol of `benchmarks/schedules.md`); ratio = auto / that method; 'vs best' = auto "
          "relative to the best stored method of the cell (negative: better than all of them).", ""]
    rows = [[r["model"], r["solver"], r["nfe"], f"{r['err']:.4f}", f"{r['karras']:.4f} ({r['err'] / r['karras']:.2f})",
             f"{r['hand_tuned']:.4f} ({r['err'] / r['hand_tuned']:.2f})",
             f"{r['best_peer']} {r['best_peer_err']:.4f} ({r['err'] / r['best_peer_err']:.2f})",
             f"{r['best_bound']} {r['best_bound_err']:.4f}", f"{r['direct']:.4f}",
             f"{100 * r['vs_best_stored']:+.1f} %", r["choice"] + (" + polish" if r["polished"] else ""),
             f"{r['wall_s']:.1f}"] for r in out["rows"]]
    md += _common.md_table(["model", "solver", "NFE", "auto", "karras", "hand-tuned", "best peer", "best bound",
                            "direct", "vs best", "from", "wall s"], rows)
    n_le = sum(r["le_every_stored"] for r in out["rows"])
    md += ["", f"auto ≤ every stored method in {n_le} of {len(out['rows'])} cells; worst cell "
               f"{100 * max(r['vs_best_stored'] for r in out['rows']):+.1f} % against the best stored method."]
    return md


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default="", help="comma-separated MODEL:SOLVER:NFE (default: see the module doc)")
    p.add_argument("--out", default=str(_common.OUT / "auto"), help="output stem (writes .json and .md)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    bench = json.loads((_common.OUT / "schedules.json").read_text())
    out = {**_common.metadata(_common.command(__file__, argv)), "rows": []}
    models, refs = {}, {}
    for name, solver, nfe in cells_of(bench, a.cells):
        out["rows"].append(run_cell(bench, name, solver, nfe, models, refs))
        r = out["rows"][-1]
        print(f"{name} {solver} NFE {nfe}: auto {r['err']:.4f} (best stored {r['best_stored']} {r['best_stored_err']:.4f}, "
              f"{100 * r['vs_best_stored']:+.1f} %), {r['wall_s']:.1f} s", flush=True)
        _common.write_outputs(a.out, out, markdown(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
