"""Fréchet-MNIST of 1,000 samples for every schedule of the MNIST entries of benchmarks/schedules.json.

bench_schedules.py judges every method on 64 held-out latents of `mnist-edm` (a CPU budget): enough for the
RMSE against the reference solve, but a Fréchet distance of 64 samples is dominated by its small-sample bias.
This script re-samples **the committed schedules** (the ``sigmas`` of every row, not re-optimised) on
``--n`` fresh latents (seed 3: the teacher uses 0, the held-out set 1, ``auto``'s validation 2) with the row's
solver and the entry's denoiser (guided entries: classes 0..9 in turn, so sample i asks for class i mod 10) and
scores them with :func:`dpmsched.metrics.frechet_mnist` against the MNIST test split (1,000 images), with the
class accuracy of guided samples.  Same-size reference: FD of 1,000 MNIST training images (the floor at this
sample size).

Each cell is written as soon as it is done and a re-run skips cells already measured for the same sigmas, so a
long run can be spread over several sessions (``--nfes 5`` first).  Two runs on disjoint cells (different
``--models``, ``--nfes``, ``--solvers`` or ``--methods``) may share the machine: every write re-reads the file under a lock and
merges its own cells in.  Writes benchmarks/schedules_fd.{json,md}.
Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_schedules_fd.py [--models "mnist-edm,mnist-edm w=2"]
[--nfes 4,5,6,10] [--solvers euler,dpmpp_2m] [--n 1000]``.  Cost on this CPU: ~10 ms per sample per network call, twice that guided —
about an hour per unguided entry for every cell.
"""
from __future__ import annotations

import argparse
import fcntl
import sys
import time

import torch
from _common import OUT, command, md_table, metadata, provenance_line, write_outputs
from bench_schedules import CONFIG, ROWS, load_entry

from dpmsched import metrics, solvers
from dpmsched.data import mnist
from dpmsched.files import read_json

SEED = 3
BATCH = 500          # whole label cycles (50 × 10): sample i of every batch asks for class i mod 10


def cell_key(entry: str, row: dict) -> str:
    return f"{entry}|{row['method']}|{row['solver']}|{row['nfe']}"


def measure(den, row: dict, n: int, guided: bool) -> dict:
    """FD (and class accuracy when guided) of ``n`` samples on the row's schedule with its solver."""
    t0 = time.perf_counter()
    with torch.no_grad():
        x = solvers.sample(den, row["sigmas"], row["solver"], n, seed=SEED, batch=BATCH, dtype=torch.float32)
    r = metrics.frechet_mnist(x, labels=torch.arange(n) % 10 if guided else None)
    return {"fd": r["fd"], "class_accuracy": r.get("class_accuracy"), "err": row["err"], "sigmas": row["sigmas"],
            "seconds": time.perf_counter() - t0}


def save(path, res: dict) -> dict:
    """Merge ``res`` into the results file at ``path`` (cells and runs of other runs kept) and rewrite the json and
    md, under an exclusive lock on ``path``.lock so that concurrent runs on disjoint cells lose nothing."""
    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cur = read_json(path, "benchmark results") if path.exists() else {}
        if cur.get("n") == res["n"]:
            res = {**res, "cells": {**cur["cells"], **res["cells"]},
                   "references": {**cur.get("references", {}), **res["references"]},
                   "runs": cur.get("runs", []) + [r for r in res["runs"] if r not in cur.get("runs", [])]}
        write_outputs(path.with_suffix(""), res, table(res))
    return res


