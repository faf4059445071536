"""The empirical limit: direct minimisation of the solver's measured error.  (docs/math.md §8.4, LD3)

LD3-style: the schedule is σ(ξ) = softmax-cumsum of logits ξ ∈ R^N in log σ
(:func:`dpmsched.theory.softmax_cumsum_sigmas_torch`, endpoints fixed, monotone by construction);
the loss is the mean squared distance between the student solve Ψ_ξ(z) (any differentiable solver
of :mod:`dpmsched.solvers`) and the teacher endpoint x(σ_min) from the same latent z, on *training*
latents (the teacher's, seed ``seed``); gradients flow through the whole solver into ξ (Adam).
Differences from LD3 (documented choices): L2 instead of LPIPS, no decoupled network time, no
latent ball relaxation, Adam instead of RMSprop, best-of validation on a held-out split of the
training latents.  Evaluate the result only on latents the fit did not see.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .. import solvers, theory
from ..denoisers import model_range
from ..schedules import Schedule
from .bound import bound_prop
from .gits import gits
from .teacher import endpoint_error, teacher

__all__ = ["direct", "fit_logits", "validated_fit", "check_split", "validation_teacher", "karras_tuned",
           "hand_tuned"]


def fit_logits(model, z0: np.ndarray, z_train: torch.Tensor, x_train: torch.Tensor, lo: float, hi: float,
               solver: str = "euler", iters: int = 150, lr: float = 0.05, batch: int = 128,
               seed: int = 0, progress: bool = False, callback=None, **solver_opts):
    """Adam on the logits ξ (init ``z0`` (N,)) of the mean squared endpoint error; returns
    (best σ, its training loss, loss history).  ``z_train``/``x_train`` (B, *event): latents and targets.
    ``callback(k, ξ)`` (optional) is called after Adam step k with the new logits (a detached copy); a true
    return value stops the descent (early stopping, :func:`dpmsched.optimize.auto.auto`)."""
    fn = solvers.get(solver)
    xi = torch.tensor(np.asarray(z0, dtype=np.float64), requires_grad=True)
    opt = torch.optim.Adam([xi], lr=lr)
    gen = torch.Generator().manual_seed(int(seed))
    B = z_train.shape[0]
    best, best_loss, hist = xi.detach().clone(), float("inf"), []
    it = range(int(iters))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="direct", leave=False)
    for k in it:
        idx = torch.randperm(B, generator=gen)[:batch] if batch < B else torch.arange(B)
        s = theory.softmax_cumsum_sigmas_torch(xi, lo, hi)
        out = fn(model, s[0] * z_train[idx], s, **solver_opts)
        loss = (out.double() - x_train[idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append(float(loss.detach()))
        if batch >= B and hist[-1] < best_loss:     # full batch: the loss is of the pre-step ξ
            best_loss, best = hist[-1], s.detach().clone()
        if callback is not None and callback(k, xi.detach().clone()):
            break
    if batch < B or not np.isfinite(best_loss):
        with torch.no_grad():
            s = theory.softmax_cumsum_sigmas_torch(xi, lo, hi)
            best_loss = float((fn(model, s[0] * z_train, s, **solver_opts).double() - x_train).pow(2).mean())
            best = s
    return best.numpy(), best_loss, hist


def direct(model, steps: int, solver: str = "euler", *, n: int = 128, grid_points: int = 128, seed: int = 0,
           iters: int = 60, lr: float = 0.05, init: str = "karras", polish: int = 300, progress: bool = False,
           n_val: int = 0, val_seed: int = 3, batch: int = 0, patience: int = 6, val_grid_points: int = 0,
           **solver_opts) -> Schedule:
    """Fit the schedule to the teacher endpoints of ``n`` training latents (seed ``seed``): ``iters``
    Adam steps through the solver, then (``polish`` > 0) Nelder–Mead with at most ``polish``
    evaluations from the Adam result and from the init; the best training RMSE wins.
    ``init``: "karras" (ρ = 7), "logsnr" (uniform λ, LD3's init), "best" (the lowest training RMSE of
    ``hand-tuned``, ``gits`` and ``bound-prop`` on the same teacher — a start no worse than any of them, so the limit
    is at least as good as each on the training latents) or a Schedule (N steps, the model's σ range).
    ``meta["objective"]``: the training RMSE of the returned schedule; ``meta["init"]`` names the start.

    ``n_val`` > 0: **validated** — the fit stops early on ``n_val`` validation latents (seed ``val_seed``, which must
    differ from ``seed``; :func:`validated_fit`: Adam on mini-batches of ``batch`` latents (0: all), then Nelder–Mead,
    each stage stopped after ``patience`` checks without a validation improvement), and the result is the checkpoint
    with the lowest validation RMSE, the init included: on the validation latents it is never worse than its start.
    This is the benchmark's limit on the image models, where a fit to a few hundred latents overfits (docs/math.md
    §8.4); ``meta["val_rmse"]`` is its validation RMSE.  ``val_grid_points``: the grid of the validation teacher
    (:func:`validation_teacher`)."""
    t0 = time.perf_counter()
    if int(n_val) > 0:
        check_split(seed, val_seed, batch, n, val_grid_points)
    T = teacher(model, n=n, grid_points=grid_points, seed=seed)
    lo, hi = float(T.grid[-1]), float(T.grid[0])
    if isinstance(init, (Schedule, np.ndarray, list, tuple)):
        s0 = init if isinstance(init, Schedule) else Schedule(init)
        if s0.steps != int(steps) or not np.allclose([s0.sigmas[0], s0.sigmas[-1]], [hi, lo]):
            raise ValueError(f"init schedule must have {steps} steps from {hi:g} to {lo:g}")
        z0, init, sig0 = theory.logits_of_sigmas(s0), f"schedule:{s0.name}", s0.sigmas
    elif init == "best":
        common = {"n": n, "grid_points": grid_points, "seed": seed}
        starts = {"hand-tuned": hand_tuned(model, steps, solver, **common, **solver_opts),
                  "gits": gits(model, steps, solver, **common), "bound-prop": bound_prop(model, steps, solver, **common)}
        rmse = {k: endpoint_error(model, s, T.z, T.x[-1], solver, **solver_opts) for k, s in starts.items()}
        pick = min(rmse, key=rmse.get)
        z0, init, sig0 = theory.logits_of_sigmas(starts[pick]), f"best:{pick}", starts[pick].sigmas
    elif init == "karras":
        sig0 = Schedule.karras(steps, lo, hi).sigmas
        z0 = theory.logits_of_sigmas(sig0)
    elif init == "logsnr":
        z0 = np.zeros(int(steps))
        sig0 = theory.softmax_cumsum_sigmas(z0, lo, hi)
    else:
        raise ValueError(f"init must be 'karras', 'logsnr', 'best' or a Schedule, got {init!r}")
    if int(n_val) > 0:
        V = validation_teacher(model, n_val, val_seed, grid_points, val_grid_points)
        r = validated_fit(model, sig0, T, V, solver, adam=iters, lr=lr,
                          batch=batch, polish=polish, patience=patience, seed=seed, **solver_opts)
        rmse = endpoint_error(model, Schedule(r["sig"]), T.z, T.x[-1], solver, **solver_opts)
        return Schedule(r["sig"], "direct", {"objective": rmse, "train_rmse": rmse, "val_rmse": r["val"],
                                            "polished": r["polished"], "adam_iters": r["adam_iters"],
                                            "polish_evals": r["evals"], "iters": iters, "lr": lr, "init": init,
                                            "n": n, "seed": seed, "n_val": n_val, "val_seed": val_seed,
                                            "val_grid_points": int(val_grid_points) or grid_points,
                                            "batch": r["batch"], "teacher_seconds": T.seconds + V.seconds,
                                            "seconds": time.perf_counter() - t0})
    sig, loss, hist = fit_logits(model, z0, T.z, T.x[-1], lo, hi, solver, iters, lr, n, seed, progress,
                                 **solver_opts)
    adam_rmse, nm_evals = float(np.sqrt(loss)), 0
    if polish > 0:
        sig, rmse, nm_evals = _polish(model, [theory.logits_of_sigmas(sig), z0], T, lo, hi, solver, polish,
                                      **solver_opts)
        loss = min(loss, rmse**2)
    return Schedule(sig, "direct", {"objective": float(np.sqrt(loss)), "train_rmse": float(np.sqrt(loss)),
                                    "adam_train_rmse": adam_rmse, "polish_evals": nm_evals,
                                    "iters": iters, "lr": lr, "init": init, "n": n, "seed": seed,
                                    "loss_first": hist[0] if hist else None, "loss_last": hist[-1] if hist else None,
                                    "teacher_seconds": T.seconds, "seconds": time.perf_counter() - t0})


class _Stop(Exception):
    """Raised inside the Nelder–Mead objective of :func:`validated_fit` when the validation error stops improving."""


def _mini_batch(batch: int, n: int) -> int:
    """Adam's mini-batch size ``batch`` (0: all ``n`` training latents); a negative one is refused."""
    if int(batch) < 0:
        raise ValueError(f"batch must be ≥ 0 (0: all {n} training latents), got {batch}")
    return int(batch) or int(n)


