"""A finetuned model is tied to its schedule and solver: saving, loading, checking, evaluating it."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from .. import metrics, solvers
from ..checkpoints import load_model, save_model
from ..data import IMAGE_SETS, image_set
from ..denoisers.guidance import Guided, as_tuned
from ..models import EXACT_MODELS, exact_model
from ..optimize.teacher import endpoint_error, reference_endpoints
from ..schedules import Schedule
from ..train import make_data

__all__ = ["ScheduleMismatchWarning", "tuned_for", "check_schedule", "save_finetuned", "load_finetuned",
           "few_step_error", "evaluate", "training_data", "model_samples"]


class ScheduleMismatchWarning(UserWarning):
    """A finetuned model is used with a schedule or solver other than the one it was tuned for."""


def tuned_for(model) -> dict | None:
    """{"schedule", "solver"} a model was finetuned for: set by :func:`phase2`, or read from the config of a
    checkpoint written by :func:`save_finetuned` (so ``denoisers.load`` of such a folder is covered too)."""
    tuned = getattr(model, "finetuned_for", None)
    return tuned if tuned is not None else (getattr(model, "config", None) or {}).get("finetune")


def check_schedule(model, schedule, solver: str | None = None) -> bool:
    """Warn (:class:`ScheduleMismatchWarning`) when ``model`` was finetuned for another schedule or solver.

    After Phase-2 the model is specific to σ* and its solver (§3.5); a model that was not finetuned passes.
    Returns True when the pair matches (or the model is not finetuned).
    """
    tuned = tuned_for(model)
    if tuned is None:
        return True
    s = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    want = np.asarray(tuned["schedule"]["sigmas"], dtype=np.float64)
    problems = []
    if want.shape != s.sigmas.shape or not np.allclose(want, s.sigmas, rtol=1e-9, atol=0):
        problems.append(f"schedule {np.array2string(s.sigmas, precision=4)} (tuned for "
                        f"{np.array2string(want, precision=4)})")
    if solver is not None and str(solver).lower() != str(tuned["solver"]).lower():
        problems.append(f"solver {solver!r} (tuned for {tuned['solver']!r})")
    if problems:
        warnings.warn("this model was finetuned (Phase-2) for another setting: " + "; ".join(problems)
                      + " — its few-step quality is only measured for the tuned pair",
                      ScheduleMismatchWarning, stacklevel=2)
        return False
    return True


def model_samples(model, schedule, solver: str = "euler", n: int = 512, seed: int = 0, batch: int = 1024):
    """``n`` samples of a network ``model`` with ``solver`` on ``schedule`` (:func:`dpmsched.solvers.sample`,
    latents of ``seed`` in the network's dtype, on its device); warns if the model was finetuned for
    another pair (:func:`check_schedule`)."""
    s = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    check_schedule(model, s, solver)
    p = next(model.parameters(), None)
    dev, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float64)
    return solvers.sample(model, s, solver, n, seed=seed, batch=batch, dtype=dtype, device=dev)


@torch.no_grad()
def few_step_error(model, schedule, solver: str = "euler", pairs=None, n: int = 256, seed: int = 0,
                   ref_steps: int = 32) -> float:
    """RMSE of the few-step solve against the model's own accurate solve from the same latents
    (:func:`dpmsched.optimize.teacher.endpoint_error`); ``pairs`` = (z, x_ref) to reuse."""
    s = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    if pairs is None:
        p = next(model.parameters())
        pairs = reference_endpoints(model, n, seed, ref_steps, 256, sigma_range=(s.sigma_min, s.sigma_max),
                                    dtype=p.dtype, device=p.device, cache=False)
    z, x_ref = pairs
    return endpoint_error(model, s, z, x_ref, solver, batch=len(z))


def evaluate(model, schedule, solver: str = "euler", *, pairs=None, dataset: str | None = None, n: int = 512,
             seed: int = 0) -> dict:
    """Few-step quality of ``model`` on ``schedule`` with ``solver``, as a dict of floats (lower is better):

    * ``"rmse"`` — :func:`few_step_error` against ``pairs`` = (z, x_ref) (pass the *base* model's
      :func:`~dpmsched.finetune.loop.distill_pairs` to measure distance to what the pretrained model would produce);
    * ``dataset`` "toy2d-*" (an exact mixture of ``dpmsched.denoisers.EXACT_MODELS``): ``"nll"`` (exact mean
      −log p of ``n`` samples, nats) and ``"sw"`` (sliced Wasserstein to ``n`` true samples);
    * ``dataset`` "digits" / "mnist": ``"frechet"`` = the ``"fd"`` of ``dpmsched.metrics.frechet_digits`` /
      ``frechet_mnist`` of ``n`` samples (a guided model: its samples, whatever the classes).
    Samples come from :func:`model_samples` with ``seed``.
    """
    out = {}
    if pairs is not None:
        out["rmse"] = few_step_error(model, schedule, solver, pairs=pairs)
    if dataset is None:
        return out
    if str(dataset).startswith("toy2d"):
        if dataset not in EXACT_MODELS:
            raise ValueError(f"unknown toy data {dataset!r}; expected one of {sorted(EXACT_MODELS)}")
        mix = exact_model(dataset)
        x = model_samples(model, schedule, solver, n=n, seed=seed).double()
        out["nll"] = metrics.gmm_nll(x, mix)
        out["sw"] = metrics.sliced_wasserstein(x, mix.sample(n, torch.Generator().manual_seed(int(seed) + 1)))
    elif dataset in IMAGE_SETS:
        out["frechet"] = float(metrics.frechet_image(model_samples(model, schedule, solver, n=n, seed=seed), dataset)["fd"])
    else:
        raise ValueError(f"evaluate: unknown dataset {dataset!r}; expected 'toy2d-*' or one of {sorted(IMAGE_SETS)}")
    return out


def training_data(name: str, event_shape, n_toy: int = 8192, seed: int = 0) -> torch.Tensor:
    """x0 for the DSM Phase-2 loss: the train split of an image set (digits (M, 1, 8, 8), mnist (M, 1, 28, 28)),
    or ``n_toy`` samples of a 2-D toy mixture drawn with ``seed`` (through :func:`dpmsched.train.make_data`, the
    data the model was trained on)."""
    if name in IMAGE_SETS:
        x = image_set(name)[0]("train")
    else:
        x = make_data(name)[0](int(n_toy), torch.Generator().manual_seed(int(seed)))[0]
    if tuple(x.shape[1:]) != tuple(event_shape):
        raise ValueError(f"data {name!r} has event shape {tuple(x.shape[1:])}, the model expects {tuple(event_shape)}")
    return x



def save_finetuned(model, folder, schedule, solver: str, info: dict | None = None) -> Path:
    """Write a finetuned EDM model with :func:`dpmsched.checkpoints.save_model`; its ``config.json`` gets a
    ``"finetune"`` entry {"schedule", "solver", "base_model", **info} that ties it to the pair it was tuned for.
    A guided model (:class:`~dpmsched.denoisers.guidance.Guided`, finetuned as a whole) is written as its network
    with ``"guidance"`` {"labels", "w", "cycle"} in that entry; :func:`load_finetuned` wraps it again."""
    s = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    extra = {}
    if isinstance(model, Guided):
        extra["guidance"] = model.guidance
        model = model.model
    base = dict(getattr(model, "config", None) or {})
    tuned = {"schedule": s.to_dict(), "solver": str(solver),
             "base_model": base.get("finetune", {}).get("base_model", getattr(model, "name", None)),
             **extra, **(info or {})}
    return save_model(model, folder, kind="edm", dataset=base.get("dataset", "unknown"),
                      training=base.get("training"), extra={"finetune": tuned})


def load_finetuned(path, schedule=None, solver: str | None = None, device="cpu"):
    """Load a checkpoint written by :func:`save_finetuned`.  ``schedule``/``solver``: the pair you intend to
    use; a different one raises :class:`ScheduleMismatchWarning`.  Returns ``(model, tuned_schedule, solver)``;
    a model finetuned with guidance comes back guided as it was tuned (:func:`~dpmsched.denoisers.guidance.as_tuned`).
    """
    model = load_model(path, device=device)
    tuned = (getattr(model, "config", None) or {}).get("finetune")
    if tuned is None:
        raise ValueError(f"{path} is not a finetuned checkpoint (its config.json has no 'finetune' entry)")
    model = as_tuned(model)
    model.finetuned_for = {"schedule": tuned["schedule"], "solver": tuned["solver"]}
    if schedule is not None:
        check_schedule(model, schedule, solver)
    return model, Schedule.from_dict(tuned["schedule"]), tuned["solver"]
