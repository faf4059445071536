"""Skip-Tuning on a shipped UNet.  Writes benchmarks/skiptune.json and skiptune.md (``--model digits-edm``, the
default) or benchmarks/skiptune_<model>.{json,md} (e.g. ``--model mnist-edm``).

docs/math.md §5.  Score: Fréchet-digits distance (``skiptune.fd_score`` = ``metrics.frechet_digits`` against the
360 test digits) or, for ``mnist-edm`` (unguided: the null label), Fréchet-MNIST against the MNIST test split, of
``N`` samples; every cell of a grid uses the same noise (seed 0), so the cells are a paired comparison.

1. For each solver (Euler, DPM-Solver++(2M)) and NFE (5, 10) on EDM's Karras ρ = 7 schedule: the grid
   (ρ_top, ρ_bottom) ∈ RHO² (per-skip interpolation), the best cell, the metric before (ρ ≡ 1) / after.
2. The best ρ re-scored against the plain model on fresh noise (seeds 1 … FRESH): the grid search can
   overfit its seeds, and FD of a few hundred samples varies a lot from seed to seed.
   And the diagonal ρ_top = ρ_bottom ∈ DIAG beyond the grid, on the grid's noise: where does the gain stop?
3. With each optimized schedule (Euler, NFE 5 and 10): a coarse grid RHO_OPT², the best cell, before/after,
   next to the Karras ρ = 7 numbers of the same run.
4. The pixel-space denoising loss (EDM training objective on the test digits, fixed σ and ε) of the plain
   model and of each best ρ: the paper says it gets worse while FD improves.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_skiptune.py [--workers 2] [--quick]``; MNIST, the
protocol at Euler NFE 5 only: ``... bench_skiptune.py --model mnist-edm --solvers euler --nfes 5`` (the optimizers
then run with the MNIST sizes of bench_schedules.py, so the schedules are the ones of its table).
"""
from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import torch
from _common import command, md_table, metadata, provenance_line, result_stem, write_json, write_md
from bench_schedules import options_for

from dpmsched import Schedule, data, models, skiptune, solvers
from dpmsched.files import read_json

MODEL = "digits-edm"
SCORES = {"digits": "frechet_digits vs test split (360)", "mnist": "frechet_mnist vs MNIST test split (1000)"}
SOLVERS = ("euler", "dpmpp_2m")
NFES = (5, 10)
RHO = (1.0, 0.875, 0.75, 0.625, 0.5)   # the paper steps 0.05 down to 0.6; coarser and one step further (CPU budget)
RHO_OPT = (1.0, 0.75, 0.5)                # a sub-grid of RHO, so Karras can be read off on it too
DIAG = (0.4, 0.3, 0.2, 0.1)   # ρ_top = ρ_bottom beyond the grid, same noise as the grid
METHODS = ("huang", "bound-prop", "ots", "gits", "ays")
N, SEED, FRESH = 384, 0, 3


def karras(den, steps: int) -> Schedule:
    return Schedule.karras(steps, sigma_min=den.sigma_min, sigma_max=den.sigma_max)


def edm_losses(den, rho_pairs, seed: int = 0, dataset: str = "digits") -> dict:
    """EDM training loss (train.edm_loss, the objective the model was trained on) on the test split of
    ``dataset`` with one fixed generator (same σ and ε) for the plain model and for each (ρ_top, ρ_bottom)."""
    from dpmsched.train import edm_loss

    x0 = data.image_set(dataset)[0]("test").float()
    out = {}
    with torch.no_grad():
        for rt, rb in rho_pairs:
            with skiptune.skip_tuning(den, rt, rb) as d:
                out[f"{rt:g},{rb:g}"] = float(edm_loss(d, x0, torch.Generator().manual_seed(seed)))
    return out


def setup(model: str) -> dict:
    """What changes with the model: its data set, the grid-search score (picklable), the output stem and the
    optimizers' options (digits-edm: the package defaults, as committed; an entry of bench_schedules' CONFIG: its
    sizes, so the schedules are the ones of that table)."""
    den = models.load(model).eval()
    dataset = den.config["dataset"]
    if dataset not in SCORES:
        raise ValueError(f"--model {model!r}: data {dataset!r} has no Fréchet score; expected one of {sorted(SCORES)}")
    return {"model": model, "den": den, "data": dataset, "score": functools.partial(skiptune.fd_score, data=dataset),
            "stem": result_stem("skiptune", model), "opts": options_for(model)}


