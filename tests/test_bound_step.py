"""The step-cost bound ``bound-step`` (docs/math.md §3.9): local error of the actual solver step on the teacher,
propagated by the measured flow-map Jacobian, exact DP over the solver's state.

What is asserted, and why it is what is true:

* per step, on the closed-form Gaussian (linear flow, so the first-order propagation is exact), a pair or
  triplet cost *equals* the real one-step error of the real solver from the exact state with the exact
  history, propagated to σ_N by the exact flow — up to the teacher's discretisation, measured +0.2 … +0.9 %:
  asserted 1 − 1e-3 ≤ cost/real ≤ 1.02;
* per step, on a 2-D mixture (nonlinear flow), the cost is a first-order estimate: within 5 % of the real one;
* for a whole schedule the summed cost bounds the real endpoint RMSE from above by Minkowski's inequality,
  *except* for the neglected terms (second order, and the solver's own error feedback).  Euler on the Gaussian:
  ≥ (every local error has the sign of the contraction, so nothing cancels); DPM-Solver++(2M) on the Gaussian
  and both solvers on the mixture: ≥ 0.9 × real (measured minima 0.92 and 0.97), often loose (up to 9×, where
  errors of successive steps cancel).
"""
import itertools
import math

import numpy as np
import pytest
import torch

from dpmsched import Schedule, metrics, solvers
from dpmsched.models import load
from dpmsched.optimize import bound, optimize
from dpmsched.optimize import bound_step as BS
from dpmsched.optimize import teacher as TT

C_STD = 0.5


@pytest.fixture(scope="module")
def gauss():
    return load("gauss1d")


@pytest.fixture(scope="module")
def ring():
    return load("toy2d-ring")


def _costs(model, T, solver="dpmpp_2m"):
    adj = TT.adjoints(model, T, directions=BS.direction_basis(T), integrator="heun")
    return BS.step_costs(T, solver, adj)


def _oracle(outputs):
    """A denoiser that returns the exact trajectory's output at each σ (the teacher's history)."""
    return lambda x, s: outputs[round(float(s), 12)]


def _real_step(model, exact, sp, sa, sc):
    """The real solvers' step to σ_c from the exact state at σ_a: Euler (sp None), or DPM-Solver++(2M)'s
    order-2 step with the exact history D(x(σ_p)).  2M is run on [σ_p, σ_a, σ_c] (lower_order_final=False)
    with the oracle denoiser; its first step lands off x(σ_a), and since the step is affine in the state with
    slope σ_c/σ_a, subtracting (σ_c/σ_a)·(that miss) gives the step from the exact state."""
    if sp is None:
        return solvers.get("euler")(model, exact(sa), Schedule([sa, sc]))
    D = _oracle({round(float(s), 12): model(exact(s), float(s)) for s in (sp, sa)})
    x3 = solvers.get("dpmpp_2m")(D, exact(sp), Schedule([sp, sa, sc]), lower_order_final=False)
    miss = solvers.get("euler")(D, exact(sp), Schedule([sp, sa])) - exact(sa)
    return x3 - (sc / sa) * miss


def test_heun_adjoints_are_the_exact_gaussian_jacobian(gauss):
    """The Heun sweep differentiates the teacher's own flow map: J to 2e-3 (the Euler sweep: 3e-2)."""
    T = TT.teacher(gauss, n=16, grid_points=96)
    J = np.sqrt(T.grid[-1] ** 2 + C_STD**2) / np.sqrt(T.grid**2 + C_STD**2)
    A = TT.adjoints(gauss, T, directions=BS.direction_basis(T), integrator="heun")
    np.testing.assert_allclose(A[:, 0, :, 0].numpy(), np.broadcast_to(J[:, None], (T.G, T.B)), rtol=2e-3)
    with pytest.raises(ValueError, match="directions"):
        TT.adjoints(gauss, T, directions=torch.ones(2, 3))


def test_step_costs_equal_the_real_propagated_step_error_on_the_gaussian(gauss):
    T = TT.teacher(gauss, n=64, grid_points=96)
    C1, C3 = _costs(gauss, T)
    smax, sN = float(T.grid[0]), float(T.grid[-1])

    def exact(s):
        return gauss.ode_solution(smax * T.z, smax, float(s))

    def real(p, a, c):
        x = _real_step(gauss, exact, None if p is None else T.grid[p], T.grid[a], T.grid[c])
        return metrics.truncation_error(gauss.ode_solution(x, float(T.grid[c]), sN), exact(sN))

    for a, c in [(5, 20), (20, 40), (10, 60), (40, 80), (30, 95)]:
        assert 1 - 1e-3 <= float(C1[a, c]) / real(None, a, c) <= 1.02, (a, c)
    for p, a, c in [(3, 10, 30), (30, 40, 60), (40, 50, 95), (20, 30, 95)]:
        assert 1 - 1e-3 <= float(C3[p, a, c]) / real(p, a, c) <= 1.02, (p, a, c)
    # 2M's first-order steps are Euler steps: the same pair costs, to rounding
    C1e, C3e = _costs(gauss, T, "euler")
    fin = torch.isfinite(C1)
    assert C3e is None and torch.allclose(C1[fin], C1e[fin], rtol=1e-6, atol=1e-12)