def spearman(a, b) -> float:
    """Spearman rank correlation of two equal-length sequences (no ties expected)."""
    ra, rb = (torch.as_tensor(v, dtype=torch.float64).argsort().argsort().double() for v in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mnist-edm,mnist-edm w=2,mnist-edm w=4", help="MNIST entries of schedules.json")
    p.add_argument("--nfes", default="4,5,6,10", help="NFE cells to measure (comma-separated)")
    p.add_argument("--solvers", default="euler,dpmpp_2m", help="solvers whose rows are measured (comma-separated)")
    p.add_argument("--methods", default="", help="only these methods' rows (comma-separated; default: all)")
    p.add_argument("--n", type=int, default=1000, help="samples per cell (a multiple of 10)")
    p.add_argument("--md-only", action="store_true", help="only rewrite schedules_fd.md from schedules_fd.json")
    a = p.parse_args(argv)
    path = OUT / "schedules_fd.json"
    old = read_json(path, "benchmark results") if path.exists() else {}
    if a.md_only:
        write_outputs(OUT / "schedules_fd", old, table(old))
        return 0
    if a.n < 10 or a.n % 10:
        raise ValueError(f"--n must be a positive multiple of 10 (whole label cycles), got {a.n}")
    sched_res = read_json(OUT / "schedules.json", "benchmark results")["results"]
    names = [m for m in a.models.split(",") if m]
    bad = [m for m in names if not m.startswith("mnist") or m not in CONFIG or m not in sched_res]
    if bad:
        raise ValueError(f"--models {bad}: expected MNIST entries of schedules.json {sorted(k for k in sched_res if k.startswith('mnist'))}")
    nfes = {int(k) for k in a.nfes.split(",")}
    solver_set = {k for k in a.solvers.split(",") if k}
    method_set = {k for k in a.methods.split(",") if k} or set(ROWS)
    if method_set - set(ROWS):
        raise ValueError(f"--methods {sorted(method_set - set(ROWS))}: expected some of {ROWS}")
    have = {r["solver"] for m in names for r in sched_res[m]["rows"]}
    if not solver_set or solver_set - have:
        raise ValueError(f"--solvers {sorted(solver_set - have) or a.solvers!r}: expected some of {sorted(have)}")
    torch.set_num_threads(1)
    runs = old.get("runs", []) + [metadata(command(__file__, argv), threads=1)]
    res = {"n": a.n, "seed": SEED, "cells": dict(old.get("cells", {})) if old.get("n") == a.n else {},
           "references": dict(old.get("references", {})), "runs": runs}
    if "train_1000" not in res["references"]:
        # every 4th training image: 100 per class (the split is sorted by class)
        res["references"]["train_1000"] = metrics.frechet_mnist(mnist("train")[::4])["fd"]
    models_json = OUT / "models.json"
    if models_json.exists():
        for m in read_json(models_json, "benchmark results")["models"]:
            for r in m.get("mnist", []) if m.get("model") == "mnist-edm" else []:
                res["references"][f"Heun-18 w={r['guidance']:g}"] = r["fd"]
    for name in names:
        cfg = CONFIG[name]
        den = load_entry(name, cfg)
        for row in sorted(sched_res[name]["rows"], key=lambda r: r["nfe"]):   # whole NFE columns first
            key = cell_key(name, row)
            if (row["nfe"] not in nfes or row["solver"] not in solver_set or row["method"] not in method_set
                    or res["cells"].get(key, {}).get("sigmas") == row["sigmas"]):
                continue
            res["cells"][key] = measure(den, row, a.n, "w" in cfg and cfg["w"] != 0.0)
            print(f"{key}: FD {res['cells'][key]['fd']:.1f} ({res['cells'][key]['seconds']:.0f} s)", flush=True)
            res = save(path, res)
    save(path, res)
    return 0


def table(res: dict) -> list[str]:
    """schedules_fd.md from the results of :func:`main`."""
    if not res:
        return ["# Fréchet-MNIST of the committed schedules", "", "No cell measured yet."]
    refs = res["references"]
    md = ["# Fréchet-MNIST of the committed schedules (1,000 samples per cell)", ""]
    md += [f"- {provenance_line(r)}" for r in res["runs"]]
    md += ["", f"Every row of the MNIST entries of `schedules.json` (its schedules, not re-optimised) sampled on "
           f"{res['n']} fresh latents (seed {res['seed']}) with the row's solver; FD against the 1,000 MNIST test "
           "images (lower is better); guided entries: classes 0..9 in turn, class accuracy in brackets. "
           f"Same-size floor: FD(1,000 training images (100 per class), test) = {refs['train_1000']:.1f}"
           + "".join(f"; {k} (models.md, 1,000 samples) {v:.1f}" for k, v in refs.items() if k.startswith("Heun"))
           + ". `rank vs err`: Spearman correlation, per cell, between the methods' FD and their held-out RMSE "
           "in schedules.md (1 = the two metrics order the methods alike).", ""]
    entries = dict.fromkeys(k.split("|")[0] for k in res["cells"])
    for name in entries:
        for solver in dict.fromkeys(k.split("|")[2] for k in res["cells"] if k.startswith(name + "|")):
            nfes = sorted({int(k.split("|")[3]) for k in res["cells"] if k.startswith(f"{name}|") and k.split("|")[2] == solver})

            def cell(m, nfe, name=name, solver=solver):
                c = res["cells"].get(f"{name}|{m}|{solver}|{nfe}")
                if c is None:
                    return "—"
                acc = f" ({c['class_accuracy']:.3f})" if c.get("class_accuracy") is not None else ""
                return f"{c['fd']:.1f}{acc}"

            md += [f"## {name}, {solver}", ""]
            got = [[res["cells"][f"{name}|{m}|{solver}|{k}"] for m in ROWS if f"{name}|{m}|{solver}|{k}" in res["cells"]]
                   for k in nfes]
            best = [min(ROWS, key=lambda m, k=k: res["cells"].get(f"{name}|{m}|{solver}|{k}", {}).get("fd", float("inf")))
                    for k in nfes]
            rank = ["rank vs err", *(f"{spearman([c['fd'] for c in g], [c['err'] for c in g]):+.2f}" if len(g) > 2
                                     else "—" for g in got)]
            md += md_table(["method", *(f"NFE {k}" for k in nfes)],
                           [[m, *(cell(m, k) for k in nfes)] for m in ROWS] + [rank])
            md += ["", "Lowest FD per NFE: " + ", ".join(f"NFE {k} {b}" for k, b in zip(nfes, best)) + ".", ""]
    return md


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
