"""GITS (Chen et al., ICML 2024): a DP over one-step Euler jumps on the teacher.  (docs/math.md §8.2)

Cost of a jump a → c on the teacher grid: C[a, c] = E_b ‖x_a + (σ_c − σ_a) d_a − x_c‖ (the "l2"
metric of the official code; the README's default "dev" metric is not implemented), then the
shortest path with exactly N edges and GITS's discount coefficient γ (V_k(j) = min C[j,i] + γ V_{k−1}(i),
γ = 1.15 in the paper) through :func:`dpmsched.optimize.dp.shortest_paths`.  Teacher: the shared
:func:`.teacher.teacher` (Heun on a Karras-ρ7 grid; GITS uses iPNDM on 61 points).  The cost is
solver-agnostic: the schedule is used with any solver.
"""
from __future__ import annotations

import time

from ..schedules import Schedule
from .bound import jump_costs
from .teacher import dp_schedule, teacher

__all__ = ["gits"]


def gits(model, steps: int, solver: str = "euler", *, n: int = 128, grid_points: int = 128, seed: int = 0,
         discount: float = 1.15) -> Schedule:
    """GITS schedule; ``meta["objective"]``: the discounted DP cost of the path."""
    t0 = time.perf_counter()
    T = teacher(model, n=n, grid_points=grid_points, seed=seed)
    s = dp_schedule(jump_costs(T), T.grid, steps, "gits", discount)
    s.meta.update({"n": n, "grid_points": grid_points, "seed": seed, "teacher_seconds": T.seconds,
                   "seconds": time.perf_counter() - t0})
    return s
