"""Drawing samples: the one entry point every notebook, benchmark and command uses."""
from __future__ import annotations

import inspect
import numbers

import torch

from ..schedules import Schedule
from .registry import get

__all__ = ["latents", "sample"]


def latents(event_shape, n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """``n`` standard-normal latents z, shape (n, *event_shape), drawn on the CPU from
    ``torch.Generator().manual_seed(seed)`` in ``dtype`` — the same values on every machine and device."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"the number of latents must be an integer >= 1, got {n!r}")
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(n, *tuple(event_shape), generator=g, dtype=dtype)


@torch.no_grad()
def sample(model, schedule, solver: str = "euler", n: int = 64, *, seed: int = 0, z: torch.Tensor | None = None,
           solver_seed: int | None = None, batch: int = 256, dtype=torch.float64, device="cpu",
           progress: bool = False, **opts) -> torch.Tensor:
    """``n`` samples of ``model`` (a denoiser with ``event_shape``) with ``solver`` on ``schedule``.

    The latents z (n, *event) are :func:`latents` of ``seed`` in ``dtype`` (or the given ``z``), drawn once for
    all n, so the batch size does not change which noise a sample gets; the state starts at x_0 = σ_0 z.
    A stochastic solver draws its noise from one generator seeded with ``solver_seed`` (default ``seed + 1``)
    across all batches.  ``opts`` are the solver's options; ``progress`` shows a tqdm bar over the batches.
    Returns (n, *event_shape) on the CPU.
    """
    fn = get(solver)
    s = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    if z is None:
        z = latents(model.event_shape, n, seed, dtype)
    elif z.shape[0] != n:
        raise ValueError(f"z must have {n} rows, got shape {tuple(z.shape)}")
    if "generator" in inspect.signature(fn).parameters and "generator" not in opts:
        g_seed = int(seed) + 1 if solver_seed is None else int(solver_seed)
        opts = {**opts, "generator": torch.Generator(device=device).manual_seed(g_seed)}
    s0 = float(s.sigmas[0])
    starts = range(0, n, batch)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"sampling {n} with {solver}", unit="batch")
    return torch.cat([fn(model, s0 * z[i:i + batch].to(device), s, **opts).cpu() for i in starts])