def fd_at(st, sched, solver, rho_top, rho_bottom, n, seed) -> float:
    """FD of ``n`` samples (noise of ``seed``) with Skip-Tuning (ρ_top, ρ_bottom) on ``sched``."""
    with skiptune.skip_tuning(st["den"], rho_top, rho_bottom) as d:
        return st["score"](solvers.sample(d, sched, solver, n, seed=seed, dtype=torch.float32))


def fresh_check(st, sched, solver, best, n, seeds) -> dict:
    """FD of plain and tuned samples on fresh seeds (paired: same noise for both)."""
    plain = [fd_at(st, sched, solver, 1.0, 1.0, n, s) for s in seeds]
    tuned = [fd_at(st, sched, solver, best["rho_top"], best["rho_bottom"], n, s) for s in seeds]
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
    p.add_argument("--model", default=MODEL, help="a shipped UNet (digits-edm, mnist-edm)")
    p.add_argument("--solvers", default=",".join(SOLVERS), help="solvers of the Karras rows, comma-separated")
    p.add_argument("--nfes", default=",".join(map(str, NFES)), help="NFEs of every row, comma-separated")
    p.add_argument("--md-only", action="store_true", help="only rewrite the markdown from the JSON")
    p.add_argument("--redo-methods", default="", metavar="M1,M2",
                   help="re-run only these optimizers' rows and replace them in the existing JSON")
    a = p.parse_args(argv)
    st = setup(a.model)
    if a.md_only:
        return write_report(read_json(st["stem"].with_suffix(".json"), "benchmark results"), st)
    torch.set_num_threads(1)
    meta = metadata(command(__file__, argv), threads=1, workers=a.workers)
    if a.redo_methods:
        return redo_methods(st, a.redo_methods.split(","), a.workers, meta)
    global DIAG
    if a.quick:
        DIAG = DIAG[:1]
    n, rho, methods, fresh = (128, RHO_OPT, METHODS[:1], 1) if a.quick else (N, RHO, METHODS, FRESH)
    nfes = [int(k) for k in a.nfes.split(",")]
    t_all = time.perf_counter()
    result = {**meta, "model": a.model, "n": n, "seed": SEED, "nfes": nfes,
              "per": "skip", "score": SCORES[st["data"]], "karras": [], "optimized": [],
              "optimized_failed": {}}
    json_path = Path(tempfile.gettempdir()) / f"{st['stem'].name}_quick.json" if a.quick else st["stem"].with_suffix(".json")

    def dump():
        write_json(json_path, result)

    for solver in a.solvers.split(","):
        for nfe in nfes:
            sched = karras(st["den"], nfe)              # both solvers: one network call per step
            r = skiptune.grid_search(st["den"], sched, solver, rho, rho, n=n, seed=SEED, workers=a.workers,
                                     score=st["score"])
            row = grid_row(r)
            row["diagonal"] = {f"{v:g}": fd_at(st, sched, solver, v, v, n, SEED) for v in DIAG}
            row["fresh"] = fresh_check(st, sched, solver, r["best"], n, range(SEED + 1, SEED + 1 + fresh))
            result["karras"].append(row)
            print(f"karras {solver} NFE {nfe}: {r['baseline']:.2f} -> {r['best']['score']:.2f} at "
                  f"{r['best']['rho_top']},{r['best']['rho_bottom']} ({r['seconds']:.0f} s); fresh {row['fresh']}",
                  flush=True)
            dump()
    optimized_rows(st, methods, n, a.workers, result, dump, nfes)
    pairs = [(1.0, 1.0)] + sorted({(r["best"]["rho_top"], r["best"]["rho_bottom"]) for r in result["karras"]})
    result["edm_loss"] = edm_losses(st["den"], pairs, SEED, st["data"])
    result["seconds"] = round(time.perf_counter() - t_all, 1)
    dump()
    if not a.quick:
        write_report(result, st)


