"""Skip-Tuning on the shipped digits UNet.  Writes benchmarks/skiptune.json and skiptune.md.

docs/math.md §5.  Model ``digits-edm``; score: Fréchet-digits distance (``skiptune.fd_score`` =
``metrics.frechet_digits`` against the 360 test digits) of ``N`` samples; every cell of a grid uses the
same noise (seed 0), so the cells are a paired comparison.

1. For each solver (Euler, DPM-Solver++(2M)) and NFE (5, 10) on EDM's Karras ρ = 7 schedule: the grid
   (ρ_top, ρ_bottom) ∈ RHO² (per-skip interpolation), the best cell, the metric before (ρ ≡ 1) / after.
2. The best ρ re-scored against the plain model on fresh noise (seeds 1 … FRESH): the grid search can
   overfit its seeds, and FD of a few hundred samples varies a lot from seed to seed.
   And the diagonal ρ_top = ρ_bottom ∈ DIAG beyond the grid, on the grid's noise: where does the gain stop?
3. With each optimized schedule (Euler, NFE 5 and 10): a coarse grid RHO_OPT², the best cell, before/after,
   next to the Karras ρ = 7 numbers of the same run.
4. The pixel-space denoising loss (EDM training objective on the test digits, fixed σ and ε) of the plain
   model and of each best ρ: the paper says it gets worse while FD improves.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_skiptune.py [--workers 2] [--quick]``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import OUT, command, md_table, metadata, provenance_line, write_json, write_md

from dpmsched import Schedule, data, models, skiptune, solvers
from dpmsched.files import read_json

MODEL = "digits-edm"
SOLVERS = ("euler", "dpmpp_2m")
NFES = (5, 10)
RHO = (1.0, 0.875, 0.75, 0.625, 0.5)   # the paper steps 0.05 down to 0.6; coarser and one step further (CPU budget)
RHO_OPT = (1.0, 0.75, 0.5)                # a sub-grid of RHO, so Karras can be read off on it too
DIAG = (0.4, 0.3, 0.2, 0.1)   # ρ_top = ρ_bottom beyond the grid, same noise as the grid
METHODS = ("huang", "bound-prop", "ots", "gits", "ays")
N, SEED, FRESH = 384, 0, 3


def karras(den, steps: int) -> Schedule:
    return Schedule.karras(steps, sigma_min=den.sigma_min, sigma_max=den.sigma_max)


def edm_losses(den, rho_pairs, seed: int = 0) -> dict:
    """EDM training loss (train.edm_loss, the objective digits-edm was trained on) on the 360 test digits
    with one fixed generator (same σ and ε) for the plain model and for each (ρ_top, ρ_bottom)."""
    from dpmsched.train import edm_loss

    x0 = data.digits("test").float()
    out = {}
    with torch.no_grad():
        for rt, rb in rho_pairs:
            with skiptune.skip_tuning(den, rt, rb) as d:
                out[f"{rt:g},{rb:g}"] = float(edm_loss(d, x0, torch.Generator().manual_seed(seed)))
    return out


def fd_at(den, sched, solver, rho_top, rho_bottom, n, seed) -> float:
    """FD of ``n`` samples (noise of ``seed``) with Skip-Tuning (ρ_top, ρ_bottom) on ``sched``."""
    with skiptune.skip_tuning(den, rho_top, rho_bottom) as d:
        return skiptune.fd_score(solvers.sample(d, sched, solver, n, seed=seed, dtype=torch.float32))


def fresh_check(den, sched, solver, best, n, seeds) -> dict:
    """FD of plain and tuned samples on fresh seeds (paired: same noise for both)."""
    plain = [fd_at(den, sched, solver, 1.0, 1.0, n, s) for s in seeds]
    tuned = [fd_at(den, sched, solver, best["rho_top"], best["rho_bottom"], n, s) for s in seeds]
    return {"seeds": list(seeds), "plain": plain, "tuned": tuned,
            "tuned_better": int(sum(t < p for p, t in zip(plain, tuned)))}


def grid_row(res: dict) -> dict:
    return {"solver": res["solver"], "nfe": res["nfe"], "rho_top": res["rho_top"], "rho_bottom": res["rho_bottom"],
            "scores": res["scores"].tolist(), "best": res["best"], "baseline": res["baseline"],
            "improvement": res["improvement"], "seconds": round(res["seconds"], 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=1, help="process pool size for the grid search")
    p.add_argument("--quick", action="store_true", help="tiny run (n=128, 3x3 grid, one method) to test the script")
    p.add_argument("--md-only", action="store_true", help="only rewrite skiptune.md from skiptune.json")
    p.add_argument("--redo-methods", default="", metavar="M1,M2",
                   help="re-run only these optimizers' rows and replace them in the existing skiptune.json")
    a = p.parse_args(argv)
    if a.md_only:
        return write_report(read_json(OUT / "skiptune.json", "benchmark results"))
    torch.set_num_threads(1)
    meta = metadata(command(__file__, argv), threads=1, workers=a.workers)
    if a.redo_methods:
        return redo_methods(a.redo_methods.split(","), a.workers, meta)
    global DIAG
    if a.quick:
        DIAG = DIAG[:1]
    n, rho, methods, fresh = (128, RHO_OPT, METHODS[:1], 1) if a.quick else (N, RHO, METHODS, FRESH)
    den = models.load(MODEL).eval()
    t_all = time.perf_counter()
    result = {**meta, "model": MODEL, "n": n, "seed": SEED,
              "per": "skip", "score": "frechet_digits vs test split (360)", "karras": [], "optimized": [],
              "optimized_failed": {}}
    json_path = Path(tempfile.gettempdir()) / "skiptune_quick.json" if a.quick else OUT / "skiptune.json"

    def dump():
        write_json(json_path, result)

    for solver in SOLVERS:
        for nfe in NFES:
            sched = karras(den, nfe)              # both solvers: one network call per step
            r = skiptune.grid_search(den, sched, solver, rho, rho, n=n, seed=SEED, workers=a.workers)
            row = grid_row(r)
            row["diagonal"] = {f"{v:g}": fd_at(den, sched, solver, v, v, n, SEED) for v in DIAG}
            row["fresh"] = fresh_check(den, sched, solver, r["best"], n, range(SEED + 1, SEED + 1 + fresh))
            result["karras"].append(row)
            print(f"karras {solver} NFE {nfe}: {r['baseline']:.2f} -> {r['best']['score']:.2f} at "
                  f"{r['best']['rho_top']},{r['best']['rho_bottom']} ({r['seconds']:.0f} s); fresh {row['fresh']}",
                  flush=True)
            dump()
    optimized_rows(den, methods, n, a.workers, result, dump)
    pairs = [(1.0, 1.0)] + sorted({(r["best"]["rho_top"], r["best"]["rho_bottom"]) for r in result["karras"]})
    result["edm_loss"] = edm_losses(den, pairs, SEED)
    result["seconds"] = round(time.perf_counter() - t_all, 1)
    dump()
    if not a.quick:
        write_report(result)


def redo_methods(methods, workers: int, meta: dict) -> None:
    """Re-measure the optimized-schedule rows of ``methods`` in benchmarks/skiptune.json (after an
    optimizer changed), keeping every other row; the redo is recorded under ``redone``."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"--redo-methods: unknown {bad}; expected some of {METHODS}")
    result = read_json(OUT / "skiptune.json", "benchmark results")
    result["optimized"] = [r for r in result["optimized"] if r["method"] not in methods]
    for m in methods:
        result["optimized_failed"] = {k: v for k, v in result["optimized_failed"].items() if not k.startswith(m + "@")}
    t0 = time.perf_counter()
    den = models.load(MODEL).eval()

    def dump():
        write_json(OUT / "skiptune.json", result)

    optimized_rows(den, methods, result["n"], workers, result, dump)
    result.setdefault("redone", []).append({"methods": list(methods), "seconds": round(time.perf_counter() - t0, 1),
                                            **meta})
    order = {m: i for i, m in enumerate(METHODS)}
    result["optimized"].sort(key=lambda r: (order[r["method"]], r["nfe"]))
    dump()
    write_report(result)


