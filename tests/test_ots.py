"""OTS (Xue et al.; docs/math.md §4.2–4.3, §4.8, §9.5)."""
import math

import numpy as np
import pytest
from scipy.integrate import quad

from dpmsched import Schedule
from dpmsched.optimize import optimize
from dpmsched.optimize.ots import j_coefficients, ots, ots_objective
from dpmsched.solvers import solver_order


def _lagrange(nodes, j, lam):
    out = 1.0
    for i, n in enumerate(nodes):
        if i != j:
            out *= (lam - n) / (nodes[j] - n)
    return out


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_j_coefficients_match_quadrature_and_sum(order, seed):
    rng = np.random.default_rng(seed)
    lam = np.cumsum(np.concatenate([[-4.0], rng.uniform(0.2, 2.5, size=5)]))
    s = 3
    J = j_coefficients(lam, s, order)
    nodes = lam[s - order + 1:s + 1]
    for j in range(order):
        q, _ = quad(lambda l: math.exp(l) * _lagrange(nodes, j, l), lam[s], lam[s + 1], epsabs=0, epsrel=1e-12)
        assert J[j] == pytest.approx(q, rel=1e-9, abs=1e-12)
    assert sum(J) == pytest.approx(math.exp(lam[s + 1]) - math.exp(lam[s]), rel=1e-12)


def test_j_coefficients_reject_missing_nodes():
    with pytest.raises(ValueError, match="order"):
        j_coefficients([0.0, 1.0, 2.0], 0, 2)


def test_regression_section_4_8():
    """Our port reproduces docs/math.md §4.8 (N = 5, 6; p = 1, order 3, uniform-λ init)."""
    for N, want in [(5, [80, 3.063, 1.114, 0.3737, 0.0723, 0.002]),
                    (6, [80, 4.456, 1.303, 0.6462, 0.2176, 0.0520, 0.002])]:
        s = ots(None, N, "dpmpp_3m")
        np.testing.assert_allclose(s.sigmas, want, rtol=2e-3)
        assert s.meta["order"] == 3 and s.meta["objective"] < s.meta["objective_init"]
    assert ots(None, 5, "dpmpp_3m").meta["objective"] == pytest.approx(102.2, abs=0.05)
    assert ots_objective(Schedule.uniform_logsnr(5).lambdas, 3) == pytest.approx(428.6, abs=0.05)


def test_euler_objective_is_sum_of_ratios_and_optimum_is_uniform_logsnr():
    s = Schedule.karras(6)
    want = np.sum(s.sigmas[:-1] / s.sigmas[1:] - 1.0)
    assert ots_objective(s.lambdas, order=1) == pytest.approx(want, rel=1e-12)
    o = optimize("gauss1d", "ots", 6, solver="euler")
    np.testing.assert_allclose(o.sigmas, Schedule.uniform_logsnr(6).sigmas, rtol=2e-3)


def test_orders_follow_the_solver():
    assert solver_order("euler") == 1 and solver_order("dpmpp_2m") == 2 and solver_order("dpmpp_3m") == 3
    assert ots(None, 5, "dpmpp_2m").meta["order"] == 2
    with pytest.raises(ValueError):
        solver_order("nope")
