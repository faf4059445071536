"""Solver overhead and agreement with diffusers.  Writes benchmarks/solvers.json and benchmarks/solvers.md.

1. Overhead: wall time of each solver at 10 steps on a batch of 256 digits-shaped (1×8×8) states,
   divided by NFE × the raw denoiser call time measured in the same run (target ≤ 1.05).  Two
   denoisers: the tiny random diffusers UNet2DModel (float32; needs the [hub] extra) and the exact
   digits-empirical denoiser (float64).  Solver runs and blocks of NFE raw calls alternate 7 times; the
   minimum of each is used (the least disturbed run on a shared machine); one torch thread.
2. Agreement: max|ours − diffusers| / max|diffusers| on the tiny UNet, 8 steps, each pair of
   ``adapters.DIFFUSERS_COUNTERPARTS``, with model and samples in float64 and in float32 (the float32
   rows compare diffusers-in-float32 and ours-in-float32 with our float64 result).

Run: ``.venv/bin/python benchmarks/bench_solvers.py`` (or ``make bench``).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
from _common import OUT, command, md_table, metadata, provenance_line, write_outputs

from dpmsched import Schedule, models, solvers

STEPS, BATCH, REPEATS = 10, 256, 7
CASES = [("euler", {}), ("ddim", {"eta": 1.0}), ("heun", {}), ("dpmpp_2m", {}), ("dpmpp_3m", {}),
         ("unipc", {}), ("ipndm", {}), ("sa_solver", {}), ("sa_solver", {"tau": 0.0})]


def _free(x, sigma):
    """A denoiser that costs (almost) nothing, to time a solver's own arithmetic."""
    return x


def overhead(den, dtype, label):
    sched = Schedule.karras(STEPS, sigma_min=float(den.sigma_min), sigma_max=min(80.0, float(den.sigma_max)))
    z = torch.randn(BATCH, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=dtype)
    x = float(sched.sigmas[0]) * z
    sig = torch.tensor(3.0, dtype=torch.float64)
    with torch.no_grad():
        solvers.euler(den, x, sched)                                  # warm-up
        rows = []
        for name, opts in CASES:
            kw = dict(opts, generator=torch.Generator().manual_seed(1)) if name in ("ddim", "sa_solver") else opts
            fn = solvers.get(name)
            n = solvers.nfe(name, sched, **opts)
            walls, raws = [], []
            for _ in range(REPEATS):                                  # interleaved; min = least disturbed
                t0 = time.perf_counter()
                fn(den, x, sched, **kw)
                walls.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for _ in range(n):
                    den(x, sig)
                raws.append(time.perf_counter() - t0)
            wall, raw = min(walls), min(raws) / n
            free = []                                                  # the solver's own work: a free denoiser
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                fn(_free, x, sched, **kw)
                free.append(time.perf_counter() - t0)
            rows.append({"denoiser": label, "solver": name, "opts": dict(opts), "nfe": n, "wall_s": wall,
                         "call_s": raw, "overhead": wall / (n * raw), "bookkeeping_s": min(free),
                         "overhead_from_bookkeeping": 1.0 + min(free) / (n * raw)})
            print(f"{label:>16} {name:>10} {str(opts):>16}: {wall * 1e3:8.2f} ms / ({n} × {raw * 1e3:.3f} ms)"
                  f" = {wall / (n * raw):.3f}", flush=True)
    return rows


def agreement(folder):
    from dpmsched.adapters import DIFFUSERS_COUNTERPARTS, compare_with_diffusers

    rows = []
    z64 = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d64 = models.load(str(folder))
    d64.model.unet.double()
    d32 = models.load(str(folder))
    for case in sorted(DIFFUSERS_COUNTERPARTS):
        ours64, _, rel64 = compare_with_diffusers(d64, case, 8, z64)
        ours32, _, rel32 = compare_with_diffusers(d32, case, 8, z64.float(), reference=ours64)
        rel_ours32 = float((ours32.double() - ours64).abs().max() / ours64.abs().max())
        rows.append({"case": case, "rel_float64": rel64, "rel_diffusers_float32": rel32, "rel_ours_float32": rel_ours32})
        print(f"{case:>14}: float64 {rel64:.1e}   diffusers fp32 {rel32:.1e}   ours fp32 {rel_ours32:.1e}", flush=True)
    return rows


def main():
    torch.set_num_threads(1)
    meta = metadata(command(__file__, []), threads=1)
    rows, agree = [], []
    load_before = os.getloadavg()[0]
    try:
        from dpmsched.adapters import tiny_unet_folder

        with tempfile.TemporaryDirectory() as tmp:
            folder = tiny_unet_folder(Path(tmp) / "tiny")
            rows += overhead(models.load(str(folder)), torch.float32, "tiny-unet fp32")
            agree = agreement(folder)
    except ImportError as e:
        print(f"diffusers absent, skipping the UNet rows: {e}")
    rows += overhead(models.load("digits-empirical"), torch.float64, "digits-empirical")
    result = {**meta, "steps": STEPS, "batch": BATCH,
              "load_average_1min": [load_before, os.getloadavg()[0]],
              "overhead": rows, "diffusers_agreement": agree}
    md = ["# Solver benchmarks", "", provenance_line(result), "",
          f"## Overhead: wall time / (NFE × raw denoiser call), {STEPS} steps, batch {BATCH} of 1×8×8 (target ≤ 1.05)",
          "", "`overhead` = wall / (NFE × call), both the minimum of 7 interleaved runs.  On a shared machine it is",
          "only as good as the machine was quiet (1-minute load average {:.1f} at the start, {:.1f} at the end, on {} cores):".format(
              load_before, result["load_average_1min"][1], os.cpu_count()),
          "a value below 1 is impossible and shows the timing noise.  `bookkeeping ms` is the same solver with a free",
          "denoiser (returns x): the solver's own arithmetic, and `1 + bookkeeping/(NFE × call)` the overhead it implies —",
          "the robust figure.", ""]
    md += md_table(["denoiser", "solver", "options", "NFE", "wall ms", "call ms", "overhead", "bookkeeping ms",
                    "1 + bookkeeping/(NFE·call)"], [
        [r["denoiser"], r["solver"], r["opts"] or "", r["nfe"], f"{r['wall_s'] * 1e3:.2f}", f"{r['call_s'] * 1e3:.3f}",
         f"{r['overhead']:.3f}", f"{r['bookkeeping_s'] * 1e3:.2f}", f"{r['overhead_from_bookkeeping']:.3f}"]
        for r in rows])
    if agree:
        md += ["", "## Agreement with diffusers (tiny random UNet2DModel, 8 steps): max|Δ| / max|diffusers|", ""]
        md += md_table(["pair", "float64 both", "diffusers float32 vs ours float64", "ours float32 vs ours float64"], [
            [r["case"], f"{r['rel_float64']:.1e}", f"{r['rel_diffusers_float32']:.1e}", f"{r['rel_ours_float32']:.1e}"]
            for r in agree])
    print("wrote {} and {}".format(*write_outputs(OUT / "solvers", result, md)))


if __name__ == "__main__":
    main()