def redo_methods(st, methods, workers: int, meta: dict) -> None:
    """Re-measure the optimized-schedule rows of ``methods`` in the model's JSON (after an optimizer changed),
    keeping every other row; the redo is recorded under ``redone``."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"--redo-methods: unknown {bad}; expected some of {METHODS}")
    path = st["stem"].with_suffix(".json")
    result = read_json(path, "benchmark results")
    result["optimized"] = [r for r in result["optimized"] if r["method"] not in methods]
    for m in methods:
        result["optimized_failed"] = {k: v for k, v in result["optimized_failed"].items() if not k.startswith(m + "@")}
    t0 = time.perf_counter()

    def dump():
        write_json(path, result)

    optimized_rows(st, methods, result["n"], workers, result, dump, result.get("nfes", NFES))
    result.setdefault("redone", []).append({"methods": list(methods), "seconds": round(time.perf_counter() - t0, 1),
                                            **meta})
    order = {m: i for i, m in enumerate(METHODS)}
    result["optimized"].sort(key=lambda r: (order[r["method"]], r["nfe"]))
    dump()
    write_report(result, st)


def optimized_rows(st, methods, n: int, workers: int, result: dict, dump, nfes) -> None:
    """Grid-search ρ on each method's Euler schedule at every NFE; rows appended to result["optimized"]."""
    from dpmsched.optimize import optimize

    for method in methods:
        for nfe in nfes:
            try:
                t0 = time.perf_counter()
                sched = optimize(st["den"], method, nfe, solver="euler", **st["opts"](method))
                opt_s = time.perf_counter() - t0
            except Exception as e:                 # an optimizer that fails here is reported, not hidden
                result["optimized_failed"][f"{method}@{nfe}"] = f"{type(e).__name__}: {e}"
                print(f"{method} NFE {nfe} failed: {e}", flush=True)
                continue
            r = skiptune.grid_search(st["den"], sched, "euler", RHO_OPT, RHO_OPT, n=n, seed=SEED, workers=workers,
                                     score=st["score"])
            row = grid_row(r)
            row.update(method=method, sigmas=[float(s) for s in sched.sigmas], optimize_s=round(opt_s, 1),
                       options=st["opts"](method))
            result["optimized"].append(row)
            print(f"{method} euler NFE {nfe}: {r['baseline']:.2f} -> {r['best']['score']:.2f} at "
                  f"{r['best']['rho_top']},{r['best']['rho_bottom']}", flush=True)
            dump()


def _subgrid_best(row: dict, rhos) -> dict:
    """Best cell of a grid row restricted to rhos × rhos (rhos ⊆ the row's grid)."""
    cells = [(row["scores"][row["rho_top"].index(t)][row["rho_bottom"].index(b)], t, b) for t in rhos for b in rhos]
    sc, t, b = min(cells)
    return {"rho_top": t, "rho_bottom": b, "score": sc}


def write_report(r: dict, st: dict, path: Path | None = None):
    """<stem>.md (or ``path``) from the results ``r`` of :func:`main`."""
    test = "360 test digits" if st["data"] == "digits" else "1,000 MNIST test images (unguided samples: the null label)"
    md = [f"# Skip-Tuning on {r['model']} (notebook 05)", "", f"{provenance_line(r)} {r['seconds']:.0f} s in all.", "",
          f"Model `{r['model']}`; score = Fréchet-{st['data']} distance (lower is better) of {r['n']} samples against the "
          f"{test}; every cell of a grid uses the same noise (seed 0). ρ interpolated per skip from "
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
           f"EDM training loss (`train.edm_loss`, the objective the model was trained on) on the {test}, "
           "same σ and ε for every row:", ""]
    base = r["edm_loss"]["1,1"]
    md += md_table(["ρ_top, ρ_bottom", "EDM loss", "vs plain"],
                   [[key, f"{v:.4f}", f"{v / base:.2f}×"] for key, v in r["edm_loss"].items()])
    write_md(st["stem"].with_suffix(".md") if path is None else path, md)
    print("\n".join(md))


def _rhos(cell: dict) -> str:
    """"ρ_top, ρ_bottom" of a grid cell."""
    return f"{cell['rho_top']:g}, {cell['rho_bottom']:g}"


if __name__ == "__main__":
    main()