def check_split(seed: int, val_seed: int, batch: int, n: int, val_grid_points: int = 0) -> None:
    """Refuse validation latents drawn with the training ``seed``, a negative mini-batch and a validation grid of
    fewer than 3 points (0: the training grid) — before any work."""
    if int(val_seed) == int(seed):
        raise ValueError(f"val_seed must differ from seed ({seed}): the validation latents must be unseen")
    _mini_batch(batch, n)
    if int(val_grid_points) != 0 and int(val_grid_points) < 3:
        raise ValueError(f"val_grid_points must be 0 (the training grid) or ≥ 3, got {val_grid_points}")


def validation_teacher(model, n_val: int, val_seed: int, grid_points: int, val_grid_points: int = 0):
    """The teacher of the validation latents (``n_val`` of seed ``val_seed``), of which only the endpoints are used:
    Heun on a Karras-ρ7 grid of ``val_grid_points`` points (0: the training teacher's ``grid_points``), 2G − 1
    network calls a latent.  The endpoints alone need no fine grid: on digits-edm Heun on 32 points is 0.006 RMSE
    from the accurate endpoint, on 64 points 0.0015 at twice the cost (``benchmarks/auto.md``), against schedule
    errors of 0.025–0.2 — twice the validation latents for the same time."""
    return teacher(model, n=n_val, grid_points=int(val_grid_points) or grid_points, seed=val_seed)