def test_whole_schedule_bound_on_the_gaussian(gauss):
    T = TT.teacher(gauss, n=64, grid_points=96)
    C1, C3 = _costs(gauss, T)
    smax = float(T.grid[0])
    xN = gauss.ode_solution(smax * T.z, smax, float(T.grid[-1]))
    rng = np.random.default_rng(0)
    for N in (2, 3, 4, 6, 8):
        for trial in range(4):
            idx = ([0, *sorted(rng.choice(np.arange(1, T.G - 1), N - 1, replace=False)), T.G - 1] if trial else
                   BS.solve_dp(C1, C3, N)[0])
            for solver, c3, floor in (("euler", None, 1 - 1e-3), ("dpmpp_2m", C3, 0.9)):
                e = metrics.truncation_error(solvers.get(solver)(gauss, smax * T.z, Schedule(T.grid[idx])), xN)
                assert BS.path_cost(C1, c3, idx) >= floor * e, (solver, N, list(idx))


def test_step_costs_track_the_real_error_on_a_mixture(ring):
    """First order on a nonlinear flow: per step within 5 %; summed over a schedule ≥ 0.9 × the endpoint RMSE."""
    T = TT.teacher(ring, n=32, grid_points=64)
    C1, C3 = _costs(ring, T)
    smax, sN = float(T.grid[0]), float(T.grid[-1])
    memo = {}

    def exact(s):
        s = float(s)
        if s not in memo:
            memo[s] = smax * T.z if s == smax else solvers.reference(ring, smax * T.z, smax, s, steps=256)
        return memo[s]

    def flow(x, s):
        return x if float(s) == sN else solvers.reference(ring, x, float(s), sN, steps=256)

    for p, a, c in [(None, 5, 21), (None, 21, 42), (None, 32, 63), (None, 0, 32),
                    (5, 16, 32), (21, 32, 63), (0, 21, 42)]:
        sc = T.grid[c]
        x = _real_step(ring, exact, None if p is None else T.grid[p], T.grid[a], sc)
        e = metrics.truncation_error(flow(x, sc), flow(exact(sc), sc))
        cost = float(C1[a, c] if p is None else C3[p, a, c])
        assert 0.95 <= cost / e <= 1.05, (p, a, c, cost, e)
    rng = np.random.default_rng(1)
    for N in (2, 3, 5, 8):
        for trial in range(3):
            idx = ([0, *sorted(rng.choice(np.arange(1, T.G - 1), N - 1, replace=False)), T.G - 1] if trial else
                   BS.solve_dp(C1, C3, N)[0])
            for solver, c3 in (("euler", None), ("dpmpp_2m", C3)):
                e = metrics.truncation_error(solvers.get(solver)(ring, smax * T.z, Schedule(T.grid[idx])), exact(sN))
                assert BS.path_cost(C1, c3, idx) >= 0.9 * e, (solver, N, list(idx))


@pytest.mark.parametrize("solver,lof", [("euler", True), ("dpmpp_2m", True), ("dpmpp_2m", False)])
def test_dp_is_exact_by_brute_force(ring, solver, lof):
    T = TT.teacher(ring, n=16, grid_points=9)
    C1, C3 = _costs(ring, T, solver)
    for N in (1, 2, 3, 4):
        best = min(BS.path_cost(C1, C3, (0, *mid, T.G - 1), lof)
                   for mid in itertools.combinations(range(1, T.G - 1), N - 1))
        idx, cost = BS.solve_dp(C1, C3, N, lof)
        assert cost == pytest.approx(best, rel=1e-12) and BS.path_cost(C1, C3, idx, lof) == pytest.approx(cost, rel=1e-12)
        s = optimize(ring, "bound-step", N, solver, n=16, grid_points=9, lower_order_final=lof)
        assert s.meta["objective"] == pytest.approx(best, rel=1e-12) and s.meta["directions"] == "basis"
        np.testing.assert_array_equal(s.sigmas, T.grid[s.meta["grid_index"]])
    if solver == "dpmpp_2m":                               # the triplet cost does depend on the previous node
        assert float(C3[0, 3, 6]) != pytest.approx(float(C3[2, 3, 6]), rel=1e-3)


def test_euler_costs_are_bound_props_vector_costs(gauss):
    """Same adjoints (the Euler sweep, random directions), ``aggregate="mean"``: bound-step's Euler pair costs
    are bound-prop's ``inner="vector"`` costs — both are the exact teacher Euler jump, projected."""
    T = TT.teacher(gauss, n=32, grid_points=48)
    adj = TT.adjoints(gauss, T, m=3, seed=2)
    C1, C3 = BS.step_costs(T, "euler", adj, aggregate="mean")
    Cv = bound.prop_pair_costs(T, adj, "vector")
    fin = torch.isfinite(Cv)
    assert C3 is None and torch.equal(fin, torch.isfinite(C1))
    torch.testing.assert_close(C1[fin], Cv[fin], rtol=1e-6, atol=1e-12)


def test_unsupported_solvers_and_bad_options(gauss):
    for name in ("dpmpp_3m", "unipc", "heun", "ipndm"):
        with pytest.raises(ValueError, match=r"\['ddim', 'dpmpp_2m', 'euler'\]"):
            optimize(gauss, "bound-step", 4, name, n=8, grid_points=16)
    with pytest.raises(ValueError, match="aggregate"):
        optimize(gauss, "bound-step", 4, n=8, grid_points=16, aggregate="max")
    with pytest.raises(ValueError, match="steps"):
        optimize(gauss, "bound-step", 16, n=8, grid_points=16)
    with pytest.raises(ValueError, match="lower_order_final"):
        BS.bound_step(gauss, 4, "dpmpp_2m", n=8, grid_points=16, lower_order_final=1)
    s = optimize(gauss, "bound-step", 4, "ddim", n=8, grid_points=16)
    assert s.meta["method"] == "bound-step" and s.meta["family"] == "pairs" and math.isfinite(s.meta["objective"])
    assert s.sigmas[0] == pytest.approx(80.0) and s.sigmas[-1] == pytest.approx(0.002)
