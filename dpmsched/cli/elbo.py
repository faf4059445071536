"""``python -m dpmsched elbo-table``: Watson et al.'s table of bits/dim per step budget."""
from __future__ import annotations

import argparse
import json

from ..files import atomic_write_text
from ..optimize.elbo import VARIANCES, load_ddpm
from ..optimize.elbo_dp import elbo_table
from .common import ArgumentParser, nonnegative_int

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """``python -m dpmsched elbo-table --model digits-ddpm --ks 2,4,8,16,32,64 --out FILE.json``

    Writes the test-split bits/dim of the even, quadratic and DP paths (lists aligned with ``ks``) and the
    ``full`` T-step value, atomically; the train/test ELBO terms are cached in ``--cache-dir``.
    """
    p = ArgumentParser(prog="python -m dpmsched elbo-table", description=main.__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="digits-ddpm", help="a discrete ε-DDPM, or an EDM denoiser (wrapped, T=1000)")
    p.add_argument("--ks", default="2,4,8,16,32,64", help="comma-separated step budgets K")
    p.add_argument("--variance", default="small", choices=VARIANCES, help="reverse-kernel variance")
    p.add_argument("--candidates", type=nonnegative_int, default=0, help="candidate steps, quadratically spaced (0 = all T)")
    p.add_argument("--n-train", type=nonnegative_int, default=0, help="train images for the DP (0 = all 1437)")
    p.add_argument("--n-test", type=nonnegative_int, default=0, help="test images for the evaluation (0 = all 360)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the estimation")
    p.add_argument("--no-clip", action="store_true", help="do not clamp x0-predictions to [-1, 1]")
    p.add_argument("--cache-dir", default="runs/elbo-cache", help="where the ELBO terms are cached ('' = off)")
    p.add_argument("--out", required=True, help="output JSON file")
    a = p.parse_args(argv)
    try:
        ks = [int(k) for k in a.ks.split(",") if k.strip()]
    except ValueError:
        p.error(f"--ks expects comma-separated integers, got {a.ks!r}")
    res = elbo_table(load_ddpm(a.model), ks, variance=a.variance, n_train=a.n_train, n_test=a.n_test, candidates=a.candidates,
                     clip=not a.no_clip, seed=a.seed, cache_dir=a.cache_dir, progress=True)
    atomic_write_text(a.out, json.dumps(res, indent=1))
    for k, e, q, d in zip(res["ks"], res["even"], res["quadratic"], res["dp"]):
        print(f"K={k:>4}  even {e:.4f}  quadratic {q:.4f}  dp {d:.4f}  bits/dim")
    print(f"full ({res['candidates']} steps): {res['full']:.4f} bits/dim -> wrote {a.out}")
    return 0
