"""The shipped models: training cost, size and sample quality.  Writes benchmarks/models.json and models.md.

For every checkpoint in ``data/`` (digits-edm, digits-ddpm, toy2d-edm, digits-classifier): parameter
count, weights size, training steps and training wall time (as recorded in its config.json by
``python -m dpmsched train`` on this machine, one torch thread), and sample quality with Heun at 18
steps (35 NFE; Karras ρ = 7 over the model's σ range capped to [0.002, 80], final step to σ = 0),
all measured in this run:

* digits models: Fréchet-digits distance (``metrics.frechet_digits``) of 1,437 samples (the size of the
  train split) to the test split, next to the floor FD(train, test) and next to the samples of the
  empirical ideal denoiser of the train split (same solver, schedule and noise); ratio = FD / floor.
* toy2d-edm: GMM NLL (nats per sample, ``metrics.gmm_nll``) of 10,000 samples under the true ring
  mixture, next to that of 10,000 true samples and of the exact denoiser's Heun-18 samples; and SW₂ to
  the true samples.
* digits-classifier, mnist-classifier: test-split accuracy (target ≥ 0.97).
* mnist-edm (class-conditional, CFG): Fréchet-MNIST (``metrics.frechet_mnist``) of 1,000 Heun-18 samples to the
  MNIST test split (1,000 images), unguided (the null label: w = 0) and guided (w = 2, classes 0..9 in turn, so
  the classes are balanced like the test split), next to the floor FD(train split (4,000), test split); the class
  accuracy of the guided samples (mnist-classifier); a grid of samples in ``benchmarks/mnist_samples.png``.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_models.py`` (or ``make bench``).
"""
from __future__ import annotations

import sys
import time

import torch
from _common import OUT, command, md_table, metadata, provenance_line, write_outputs

from dpmsched import Schedule, metrics, models, solvers
from dpmsched.checkpoints import WEIGHTS, read_config, shipped_models
from dpmsched.denoisers.guidance import guided
from dpmsched.files import read_json
from dpmsched.resources import data_dir

MODELS = ("digits-edm", "digits-ddpm", "toy2d-edm", "digits-classifier", "mnist-edm", "mnist-classifier")
STEPS, N_DIGITS, N_TOY, N_MNIST, SEED = 18, 1437, 10000, 1000, 0
#: guidance weights of the MNIST rows (0: the unconditional model through its null label) and the target
MNIST_W, MNIST_TARGET = (0.0, 2.0), 1.5


def heun18(model) -> Schedule:
    """Heun at 18 steps / 35 NFE: Karras ρ = 7 on the model's σ range within [0.002, 80], then σ = 0."""
    lo, hi = max(0.002, float(model.sigma_min)), min(80.0, float(model.sigma_max))
    return Schedule.karras(STEPS - 1, sigma_min=lo, sigma_max=hi).with_final_zero()


def timed_samples(model, n, batch: int = 512):
    sched = heun18(model)
    t0 = time.perf_counter()
    x = solvers.sample(model, sched, "heun", n, seed=SEED, batch=batch, dtype=torch.float64)
    return x, time.perf_counter() - t0, sched


def model_row(name: str) -> dict:
    folder = data_dir() / name
    cfg = read_config(folder)
    tr = cfg.get("training", {})
    return {"model": name, "kind": cfg["kind"], "arch": cfg["arch"], "dataset": cfg.get("dataset"),
            "params": tr.get("params"), "weights_bytes": (folder / WEIGHTS).stat().st_size,
            "train_steps": tr.get("steps"), "train_wall_s": tr.get("wall_s"), "train_threads": tr.get("threads"),
            "final_loss_avg100": tr.get("final_loss_avg100"), "trained_at_commit": cfg.get("git_commit")}


def digits_quality(model, floor: float, emp_fd: float) -> dict:
    x, secs, sched = timed_samples(model, N_DIGITS)
    r = metrics.frechet_digits(x)
    return {"solver": "heun", "nfe": solvers.nfe("heun", sched), "sigma_range": [float(sched.sigmas[-2]), float(sched.sigmas[0])],
            "n_samples": N_DIGITS, "sample_s": round(secs, 2), "fd": r["fd"], "fd_floor": floor,
            "fd_over_floor": r["fd"] / floor, "fd_empirical": emp_fd, "fd_over_empirical": r["fd"] / emp_fd,
            "class_hist": [round(float(v), 4) for v in r["class_hist"]],
            "out_of_range_frac": float(((x < -1) | (x > 1)).double().mean())}