def optimized_rows(den, methods, n: int, workers: int, result: dict, dump) -> None:
    """Grid-search ρ on each method's Euler schedule at every NFE; rows appended to result["optimized"]."""
    for method in methods:
        for nfe in NFES:
            from dpmsched.optimize import optimize

            try:
                t0 = time.perf_counter()
                sched = optimize(den, method, nfe, solver="euler")
                opt_s = time.perf_counter() - t0
            except Exception as e:                 # an optimizer that fails here is reported, not hidden
                result["optimized_failed"][f"{method}@{nfe}"] = f"{type(e).__name__}: {e}"
                print(f"{method} NFE {nfe} failed: {e}", flush=True)
                continue
            r = skiptune.grid_search(den, sched, "euler", RHO_OPT, RHO_OPT, n=n, seed=SEED, workers=workers)
            row = grid_row(r)
            row.update(method=method, sigmas=[float(s) for s in sched.sigmas], optimize_s=round(opt_s, 1))
            result["optimized"].append(row)
            print(f"{method} euler NFE {nfe}: {r['baseline']:.2f} -> {r['best']['score']:.2f} at "
                  f"{r['best']['rho_top']},{r['best']['rho_bottom']}", flush=True)
            dump()


def _subgrid_best(row: dict, rhos) -> dict:
    """Best cell of a grid row restricted to rhos × rhos (rhos ⊆ the row's grid)."""
    cells = [(row["scores"][row["rho_top"].index(t)][row["rho_bottom"].index(b)], t, b) for t in rhos for b in rhos]
    sc, t, b = min(cells)
    return {"rho_top": t, "rho_bottom": b, "score": sc}


