"""The cost of Dask: the 12-run ``sweeps/example.yaml`` with ``--executor local`` and ``--executor dask``, 2 workers
each, in one run on this machine.  Writes benchmarks/sweep.json and sweep.md.

Each sweep is the command a user types (``python -m dpmsched sweep GRID --workers 2 --executor E --out DIR``,
a fresh DIR, so all 12 runs run), timed from start to exit: it includes starting the workers (a spawned process
pool, or a Dask LocalCluster of 2 processes × 1 thread on 127.0.0.1 and its start-up probe) and closing them.
From the records (``seconds``: a notebook's papermill time inside its task):

* wall ratio = wall(dask) / wall(local);
* overhead per run, two ways: from the wall times alone, ``(wall(dask) − wall(local)) · 2 / 12`` (the extra
  worker-seconds per run), and net of the notebooks' own times (which vary by more than Dask costs on a busy
  machine): each executor's worker-seconds outside notebooks, ``(2 · wall − Σ seconds) / 12``, dask minus
  local;
* each as a fraction of a run's mean time (the target: ≤ 10 %).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sweep.py`` (several minutes; needs the ``[dask]`` extra).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import OUT, command, md_table, metadata, provenance_line, write_outputs

ROOT = OUT.parent
WORKERS = 2


def timed_sweep(grid: Path, executor: str, out: Path) -> dict:
    """Run one sweep as a user would; wall time, and the seconds of each record."""
    cmd = [sys.executable, "-m", "dpmsched", "sweep", str(grid), "--workers", str(WORKERS), "--executor", executor,
           "--out", str(out)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{executor} sweep failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    recs = [json.loads(f.read_text()) for f in out.glob("*/[0-9a-f]*.json")]
    assert all(r["status"] == "ok" for r in recs)
    seconds = [r["seconds"] for r in recs]
    return {"executor": executor, "wall_s": round(wall, 2), "runs": len(recs), "run_seconds": seconds,
            "mean_run_s": round(statistics.mean(seconds), 2), "sum_run_s": round(sum(seconds), 2),
            "outside_notebooks_per_run_s": round((WORKERS * wall - sum(seconds)) / len(recs), 3),
            "results": {r["hash"]: r["results"] for r in recs}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", default="sweeps/example.yaml")
    ap.add_argument("--out", default=str(OUT / "sweep"), help="stem of the result files (default: benchmarks/sweep)")
    a = ap.parse_args(argv)
    meta = metadata(command(__file__, argv), threads=1, workers=WORKERS)
    grid = (ROOT / a.grid).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {e: timed_sweep(grid, e, Path(tmp) / e) for e in ("local", "dask")}
    loc, dsk = rows["local"], rows["dask"]
    assert loc["runs"] == dsk["runs"] and loc["results"] == dsk["results"], "the executors gave different results"
    n, run_s = loc["runs"], loc["mean_run_s"]
    wall_overhead = (dsk["wall_s"] - loc["wall_s"]) * WORKERS / n
    net_overhead = dsk["outside_notebooks_per_run_s"] - loc["outside_notebooks_per_run_s"]
    summary = {"runs": n, "workers": WORKERS, "wall_local_s": loc["wall_s"], "wall_dask_s": dsk["wall_s"],
               "wall_ratio_dask_over_local": round(dsk["wall_s"] / loc["wall_s"], 3),
               "mean_run_s_local": run_s, "mean_run_s_dask": dsk["mean_run_s"],
               "overhead_per_run_s_from_wall": round(wall_overhead, 3),
               "overhead_per_run_fraction_from_wall": round(wall_overhead / run_s, 4),
               "overhead_per_run_s_net_of_notebooks": round(net_overhead, 3),
               "overhead_per_run_fraction_net_of_notebooks": round(net_overhead / run_s, 4),
               "same_results": True}
    summary["target_met"] = max(summary["overhead_per_run_fraction_from_wall"],
                                summary["overhead_per_run_fraction_net_of_notebooks"]) <= 0.10
    for r in rows.values():
        r.pop("results")
    result = meta | {"grid": a.grid, "summary": summary, "sweeps": rows}
    pct = lambda f: f"{100 * f:.1f} %"
    md = ["# Sweep executors: local process pool vs Dask LocalCluster", "", provenance_line(result), "",
          f"`{a.grid}`: {n} runs of notebook 01, {WORKERS} workers each; wall time from start to exit of "
          "`python -m dpmsched sweep` (worker start-up and shut-down included).", "",
          *md_table(["executor", "wall s", "mean run s", "Σ run s", "worker-s outside notebooks per run"],
                    [[r["executor"], r["wall_s"], r["mean_run_s"], r["sum_run_s"], r["outside_notebooks_per_run_s"]]
                     for r in rows.values()]), "",
          f"Wall ratio dask / local: **{summary['wall_ratio_dask_over_local']:.3f}**.  Dask overhead per run: "
          f"{summary['overhead_per_run_s_from_wall']:.2f} s from the wall times "
          f"({pct(summary['overhead_per_run_fraction_from_wall'])} of a {run_s:.1f} s run), "
          f"{summary['overhead_per_run_s_net_of_notebooks']:.2f} s net of the notebooks' own times "
          f"({pct(summary['overhead_per_run_fraction_net_of_notebooks'])}); target ≤ 10 %: "
          f"**{'met' if summary['target_met'] else 'not met'}**.  Both executors gave the same results in every run."]
    write_outputs(a.out, result, md)
    print("\n".join(md))


if __name__ == "__main__":
    main()
