"""The T-step value of Watson's table: test-split bits/dim of the full 1000-step path of ``digits-ddpm``.

benchmarks/elbo.md runs the DP over 264 candidate steps (one network pass per step per split would take over an
hour for all T = 1000 on the train split on this CPU); this script adds the number the table is read against —
the ELBO of the path through *every* step, estimated on the test split only (one pass of the ε-net over the
360 test images per step t = 1..T, fresh noise seeded per step), for both reverse variances.  Writes
benchmarks/elbo_full.json and benchmarks/elbo_full.md.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_elbo_full.py [--model digits-ddpm] [--seed 1]``
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from _common import OUT, command, md_table, metadata, provenance_line, write_outputs

from dpmsched.data import DIGITS_LEVELS, digits
from dpmsched.optimize import elbo


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits-ddpm", help="a discrete ε-DDPM (shipped name or folder)")
    p.add_argument("--seed", type=int, default=1, help="noise seed of the test-split terms")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    model = elbo.load_ddpm(a.model)
    x = digits("test", dtype=torch.float64)
    t0 = time.perf_counter()
    terms = elbo.estimate_terms(model, x, steps=None, levels=DIGITS_LEVELS, seed=a.seed, progress=True,
                                meta={"split": "test"})
    seconds = time.perf_counter() - t0
    full = terms.full_path()
    bits = {v: terms.bits_per_dim(full, v) for v in ("small", "large")}
    out = {**metadata(command(__file__, argv), threads=1), "model": a.model, "T": int(terms.T),
           "steps": int(len(full) - 1), "n_test": int(x.shape[0]), "seed": a.seed,
           "bits_per_dim": bits, "seconds": seconds}
    md = ["# Watson's table: the T-step value", "", provenance_line(out), "",
          f"Test-split bits/dim of the path through all T = {out['T']} steps of `{a.model}` ({out['n_test']} test "
          f"images, noise seed {a.seed}; {seconds:.0f} s for {out['T']} network passes):", ""]
    md += md_table(["reverse variance", "bits/dim"], [(v, f"{b:.4f}") for v, b in bits.items()])
    md += ["", "Read with `benchmarks/elbo.md` (K-step paths over 264 candidate steps, same test split)."]
    write_outputs(OUT / "elbo_full", out, md)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