def mnist_quality(model, floor: float) -> list[dict]:
    """Fréchet-MNIST of N_MNIST Heun-18 samples per guidance weight of MNIST_W (classes 0..9 in turn)."""
    out, grid = [], []
    labels = torch.arange(N_MNIST) % 10
    for w in MNIST_W:
        den = guided(model, torch.arange(10), w, cycle=True)
        # batches of whole label cycles (500 = 50 × 10), so that sample i asks for class i mod 10 in every batch
        x, secs, sched = timed_samples(den, N_MNIST, batch=500)
        r = metrics.frechet_mnist(x, labels=labels)
        out.append({"guidance": w, "solver": "heun", "nfe": solvers.nfe("heun", sched), "n_samples": N_MNIST,
                    "network_passes_per_eval": den.calls_per_eval, "sample_s": round(secs, 2),
                    "fd": r["fd"], "fd_floor": floor, "fd_over_floor": r["fd"] / floor,
                    "class_accuracy": r["class_accuracy"] if w else None,
                    "class_hist": [round(float(v), 4) for v in r["class_hist"]],
                    "out_of_range_frac": float(((x < -1) | (x > 1)).double().mean())})
        grid.append(x[:50])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dpmsched.plots import digits_mosaic

    fig, axes = plt.subplots(1, len(grid), figsize=(5 * len(grid), 3.0))
    for ax, w, x in zip(axes, MNIST_W, grid):
        digits_mosaic(x, ax, nrow=10, title=f"mnist-edm, Heun-18, w = {w:g}" + (" (unguided)" if w == 0 else
                                                                             ": columns are classes 0–9"))
    fig.tight_layout()
    fig.savefig(OUT / "mnist_samples.png", dpi=80)
    plt.close(fig)
    return out


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated models to re-measure; the others keep their rows "
                                                "from the existing models.json (default: all)")
    a = p.parse_args(argv)
    only = [m for m in a.only.split(",") if m]
    torch.set_num_threads(1)
    meta = metadata(command(__file__, argv), threads=1)
    old = read_json(OUT / "models.json", "benchmark results") if only else None
    present = [m for m in MODELS if m in shipped_models()]
    missing = [m for m in MODELS if m not in present]

    if only:
        baselines = dict(old["baselines"])
        floor, emp_fd = baselines["fd_floor_train_vs_test"], baselines["fd_empirical_heun18"]
    else:
        floor = metrics.frechet_digits_floor()
        emp = models.load("digits-empirical")
        x_emp, emp_s, _ = timed_samples(emp, N_DIGITS)
        emp_fd = metrics.frechet_digits(x_emp)["fd"]
        baselines = {"fd_floor_train_vs_test": floor, "fd_empirical_heun18": emp_fd, "empirical_sample_s": round(emp_s, 2)}

    rows = []
    for name in present:
        if only and name not in only:
            rows.append(next(r for r in old["models"] if r["model"] == name))
            continue
        row = model_row(name)
        model = models.load(name)
        if name.startswith("digits-") and row["kind"] != "classifier":
            row.update(digits_quality(model, floor, emp_fd))
        elif row["dataset"] == "mnist" and row["kind"] != "classifier":
            baselines["fd_mnist_floor_train_vs_test"] = mnist_floor = metrics.frechet_mnist_floor()
            row["mnist"] = mnist_quality(model, mnist_floor)
        elif row["kind"] == "edm":                                      # a 2-D toy with a known mixture
            mix = models.load(row["dataset"])
            x, secs, sched = timed_samples(model, N_TOY)
            x_exact, _, _ = timed_samples(mix, N_TOY)
            true = mix.sample(N_TOY, torch.Generator().manual_seed(SEED + 7))
            row.update(solver="heun", nfe=solvers.nfe("heun", sched), n_samples=N_TOY, sample_s=round(secs, 2),
                       nll=metrics.gmm_nll(x, mix), nll_true=metrics.gmm_nll(true, mix),
                       nll_exact_denoiser=metrics.gmm_nll(x_exact, mix),
                       sw2_to_true=metrics.sliced_wasserstein(x, true),
                       sw2_exact_denoiser_to_true=metrics.sliced_wasserstein(x_exact, true))
            row["nll_minus_true"] = row["nll"] - row["nll_true"]
        else:
            from dpmsched.train import classifier_accuracy

            row["test_accuracy"] = classifier_accuracy(model, data=row["dataset"])
        rows.append(row)

    result = {**meta, "baselines": baselines, "models": rows, "missing": missing}
    if only:
        result["remeasured"] = only
        result["others_from"] = {k: old.get(k) for k in ("command", "git_commit", "date")}

    md = ["# Shipped models", "", provenance_line(result), ""]
    if only:
        o = result["others_from"]
        md += [f"Re-measured in this run: {', '.join(only)}; the other rows are from `{o['command']}` at commit "
               f"{o['git_commit']}, {o['date']}.", ""]
    md += ["Training time is the wall time recorded in each `data/<name>/config.json` by "
          "`python -m dpmsched train` (one torch thread on a shared 2-core machine; resumed runs add up).", ""]
    md += md_table(["model", "kind", "params", "weights KB", "steps", "train wall s"], [
        [r["model"], r["kind"], f"{r['params']:,}", f"{r['weights_bytes'] / 1024:.0f}", r["train_steps"], r["train_wall_s"]]
        for r in rows])
    md += ["", f"## Digits: Fréchet-digits distance, Heun 18 steps (35 NFE), {N_DIGITS} samples vs the test split", "",
           f"Floor FD(train split, test split) = **{floor:.2f}**; the empirical ideal denoiser's Heun-18 samples "
           f"(copies of training images) give FD = {emp_fd:.2f} ({emp_fd / floor:.2f}× floor). Target: digits-edm "
           "≤ 3× floor.", ""]
    md += md_table(["model", "FD", "FD / floor", "FD / empirical", "out-of-[−1,1] pixels", "sampling s"], [
        [r["model"], f"{r['fd']:.2f}", f"{r['fd_over_floor']:.2f}", f"{r['fd_over_empirical']:.2f}",
         f"{100 * r['out_of_range_frac']:.2f} %", r["sample_s"]] for r in rows if "fd" in r])
    md += ["", f"## 2-D toy: GMM NLL (nats/sample) of {N_TOY} samples under the true mixture", ""]
    md += md_table(["model", "NLL samples", "NLL true samples", "NLL exact-denoiser Heun-18", "Δ vs true", "SW₂ to true",
                    "SW₂ exact→true"], [
        [r["model"], f"{r['nll']:.4f}", f"{r['nll_true']:.4f}", f"{r['nll_exact_denoiser']:.4f}",
         f"{r['nll_minus_true']:+.4f}", f"{r['sw2_to_true']:.4f}", f"{r['sw2_exact_denoiser_to_true']:.4f}"]
        for r in rows if "nll" in r])
    for r in rows:
        if "mnist" in r:
            md += ["", f"## MNIST 28×28 (class-conditional, classifier-free guidance): Fréchet-MNIST, Heun 18 steps "
                   f"(35 NFE), {N_MNIST} samples vs the test split", "",
                   f"Floor FD(train split, test split) = **{baselines['fd_mnist_floor_train_vs_test']:.2f}**. "
                   f"Target: unguided ≤ {MNIST_TARGET}× floor. Guided samples take classes 0..9 in turn; class "
                   "accuracy = fraction that mnist-classifier assigns to the requested class. NFE counts guided "
                   "evaluations; w ∉ {0, 1} costs two network passes each.", ""]
            md += md_table(["model", "w", "FD", "FD / floor", "class accuracy", "out-of-[−1,1] pixels", "sampling s"], [
                [r["model"], f"{q['guidance']:g}", f"{q['fd']:.2f}", f"{q['fd_over_floor']:.2f}",
                 "—" if q["class_accuracy"] is None else f"{q['class_accuracy']:.3f}",
                 f"{100 * q['out_of_range_frac']:.2f} %", q["sample_s"]] for q in r["mnist"]])
            md += ["", "![mnist-edm samples](mnist_samples.png)"]
    for r in rows:
        if "test_accuracy" in r:
            md += ["", f"**{r['model']}**: test-split accuracy {r['test_accuracy']:.4f} (target ≥ 0.97)."]
    if missing:
        md += ["", f"Not yet shipped (skipped): {', '.join(missing)}."]
    write_outputs(OUT / "models", result, md)
    print("\n".join(md))


if __name__ == "__main__":
    main(sys.argv[1:])
