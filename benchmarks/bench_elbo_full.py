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
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from dpmsched.checkpoints import atomic_write_text, git_commit
from dpmsched.data import DIGITS_LEVELS, digits
from dpmsched.optimize import elbo

OUT = Path(__file__).resolve().parent


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
    commit = git_commit(short=True)
    out = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_elbo_full.py" + (" " + " ".join(argv) if argv else ""),
           "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}, 1 thread",
           "git_commit": commit, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "model": a.model, "T": int(terms.T), "steps": int(len(full) - 1), "n_test": int(x.shape[0]), "seed": a.seed,
           "bits_per_dim": bits, "seconds": seconds}
    atomic_write_text(OUT / "elbo_full.json", json.dumps(out, indent=1) + "\n")
    md = (f"# Watson's table: the T-step value\n\n`{out['command']}` — commit {commit}, {out['date']}, {out['machine']}.\n\n"
          f"Test-split bits/dim of the path through all T = {out['T']} steps of `{a.model}` ({out['n_test']} test images, "
          f"noise seed {a.seed}; {seconds:.0f} s for {out['T']} network passes):\n\n"
          "| reverse variance | bits/dim |\n|---|---|\n"
          + "".join(f"| {v} | {b:.4f} |\n" for v, b in bits.items())
          + "\nRead with `benchmarks/elbo.md` (K-step paths over 264 candidate steps, same test split).\n")
    atomic_write_text(OUT / "elbo_full.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
