"""Teacher trajectories, their adjoints, and measured errors — shared by every optimizer.
(docs/math.md §3.4, §8.2, §8.4)

A :class:`Teacher` holds B accurate PF-ODE trajectories of a model, sampled on a fine decreasing σ
grid (Karras-ρ7 with G points by default), from standard-normal latents ``z`` drawn with a seed:

* ``x[g, b]`` — the state at σ_g (float64), ``x[0] = σ_max z``;
* ``f[g, b]`` — the denoiser output D(x[g]; σ_g) along the trajectory (τ of §3.2).

The trajectories do not depend on the student schedule, so they are computed once per
(model, grid, B, seed, solver) and kept in a small in-process cache (:func:`teacher`); every
optimizer that needs them — Huang, the propagation-aware bound, GITS, AYS (endpoints as data),
``karras-tuned`` and ``direct`` — calls :func:`teacher` with the same settings and reuses them.

:func:`adjoints` adds, for m random output directions v_j ~ N(0, I), the vectors
a_j(g) = (∂x(σ_N)/∂x(σ_g))ᵀ v_j at *every* grid point in one backward sweep (the discrete adjoint of
the teacher's steps, linearised around the teacher states).  Since E_v⟨v, J w⟩² = ‖J w‖², they give
an unbiased sketch of how much any error w made at σ_g is amplified by the time it reaches σ_N —
the ingredient of the propagation-aware bound (:mod:`dpmsched.optimize.bound`).

:func:`endpoint_error` is the measured quantity every method is judged by: RMSE between a solver's
output on a schedule and the teacher's (or a reference's) endpoint from the same latents.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import solvers
from ..denoisers import event_shape, model_range
from ..metrics import truncation_error
from ..schedules import Schedule
from .dp import shortest_paths

__all__ = ["Teacher", "teacher", "adjoints", "reference_endpoints", "endpoint_error", "dp_schedule", "clear_cache"]

_CACHE: dict = {}
_CACHE_MAX = 8


@dataclass
class Teacher:
    """B teacher trajectories on a decreasing grid of G noise levels (see module doc).

    ``grid`` (G,) float64 numpy; ``z`` (B, *event); ``x``, ``f`` (G, B, *event) float64 tensors.
    """

    grid: np.ndarray
    z: torch.Tensor
    x: torch.Tensor
    f: torch.Tensor
    solver: str
    seed: int
    seconds: float

    @property
    def G(self) -> int:
        return int(self.grid.size)

    @property
    def B(self) -> int:
        return int(self.z.shape[0])

    @property
    def d(self) -> torch.Tensor:
        """ODE directions d_g = (x_g − f_g)/σ_g, (G, B, *event)  (GITS's stored d)."""
        s = torch.as_tensor(self.grid.copy()).reshape(-1, *([1] * (self.x.ndim - 1)))
        return (self.x - self.f) / s

    def flat(self, name: str) -> torch.Tensor:
        """``x``/``f``/``d`` reshaped to (G, B, D)."""
        t = getattr(self, name)
        return t.reshape(t.shape[0], t.shape[1], -1)


def _grid(model, grid_points: int, rho: float) -> np.ndarray:
    if int(grid_points) < 3:
        raise ValueError(f"grid_points must be >= 3, got {grid_points}")
    lo, hi = model_range(model)
    return Schedule.karras(int(grid_points) - 1, lo, hi, rho=rho).sigmas


@torch.no_grad()
def _solve_on_grid(model, z: torch.Tensor, grid: np.ndarray, solver: str, batch: int):
    fn = solvers.get(solver)
    xs, fs = [], []
    for i in range(0, z.shape[0], batch):
        rec = []
        xN = fn(model, float(grid[0]) * z[i:i + batch], grid, callback=rec.append)
        xs.append(torch.stack([r["x"] for r in rec] + [xN]))
        fs.append(torch.stack([r["denoised"] for r in rec] + [model(xN, float(grid[-1]))]))
    return torch.cat(xs, 1).double(), torch.cat(fs, 1).double()


def teacher(model, *, n: int = 128, grid_points: int = 128, seed: int = 0, rho: float = 7.0,
            solver: str = "heun", batch: int = 512, cache: bool = True) -> Teacher:
    """Teacher trajectories of ``model`` from ``n`` latents of ``seed`` on a Karras-ρ grid of
    ``grid_points`` noise levels spanning the model's range, integrated by ``solver`` on that grid
    (Heun: 2G−1 NFE per trajectory).  Cached per (model object, settings) unless ``cache=False``.
    """
    key = (id(model), int(n), int(grid_points), int(seed), float(rho), str(solver))
    if cache and key in _CACHE and _CACHE[key][0] is model:
        return _CACHE[key][1]
    t0 = time.perf_counter()
    grid = _grid(model, grid_points, rho)
    z = solvers.latents(event_shape(model), int(n), seed)
    x, f = _solve_on_grid(model, z, grid, solver, int(batch))
    t = Teacher(grid, z, x, f, str(solver), int(seed), time.perf_counter() - t0)
    if cache:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = (model, t)          # keep the model alive so id() stays unique
    return t


def clear_cache() -> None:
    _CACHE.clear()


def adjoints(model, t: Teacher, m: int = 2, seed: int = 0, *, directions: torch.Tensor | None = None,
             integrator: str = "euler") -> torch.Tensor:
    """a_j(g) = (∂x(σ_N)/∂x(σ_g))ᵀ v_j for m directions v_j ~ N(0, I): shape (G, m, B, *event).

    One backward sweep through one-step maps on the teacher grid, each linearised at the stored
    teacher state (the discrete adjoint of the flow map):  a(G−1) = v,  a(g) = (∂Φ_g/∂x)ᵀ a(g+1).

    * ``integrator="euler"`` (default): Φ_g(x) = r x + (1 − r) D(x; σ_g), r = σ_{g+1}/σ_g — first order in
      the grid spacing; G − 1 network evaluations and their backward passes on a batch of m·B.
    * ``integrator="heun"`` (or any one-step solver name): Φ_g = that solver's step σ_g → σ_{g+1}
      (:func:`dpmsched.solvers.heun` on the two-point schedule, differentiated by autograd).  With the
      teacher's own solver (Heun by default) this is the *exact* Jacobian of the teacher's flow map, second
      order in the grid; twice the evaluations of "euler".

    ``directions``: the v_j themselves, (m, B, *event) (e.g. a scaled basis, which makes
    mean_j ⟨a_j, w⟩² = ‖J w‖² exact); default m standard-normal ones drawn with ``seed``.
    """
    shape = t.x.shape[1:]
    if directions is None:
        if int(m) < 1:
            raise ValueError(f"m (adjoint directions) must be >= 1, got {m}")
        gen = torch.Generator().manual_seed(int(seed) + 7919)
        a = torch.randn(int(m), *shape, generator=gen, dtype=torch.float64)
    else:
        a = torch.as_tensor(directions, dtype=torch.float64)
        if a.ndim != len(shape) + 1 or tuple(a.shape[1:]) != tuple(shape):
            raise ValueError(f"directions must have shape (m, {', '.join(map(str, shape))}), got {tuple(a.shape)}")
    m = a.shape[0]
    step = None if integrator == "euler" else solvers.get(integrator)
    out = torch.empty(t.G, m, *shape, dtype=torch.float64)
    out[-1] = a
    for g in range(t.G - 2, -1, -1):
        r = float(t.grid[g + 1] / t.grid[g])
        xg = t.x[g].unsqueeze(0).expand(m, *shape).reshape(-1, *shape[1:]).clone().requires_grad_(True)
        if step is None:
            den = model(xg, float(t.grid[g]))
            (vjp,) = torch.autograd.grad(den.double(), xg, grad_outputs=a.reshape(-1, *shape[1:]) * (1.0 - r))
            a = r * a + vjp.reshape(a.shape).detach()
        else:
            with torch.enable_grad():
                nxt = step(model, xg, t.grid[g:g + 2].copy())
                (vjp,) = torch.autograd.grad(nxt.double(), xg, grad_outputs=a.reshape(-1, *shape[1:]))
            a = vjp.reshape(a.shape).detach()
        out[g] = a
    return out


_REF: dict = {}


@torch.no_grad()
def reference_endpoints(model, n: int = 512, seed: int = 1, steps: int = 128, batch: int = 512, *,
                        sigma_range: tuple[float, float] | None = None, dtype=torch.float64, device=None,
                        cache: bool = True):
    """(z, x_ref): ``n`` latents of ``seed`` (:func:`dpmsched.solvers.latents`, drawn on the CPU in ``dtype``)
    and their accurate PF-ODE solutions from σ_max to σ_min (:func:`dpmsched.solvers.reference`, RK4 with
    ``steps`` steps; 4·steps NFE each), on ``device`` (default: the CPU).  The range is the model's
    (:func:`dpmsched.denoisers.model_range`) unless ``sigma_range`` = (σ_min, σ_max).  Cached per model and
    settings unless ``cache=False``.  Use a seed the optimizers did not see for held-out evaluation; the
    accurate-solve pairs of Phase-2 distillation are these too.
    """
    lo, hi = model_range(model) if sigma_range is None else (float(sigma_range[0]), float(sigma_range[1]))
    key = (id(model), int(n), int(seed), int(steps), lo, hi, str(dtype), str(device), int(batch))
    if cache and key in _REF and _REF[key][0] is model:
        return _REF[key][1]
    z = solvers.latents(event_shape(model), int(n), seed, dtype)
    if device is not None:
        z = z.to(device)
    xs = [solvers.reference(model, hi * z[i:i + batch], hi, lo, steps=steps) for i in range(0, z.shape[0], batch)]
    out = (z, torch.cat(xs).to(dtype))
    if cache:
        if len(_REF) >= _CACHE_MAX:
            _REF.pop(next(iter(_REF)))
        _REF[key] = (model, out)
    return out


@torch.no_grad()
def endpoint_error(model, schedule, z: torch.Tensor, x_ref: torch.Tensor, solver: str = "euler",
                   batch: int = 512, **solver_opts) -> float:
    """RMSE (data units) of ``solver`` on ``schedule`` from latents z (B, *event) against x_ref
    (:func:`dpmsched.metrics.truncation_error`, computed in float64)."""
    s = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    fn = solvers.get(solver)
    out = torch.cat([fn(model, s.sigmas[0] * z[i:i + batch], s, **solver_opts).double()
                     for i in range(0, z.shape[0], batch)])
    return truncation_error(out, x_ref)


def dp_schedule(C, grid: np.ndarray, steps: int, name: str, discount: float = 1.0) -> Schedule:
    """The grid path with exactly ``steps`` edges minimising the pair costs ``C`` (G, G), as a Schedule
    (σ = grid[path]); ``meta``: ``objective`` (the DP optimum), ``grid_index`` (the path), ``discount``.
    Through the pair DP of the project, :func:`dpmsched.optimize.dp.shortest_paths`."""
    steps = int(steps)
    if not 1 <= steps <= len(grid) - 1:
        raise ValueError(f"steps must be in 1..{len(grid) - 1} for a grid of {len(grid)} points, got {steps}")
    r = shortest_paths(C.numpy() if isinstance(C, torch.Tensor) else C, steps, discount)
    idx = r.path(steps)
    return Schedule(np.asarray(grid)[idx], name, {"objective": r.cost(steps), "grid_index": idx.tolist(),
                                                 "discount": float(discount)})