def validated_fit(model, sig0, T, V, solver: str = "euler", *, adam: int = 60, lr: float = 0.05, adam_every: int = 5,
                  batch: int = 0, polish: int = 200, check_every: int = 0, patience: int = 6, seed: int = 0,
                  **solver_opts) -> dict:
    """Minimise the measured endpoint error on the training teacher ``T`` from σ ``sig0`` (N+1,), with early
    stopping on the validation teacher ``V`` (docs/math.md §8.4).

    First ``adam`` Adam steps (:func:`fit_logits`, learning rate ``lr``, mini-batches of ``batch`` training latents,
    0: all), the current point scored on ``V`` every ``adam_every`` steps; then at most ``polish`` Nelder–Mead
    evaluations of the training RMSE from the best validation point, the best training point so far scored every
    ``check_every`` evaluations (default N + 1).  Each stage stops after ``patience`` checks without a validation
    improvement.  Returns ``{"sig", "val", "polished", "adam_iters", "evals", "batch"}``: the checkpoint with the
    lowest validation RMSE *including* ``sig0`` (so ``val`` ≤ the validation RMSE of ``sig0``), whether a polish
    checkpoint beat ``sig0``, the Adam steps and Nelder–Mead evaluations spent, the mini-batch used."""
    batch = _mini_batch(batch, T.z.shape[0])
    lo, hi = float(T.grid[-1]), float(T.grid[0])
    steps = len(sig0) - 1

    def val(sig):
        return endpoint_error(model, Schedule(sig), V.z, V.x[-1], solver, **solver_opts)

    best = {"sig": np.asarray(sig0, dtype=np.float64), "val": val(sig0), "polished": False}

    def checkpoint(sig, since: int) -> int:
        """Score ``sig`` on the validation latents, keep it if it is the best so far; checks without improvement."""
        v = val(sig)
        if v < best["val"]:
            best.update(sig=np.asarray(sig, dtype=np.float64), val=v, polished=True)
            return 0
        return since + 1

    adam_iters, evals = 0, 0
    if adam > 0 and steps > 1:
        st = {"since": 0}

        def on_step(k, xi):
            if not adam_every or (k + 1) % adam_every:
                return False
            st["since"] = checkpoint(theory.softmax_cumsum_sigmas(xi.numpy(), lo, hi), st["since"])
            return st["since"] >= patience

        _, _, hist = fit_logits(model, theory.logits_of_sigmas(best["sig"]), T.z, T.x[-1], lo, hi, solver, iters=adam,
                                lr=lr, batch=batch, seed=seed, callback=on_step, **solver_opts)
        adam_iters = len(hist)                             # one loss per Adam step taken
    if polish > 0 and steps > 1:
        from scipy.optimize import minimize

        every = int(check_every) or steps + 1
        state = {"f": float("inf"), "x": None, "evals": 0, "since": 0}

        def objective(z):
            s = theory.softmax_cumsum_sigmas(z, lo, hi)
            f = endpoint_error(model, Schedule(s), T.z, T.x[-1], solver, **solver_opts)
            state["evals"] += 1
            if f < state["f"]:
                state["f"], state["x"] = f, s
            if state["evals"] % every == 0:
                state["since"] = checkpoint(state["x"], state["since"])
                if state["since"] >= patience:
                    raise _Stop
            return f

        try:
            minimize(objective, theory.logits_of_sigmas(best["sig"]), method="Nelder-Mead",
                     options={"maxfev": int(polish), "xatol": 1e-4, "fatol": 1e-7})
        except _Stop:
            pass
        evals = state["evals"]
    return {**best, "adam_iters": adam_iters, "evals": evals, "batch": batch}