def write_report(r: dict, path: Path | None = None):
    """skiptune.md (or ``path``) from the results ``r`` of :func:`main`."""
    md = ["# Skip-Tuning (notebook 05)", "", f"{provenance_line(r)} {r['seconds']:.0f} s in all.", "",
          f"Model `{r['model']}`; score = Fréchet-digits distance (lower is better) of {r['n']} samples against the "
          "360 test digits; every cell of a grid uses the same noise (seed 0). ρ interpolated per skip from "
          "ρ_bottom (deepest) to ρ_top (input conv), constant in σ. Ratio = plain FD / tuned FD (> 1: Skip-Tuning "
          "helps).", ""]
    md += [f"Rows of {', '.join(x['methods'])} re-measured after an optimizer changed: `{x['command']}` — git "
           f"{x['git_commit']}, {x['date']}; {x['seconds']:.0f} s." for x in r.get("redone", [])]
    md += [""] if r.get("redone") else []
    md += ["## Best (ρ_top, ρ_bottom) on EDM's Karras ρ = 7 schedule", ""]
    md += md_table(["solver", "NFE", "plain FD", "best ρ_top, ρ_bottom", "tuned FD", "ratio", "fresh seeds: plain → tuned",
                    "tuned better"], [
        [k["solver"], k["nfe"], f"{k['baseline']:.2f}", _rhos(k["best"]), f"{k['best']['score']:.2f}",
         f"{k['improvement']:.2f}", ", ".join(f"{a:.1f}→{b:.1f}" for a, b in zip(k["fresh"]["plain"], k["fresh"]["tuned"])),
         f"{k['fresh']['tuned_better']}/{len(k['fresh']['seeds'])}"] for k in r["karras"]])
    on_edge = [k for k in r["karras"] if min(k["best"]["rho_top"], k["best"]["rho_bottom"]) == min(k["rho_top"])]
    if on_edge:
        md += ["", f"{len(on_edge)} of {len(r['karras'])} optima lie on the edge of the grid (ρ = "
               f"{min(r['karras'][0]['rho_top']):g}). Beyond it, on the diagonal ρ_top = ρ_bottom (same noise as the grid):"]
    diag = list(r["karras"][0]["diagonal"])
    md += [""] + md_table(["solver", "NFE", "plain", "grid best", *(f"ρ = {v}" for v in diag)], [
        [k["solver"], k["nfe"], f"{k['baseline']:.2f}", f"{k['best']['score']:.2f}",
         *(f"{k['diagonal'][v]:.2f}" for v in diag)] for k in r["karras"]])
    md += ["", "## Combined with optimized schedules (Euler; grid ρ ∈ {1, 0.75, 0.5}², Karras read off the same sub-grid)", ""]
    kar = {k["nfe"]: k["baseline"] for k in r["karras"] if k["solver"] == "euler"}
    rows = []
    for k in r["karras"]:
        if k["solver"] == "euler":
            sub = _subgrid_best(k, r["optimized"][0]["rho_top"] if r["optimized"] else k["rho_top"])
            rows.append(["karras ρ=7", k["nfe"], f"{k['baseline']:.2f}", _rhos(sub), f"{sub['score']:.2f}",
                         f"{k['baseline'] / sub['score']:.2f}", "1.00"])
    rows += [[k["method"], k["nfe"], f"{k['baseline']:.2f}", _rhos(k["best"]), f"{k['best']['score']:.2f}",
              f"{k['improvement']:.2f}", f"{k['baseline'] / kar[k['nfe']]:.2f}"] for k in r["optimized"]]
    rows += [[name, f"failed: {err[:80]}", "", "", "", "", ""] for name, err in r["optimized_failed"].items()]
    md += md_table(["schedule", "NFE", "plain FD", "best ρ_top, ρ_bottom", "tuned FD", "ratio",
                    "plain FD / Karras plain FD"], rows)
    md += ["", "## Denoising loss vs sample quality", "",
           "EDM training loss (`train.edm_loss`, the objective the model was trained on) on the 360 test digits, "
           "same σ and ε for every row:", ""]
    base = r["edm_loss"]["1,1"]
    md += md_table(["ρ_top, ρ_bottom", "EDM loss", "vs plain"],
                   [[key, f"{v:.4f}", f"{v / base:.2f}×"] for key, v in r["edm_loss"].items()])
    write_md(OUT / "skiptune.md" if path is None else path, md)
    print("\n".join(md))


def _rhos(cell: dict) -> str:
    """"ρ_top, ρ_bottom" of a grid cell."""
    return f"{cell['rho_top']:g}, {cell['rho_bottom']:g}"


if __name__ == "__main__":
    main()
