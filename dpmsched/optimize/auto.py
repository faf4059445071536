"""``method="auto"``: the practitioner's answer to "the best N-step schedule for my model and my solver".

1. **Candidates** — the exact grid DPs of the project (the propagation-aware bound ``bound-prop``, order-matched
   to the solver, and its first-order variant for multistep solvers; the step-cost bound ``bound-step`` of the
   solver, or of DPM-Solver++(2M) for the multistep solvers it does not model; ``gits``) and the hand-made families
   (every Karras-ρ of :data:`dpmsched.optimize.direct.RHOS`, uniform log-SNR, uniform t, quadratic t, cosine),
   all on the model's σ range.
2. **Pick on validation latents** — each candidate's endpoint RMSE (:func:`~dpmsched.optimize.teacher.endpoint_error`)
   against the teacher endpoints of ``n_val`` *validation* latents (seed ``val_seed``), not the training ones the
   DPs were fitted on.
3. **Polish** — on the softmax-cumsum logits (docs/math.md §3.4(b), §8.4) of the winner, minimising the measured
   squared error on the *training* latents, with early stopping on the validation error: first Adam (full batch,
   or mini-batches of ``batch`` latents) through the solver (:func:`~dpmsched.optimize.direct.fit_logits`, LD3's
   descent; the current point is scored on the validation latents every ``adam_every`` steps), then Nelder–Mead from the best validation point (every
   ``check_every`` evaluations the best training point so far is scored; it finds what the gradient misses where
   the loss has kinks).  ``patience`` checks without a validation improvement stop each stage.  With ``starts`` > 1
   each of that many best candidates is polished and the lowest validation error wins.

The result is the schedule with the lowest validation error among the candidates and the polish checkpoints, so
**by construction it is never worse than any candidate on the validation latents** (tested).  Judge it on a third,
held-out set (the command line prints that comparison against Karras-ρ7).  ``meta``: ``choice`` (the winning
candidate), ``candidates`` (their validation RMSEs), ``val_rmse``, ``train_rmse``, ``polished`` (whether the polish
beat the candidate on validation), ``polish_evals``, ``seconds``.
"""
from __future__ import annotations

import math
import time

from .. import solvers
from ..denoisers import event_shape, model_range
from ..schedules import Schedule
from ..solvers.registry import canonical
from .bound import bound_prop
from .bound_step import SUPPORTED as STEP_SOLVERS
from .bound_step import bound_step
from .direct import RHOS, check_split, validated_fit, validation_teacher
from .gits import gits
from .teacher import endpoint_error, teacher

__all__ = ["auto", "candidates", "STEP_DIM"]

#: data dimension up to which ``bound-step`` is a default candidate (its Jacobian is exact there: d ≤ m = 4)
STEP_DIM = 4
#: multistep solvers that bound-step does not model; their bound-step candidate is DPM-Solver++(2M)'s
MULTISTEP = ("dpmpp_3m", "unipc", "ipndm")


def candidates(model, steps: int, solver: str = "euler", *, n: int = 128, grid_points: int = 128,
               seed: int = 0, step_bound: bool | None = None) -> dict[str, Schedule]:
    """The candidate schedules of :func:`auto` by name (the DPs share the teacher of ``n`` latents, ``seed``).

    ``step_bound``: include ``bound-step``; None (default): where its Jacobian is exact, data of dimension
    d ≤ :data:`STEP_DIM` (bound_step's default number of adjoint directions).  On image models its adjoint sweep
    costs more than the rest of ``auto`` together (43 s of the digits UNet's 8×8 at 64 latents × 64 grid points) and
    its first order fails there (docs/math.md §3.9), so it is left out unless asked for."""
    lo, hi = model_range(model)
    if step_bound is None:
        step_bound = math.prod(event_shape(model)) <= STEP_DIM
    common = {"n": n, "grid_points": grid_points, "seed": seed}
    out = {f"karras-{r:g}": Schedule.karras(steps, lo, hi, rho=r) for r in RHOS}
    for fam in ("uniform_logsnr", "uniform_t", "quadratic_t", "cosine"):
        out[fam.replace("_", "-")] = getattr(Schedule, fam)(steps, lo, hi)
    if steps < grid_points:
        out["bound-prop"] = bound_prop(model, steps, solver, **common)
        if solvers.solver_order(solver) > 1:
            out["bound-prop-order1"] = bound_prop(model, steps, solver, order=1, **common)
        out["gits"] = gits(model, steps, solver, **common)
        if step_bound and canonical(solver) in STEP_SOLVERS:
            out["bound-step"] = bound_step(model, steps, solver, **common)
        elif step_bound and canonical(solver) in MULTISTEP:    # the 2M step model is the nearest one we have
            out["bound-step-2m"] = bound_step(model, steps, "dpmpp_2m", **common)
    return out


