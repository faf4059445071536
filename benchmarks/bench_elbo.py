"""Watson et al.'s table on the digits DDPM: bits/dim of even, quadratic and ELBO-DP paths per K, with the
cost-table estimation time, the DP time, and the sample quality (Fréchet-digits, DDIM truncation error) along
the same paths.  Writes benchmarks/elbo.json and benchmarks/elbo.md.

Protocol (docs/math.md §7.3): the ELBO terms are estimated on the digits train split (one network pass per
candidate step, §7.2), the DP picks the path there, and every path is scored on the test split with fresh
noise.  Bits/dim bound the NLL of the 17-level digits (a uniform model scores log2 17 = 4.09).  The ratios
DP/even and DP/quadratic are taken within this run.  The DP time is also measured on a full (T+1)×(T+1)
table (the ELBO's own closed form fed with the estimated M(t), interpolated to every step), to show the
O(K·T²) cost at the paper's scale.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_elbo.py [--model digits-catmix --candidates 0]`` (the
defaults made benchmarks/elbo.md; their cost tables ship in benchmarks/elbo-cache, so only the sampling runs).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _common import OUT, command, md_table, metadata, provenance_line, write_outputs

from dpmsched import metrics
from dpmsched.optimize import elbo, elbo_dp
from dpmsched.optimize.dp import shortest_paths


def full_grid_dp_seconds(terms_path: Path, kmax: int) -> tuple[float, int]:
    """Wall time of the all-budgets DP on a (T+1)×(T+1) table built from the cached train terms."""
    t = elbo.ELBOTerms.load(terms_path)
    steps = t.steps
    full = elbo.ELBOTerms(t.abar, np.interp(np.arange(t.T + 1), steps, t.mse[steps]),
                          np.interp(np.arange(t.T + 1), steps, t.decoder[steps]), t.prior, t.dim)
    full.mse[0] = full.decoder[0] = np.nan
    C, nodes = full.cost_matrix("small")
    t0 = time.perf_counter()
    shortest_paths(C, kmax)
    return time.perf_counter() - t0, int(nodes.size)


def sample_quality_rows(model, table: dict, n: int, kmax: int):
    """FD/RMSE of the even, quadratic and (small-variance) DP schedules at every K ≤ ``kmax`` of ``table``
    (one :func:`elbo_dp.sample_quality` call: the same noise and one reference ODE solve for all of them)."""
    T, sch, bpd = table["T"], {}, {}
    for i, k in enumerate(table["ks"]):
        if k > kmax:
            continue
        paths = {"even": elbo_dp.stride_path(T, k, 1.0), "quadratic": elbo_dp.stride_path(T, k, 2.0),
                 "ELBO-DP": np.array(table["paths"][str(k)])}
        for name, path in paths.items():
            sch[(k, name)] = elbo_dp.path_to_schedule(path, model.noise, name)
        bpd.update({(k, "even"): table["even"][i], (k, "quadratic"): table["quadratic"][i],
                    (k, "ELBO-DP"): table["dp"][i]})
    q = elbo_dp.sample_quality(model, sch, n, seed=3)
    rows = [{"K": k, "schedule": name, "bpd": bpd[k, name],
             **{m: q[k, name][m] for m in ("fd_ancestral", "fd_ddim", "trunc_ddim")}} for k, name in sch]
    fd_model = float("nan")
    if hasattr(model, "mixture"):
        fd_model = metrics.frechet_digits(model.mixture.sample(n, torch.Generator().manual_seed(5)))["fd"]
    return rows, fd_model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits-ddpm", help="digits-ddpm (trained network) or digits-catmix (exact ε-model)")
    p.add_argument("--ks", default="2,4,8,16,32,64")
    p.add_argument("--candidates", type=int, default=100, help="candidate steps, quadratically spaced (0 = all T)")
    p.add_argument("--n-train", type=int, default=0, help="0 = all 1437")
    p.add_argument("--n-test", type=int, default=0, help="0 = all 360")
    p.add_argument("--n-samples", type=int, default=512, help="samples per schedule for the sample quality")
    p.add_argument("--quality-kmax", type=int, default=16, help="largest K of the sample-quality comparison")
    p.add_argument("--cache-dir", default=str(OUT / "elbo-cache"),
                   help="the train/test ELBO terms (shipped: notebook 02 reads them)")
    p.add_argument("--out", default=str(OUT / "elbo"), help="output stem (.json and .md)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cmd = command(__file__, ["--model", a.model, "--ks", a.ks, "--candidates", a.candidates, "--n-train", a.n_train,
                             "--n-test", a.n_test, "--n-samples", a.n_samples, "--quality-kmax", a.quality_kmax])
    model = elbo.load_ddpm(a.model)
    ks = [int(k) for k in a.ks.split(",")]
    rows = {}
    for variance in elbo.VARIANCES:            # the second variance reuses the cached terms
        rows[variance] = elbo_dp.elbo_table(model, ks, variance=variance, candidates=a.candidates, n_train=a.n_train,
                                         n_test=a.n_test, cache_dir=a.cache_dir, progress=True)
    r = rows["small"]
    exact = None
    if hasattr(model, "mixture"):                # the exact model's own NLL: what every ELBO bounds from above
        from dpmsched.data import digits

        test = digits("test", dtype=torch.float64)[: a.n_test or None]
        exact = float(-model.mixture.log_pmf(test).mean()) / (test[0].numel() * np.log(2.0))
    quality, fd_model = sample_quality_rows(model, r, a.n_samples, a.quality_kmax)
    dp_full_s, g_full = full_grid_dp_seconds(Path(a.cache_dir) / f"elbo-terms-{model.name}-train.json", max(ks))
    result = {**metadata(cmd, threads=1), "tables": rows,
              "dp_full_grid": {"nodes": g_full, "kmax": max(ks), "seconds": dp_full_s},
              "exact_nll_bits_per_dim": exact, "sample_quality": quality, "n_samples": a.n_samples,
              "fd_exact_model_samples": fd_model, "fd_floor": metrics.frechet_digits_floor()}
    md = ["# Watson et al.: ELBO-optimal step selection on the digits DDPM", "", provenance_line(result), "",
          f"Model `{r['model']}` (T = {r['T']}, linear β, ε-prediction). Terms estimated on {r['n_train']} train "
          f"images, evaluated on {r['n_test']} test images (fresh noise); {r['candidates']} candidate steps "
          f"({'all T steps' if not r['candidates_requested'] else 'quadratically spaced, plus the even/quadratic steps'}); x̂0 clamped to [−1, 1]; "
          f"discretized decoder with {r['levels']} levels. Bits/dim on the **test** split (uniform model: "
          f"{np.log2(r['levels']):.3f}).", ""]
    for variance, t in rows.items():
        md += [f"## Reverse variance: {variance} ({'posterior β̃' if variance == 'small' else 'β_{s|t}'})", ""]
        md += md_table(["K", "even", "quadratic", "DP", "DP / even", "DP / quadratic", "DP (train, optimised on)"], [
            [k, f"{t['even'][i]:.4f}", f"{t['quadratic'][i]:.4f}", f"{t['dp'][i]:.4f}", f"{t['dp'][i] / t['even'][i]:.3f}",
             f"{t['dp'][i] / t['quadratic'][i]:.3f}", f"{t['train']['dp'][i]:.4f}"] for i, k in enumerate(t["ks"])])
        md += ["", f"All {t['candidates']} candidate steps: {t['full']:.4f} bits/dim (test), "
               f"{t['train']['full']:.4f} (train)."]
        if exact is not None:
            md.append(f"Exact NLL of the model itself on the test split: {exact:.4f} bits/dim (every ELBO bounds it from above).")
        md.append("")
    s = r["seconds"]
    md += ["## Cost", "",
           f"* ELBO terms: {s['terms_train']:.1f} s on the train split, {s['terms_test']:.1f} s on the test split "
           f"({r['candidates']} network passes each, one per candidate step).",
           f"* DP for every K ≤ {max(ks)} at once: {s['dp'] * 1e3:.1f} ms over {r['candidates'] + 1} nodes; "
           f"{dp_full_s:.2f} s over the full grid of {g_full} nodes (all T steps).", "",
           "## DP paths (Ho steps, small variance)", ""]
    md += [f"* K = {k}: {r['paths'][str(k)]}" for k in ks if k <= 16]
    md += ["", "## Sample quality along the paths (small-variance DP path; same noise for every schedule)", "",
           f"{a.n_samples} samples per schedule; Fréchet-digits distance to the test split for the ancestral sampler "
           "(the generative model whose ELBO is optimised) and for DDIM (η = 0), and the RMSE of DDIM against an "
           f"accurate ODE solve (RK4, 32 steps) from the same noise on {min(256, a.n_samples)} of them. "
           + (f"Exact samples of the model: FD {fd_model:.2f}; " if fd_model == fd_model else "")
           + f"data floor FD(train, test): {result['fd_floor']:.2f}.", ""]
    md += md_table(["K", "schedule", "bits/dim (test)", "FD ancestral", "FD DDIM", "DDIM RMSE"], [
        [q["K"], q["schedule"], f"{q['bpd']:.4f}", f"{q['fd_ancestral']:.2f}", f"{q['fd_ddim']:.2f}", f"{q['trunc_ddim']:.4f}"]
        for q in quality])
    qks = sorted({q["K"] for q in quality})
    wins = {m: sum(min((q for q in quality if q["K"] == k), key=lambda q: q[m])["schedule"] == "ELBO-DP" for k in qks)
            for m in ("fd_ancestral", "fd_ddim", "trunc_ddim")}
    md += ["", f"ELBO-DP has the best value at {wins['fd_ancestral']}/{len(qks)} budgets for FD (ancestral), "
           f"{wins['fd_ddim']}/{len(qks)} for FD (DDIM) and {wins['trunc_ddim']}/{len(qks)} for the DDIM RMSE."]
    print("wrote {} and {}".format(*write_outputs(Path(a.out), result, md)))


if __name__ == "__main__":
    main()