def _polish(model, starts, T, lo, hi, solver, max_evals, **solver_opts):
    """Nelder–Mead on the training RMSE from each start logits; (best σ, its RMSE, evaluations).

    Why: on the ideal (empirical) denoiser the loss is piecewise smooth with jumps where a
    trajectory switches basin, and Adam stalls; a derivative-free polish finds the limit there.
    """
    from scipy.optimize import minimize

    def loss(zz):
        return endpoint_error(model, theory.softmax_cumsum_sigmas(zz, lo, hi), T.z, T.x[-1], solver, **solver_opts)

    best, best_f, evals = None, float("inf"), 0
    for z in starts:
        r = minimize(loss, np.asarray(z, dtype=np.float64), method="Nelder-Mead",
                     options={"maxfev": int(max_evals), "xatol": 1e-3, "fatol": 1e-6})
        evals += int(r.nfev)
        if r.fun < best_f:
            best, best_f = theory.softmax_cumsum_sigmas(r.x, lo, hi), float(r.fun)
    return best, best_f, evals


#: the Karras-ρ values that karras-tuned and hand-tuned scan (the benchmark's hand-tuned is this one)
RHOS = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 14.0, 20.0)


def _tuned(model, steps, solver, candidates: dict, name: str, n: int, grid_points: int, seed: int,
           **solver_opts) -> Schedule:
    """The candidate schedule with the lowest measured endpoint RMSE of ``solver`` on the *training*
    latents (the teacher's); ``meta``: ``choice``, ``objective`` (training RMSE), the whole ``scan``."""
    t0 = time.perf_counter()
    T = teacher(model, n=n, grid_points=grid_points, seed=seed)
    scan = {k: endpoint_error(model, s, T.z, T.x[-1], solver, **solver_opts) for k, s in candidates.items()}
    best = min(scan, key=scan.get)
    return Schedule(candidates[best].sigmas, name, {"choice": best, "objective": scan[best], "scan": scan,
                                                    "n": n, "seed": seed, "seconds": time.perf_counter() - t0})


def karras_tuned(model, steps: int, solver: str = "euler", *, n: int = 128, grid_points: int = 128, seed: int = 0,
                 rhos=RHOS, **solver_opts) -> Schedule:
    """Karras-ρ with ρ picked on the *training* latents (the teacher's) by the measured endpoint RMSE
    of ``solver``.  ``meta``: ``rho``, ``objective`` (training RMSE), the scan."""
    lo, hi = model_range(model)
    cand = {f"karras-{float(r):g}": Schedule.karras(steps, lo, hi, rho=float(r)) for r in rhos}
    s = _tuned(model, steps, solver, cand, "karras-tuned", n, grid_points, seed, **solver_opts)
    s.meta["rho"] = float(s.meta["choice"].split("-", 1)[1])
    return s


def hand_tuned(model, steps: int, solver: str = "euler", *, n: int = 128, grid_points: int = 128, seed: int = 0,
               rhos=RHOS, **solver_opts) -> Schedule:
    """The best hand-made schedule (E_hand of the gap closure): every Karras-ρ of ``rhos`` and the
    hand-made families uniform-logSNR, uniform-t, quadratic-t, cosine (docs/math.md §1), the one with
    the lowest training RMSE of ``solver`` (as :func:`karras_tuned`)."""
    lo, hi = model_range(model)
    cand = {f"karras-{float(r):g}": Schedule.karras(steps, lo, hi, rho=float(r)) for r in rhos}
    for fam in ("uniform_logsnr", "uniform_t", "quadratic_t", "cosine"):
        cand[fam.replace("_", "-")] = getattr(Schedule, fam)(steps, lo, hi)
    return _tuned(model, steps, solver, cand, "hand-tuned", n, grid_points, seed, **solver_opts)