def auto(model, steps: int, solver: str = "euler", *, n: int = 128, grid_points: int = 128, seed: int = 0,
         n_val: int = 128, val_seed: int = 2, adam: int = 60, lr: float = 0.05, adam_every: int = 5, batch: int = 0,
         polish: int = 200, check_every: int = 0, patience: int = 6, step_bound: bool | None = None,
         val_grid_points: int = 0, starts: int = 1, **solver_opts) -> Schedule:
    """The best of the candidates on validation latents, polished with early stopping (module doc).

    ``n``/``seed``: training latents (the teacher of the DPs and of the polish); ``n_val``/``val_seed``: the
    validation latents (a seed the training did not use); ``adam``: at most this many Adam steps
    (learning rate ``lr``) through the solver on mini-batches of ``batch`` training latents (0: all of them), a
    validation check every ``adam_every`` (0: none); ``polish``: then
    at most this many Nelder–Mead evaluations (0: none), a check every ``check_every`` (default N + 1); both stop
    after ``patience`` checks without a validation improvement.  ``step_bound``: see :func:`candidates`.
    ``val_grid_points``: the grid of the validation teacher (0: ``grid_points``;
    :func:`~dpmsched.optimize.direct.validation_teacher`) — a coarser one is cheaper per latent, so more latents.
    ``starts``: polish this many of the best candidates on validation, each from its own start, and keep the
    result with the lowest validation error (``starts`` × the polish's cost; the polish through a multistep solver
    is path-dependent, so a second start can end elsewhere).
    """
    if int(starts) < 1:
        raise ValueError(f"starts={starts}: expected a positive number of candidates to polish")
    check_split(seed, val_seed, batch, n, val_grid_points)
    t0 = time.perf_counter()
    T = teacher(model, n=n, grid_points=grid_points, seed=seed)
    V = validation_teacher(model, n_val, val_seed, grid_points, val_grid_points)

    def val(s):
        return endpoint_error(model, s, V.z, V.x[-1], solver, **solver_opts)

    cands = candidates(model, steps, solver, n=n, grid_points=grid_points, seed=seed, step_bound=step_bound)
    scores = {k: val(s) for k, s in cands.items()}
    fits = {k: validated_fit(model, cands[k].sigmas, T, V, solver, adam=adam, lr=lr, adam_every=adam_every,
                             batch=batch, polish=polish, check_every=check_every, patience=patience, seed=seed,
                             **solver_opts)
            for k in sorted(scores, key=scores.get)[:int(starts)]}
    choice = min(fits, key=lambda k: fits[k]["val"])       # the first (best candidate) wins a tie
    r = fits[choice]
    s = Schedule(r["sig"], "auto")
    s.meta.update({"choice": choice, "candidates": scores, "val_rmse": r["val"], "starts": len(fits),
                   "train_rmse": endpoint_error(model, s, T.z, T.x[-1], solver, **solver_opts), "objective": r["val"],
                   "polished": r["polished"], "adam_iters": r["adam_iters"], "polish_evals": r["evals"], "n": n,
                   "seed": seed, "n_val": n_val, "val_seed": val_seed, "batch": r["batch"],
                   "val_grid_points": int(val_grid_points) or grid_points,
                   "teacher_seconds": T.seconds + V.seconds,
                   "seconds": time.perf_counter() - t0})
    return s
