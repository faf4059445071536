import math

import numpy as np
import pytest
import torch

from dpmsched import Schedule, data, solvers, theory
from dpmsched.denoisers.exact import Empirical, Gaussian


@pytest.mark.parametrize("which", ["gmm", "empirical"])
@pytest.mark.parametrize("sched", [Schedule.karras(5), Schedule.uniform_logsnr(9),
                                   Schedule([80.0, 3.0, 0.5, 0.01]), Schedule.karras(4).with_final_zero()])
def test_convex_identity(which, sched):
    """x_N = (σ_N/σ_0)·x_0 + Σ w_i D_i to 1e-10 in float64 (§2.1, §3.1)."""
    g = torch.Generator().manual_seed(0)
    if which == "gmm":
        den, shape = data.mixture_2d("ring"), (64, 2)
    else:
        den, shape = Empirical(data.digits("train", dtype=torch.float64)), (32, 1, 8, 8)
    x_init = sched.sigmas[0] * torch.randn(shape, generator=g, dtype=torch.float64)
    outs = []
    xN = solvers.euler(den, x_init, sched, callback=lambda d: outs.append(d["denoised"]))
    a, w = theory.convex_weights(sched)
    assert np.all(w >= 0) and abs(a + w.sum() - 1.0) < 1e-14
    rhs = theory.euler_unrolled(sched, x_init, outs)
    assert float((xN - rhs).abs().max()) < 1e-10


def test_convex_weights_hand_values():
    a, w = theory.convex_weights([10.0, 2.0, 1.0])
    assert a == pytest.approx(0.1)
    np.testing.assert_allclose(w, [1.0 * (1 / 2 - 1 / 10), 1.0 * (1 - 1 / 2)])


def test_huang_toy_section_3_6():
    """docs/math.md §3.6: N = 8, c = 0.5, σ ∈ [0.002, 80]."""
    assert theory.gaussian_bound(Schedule.karras(8), 0.5) == pytest.approx(1.751, abs=5e-4)
    opt = theory.gaussian_optimal_schedule(8, 0.5)
    # to the digits docs/math.md gives: half a unit in the last printed place
    given = ["80", "1.140", "0.5245", "0.2918", "0.1628", "0.0833", "0.0356", "0.0112", "0.002"]
    for v, txt in zip(opt.sigmas, given):
        places = len(txt.split(".")[1]) if "." in txt else 0
        assert abs(v - float(txt)) <= 0.5 * 10.0**-places, (v, txt)
    assert opt.meta["bound"] == pytest.approx(0.549, abs=5e-4)
    e_abs_k = math.sqrt(2 / math.pi)
    assert theory.gaussian_bound(Schedule.karras(8)) * e_abs_k == pytest.approx(1.3973, abs=1e-4)
    tau, dtau = theory.gaussian_tau(0.5)
    lhs, rhs = theory.stationarity_residual(opt, tau, dtau)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4)
    assert lhs[0] == pytest.approx(0.19768, abs=2e-5)
    # and not stationary at a schedule that is not optimal
    lhs, rhs = theory.stationarity_residual(Schedule.karras(8), tau, dtau)
    assert np.max(np.abs(lhs / rhs - 1)) > 0.5


def test_quadrature_bound_matches_closed_form():
    tau, _ = theory.gaussian_tau(0.5, k=np.array([1.0, -2.0]))
    s = Schedule.karras(6)
    assert theory.bound_from_fn(s, tau) == pytest.approx(1.5 * theory.gaussian_bound(s), rel=1e-8)


def test_mc_bound_from_teacher_trajectories_converges():
    """bound_mc from stored RK4 trajectories of the exact Gaussian denoiser → the closed form."""
    c = 0.5
    den = Gaussian(c, dim=1)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 1, generator=g, dtype=torch.float64)
    grid = Schedule.karras(256)
    outs = []
    solvers.rk4(den, 80.0 * z, grid, callback=lambda d: outs.append(d["denoised"]))
    outs.append(den(solvers.rk4(den, 80.0 * z, grid), grid.sigmas[-1]))
    F = torch.stack(outs)                                     # (G, B, 1)
    s = Schedule.karras(8)
    # the per-trajectory latent k = x(σ)/√(σ²+c²) at the start
    k = (80.0 * z[:, 0] / math.sqrt(80.0**2 + c**2)).numpy()
    exact = theory.gaussian_bound(s, c) * np.abs(k).mean()
    assert theory.bound_mc(s, grid.sigmas, F) == pytest.approx(exact, rel=2e-3)
    # the grid pair costs give the right-Riemann sum; on a path of grid points it converges too
    C = theory.bound_pair_costs(grid.sigmas, F)
    idx = [int(np.argmin(np.abs(grid.sigmas - v))) for v in Schedule.karras(8).sigmas]
    assert theory.path_cost(C, idx) == pytest.approx(exact, rel=0.03)


def test_pair_costs_structure():
    g = torch.Generator().manual_seed(0)
    F = torch.randn(6, 10, 3, generator=g, dtype=torch.float64)
    grid = Schedule.karras(5).sigmas
    C = theory.bound_pair_costs(grid, F, batch=3)
    assert torch.isinf(C[torch.tril(torch.ones(6, 6, dtype=torch.bool))]).all()
    u = 1 / grid
    brute = sum(float((F[k] - F[1]).norm(dim=1).mean()) * (u[k] - u[k - 1]) for k in range(2, 5))
    assert float(C[1, 4]) == pytest.approx(brute, rel=1e-12)


def test_bound_needs_positive_sigma_min():
    with pytest.raises(ValueError, match="sigma_N = sigma_min > 0"):
        theory.gaussian_bound(Schedule.karras(4).with_final_zero())
