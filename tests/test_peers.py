"""The peers: AYS (KLUB by DP), GITS, direct (LD3-style), hand-tuned baselines, the CLI.
(docs/math.md §8.1, §8.2, §8.4, §9.5)"""
import json
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from dpmsched import Schedule, solvers, theory
from dpmsched.cli.optimize import main as cli_optimize
from dpmsched.models import load
from dpmsched.optimize import ays as AYS
from dpmsched.optimize import bound, optimize
from dpmsched.optimize import teacher as TT
from dpmsched.optimize.direct import validation_teacher

C_STD = 0.5


@pytest.fixture(scope="module")
def gauss():
    return load("gauss1d")


def _klub_closed(sig, c=C_STD):
    """KLUB of a decreasing schedule on N(0, c²) data, Lemma 3.3 integrand, adaptive quadrature."""
    return sum(quad(lambda t: t**-3 * c**4 * (1 / (t * t + c * c) - 1 / (up * up + c * c)), dn, up, limit=200)[0]
               for up, dn in zip(sig[:-1], sig[1:]))


def test_klub_pair_costs_match_lemma_3_3(gauss):
    x0 = C_STD * torch.randn(4000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = Schedule.karras(31).sigmas
    C = AYS.klub_pair_costs(gauss, x0, grid, seed=0)
    for a, c in [(0, 5), (10, 20), (20, 31)]:
        ks = np.arange(a + 1, c + 1)
        want = sum(grid[k] ** -3 * C_STD**4 * (1 / (grid[k] ** 2 + C_STD**2) - 1 / (grid[a] ** 2 + C_STD**2))
                   * (grid[k - 1] - grid[k]) for k in ks)
        assert float(C[a, c]) == pytest.approx(want, rel=0.08)        # Monte Carlo over 4000 x0
    assert math.isinf(float(C[5, 0]))


def test_ays_dp_is_the_klub_optimum_not_the_tan_rule(gauss):
    """mode="dp" minimises the KLUB on the grid; on Gaussian data its KLUB is far below that of the
    tan rule (which optimises something else, see the next test)."""
    s = optimize(gauss, "ays", 4, mode="dp", n=64, grid_points=96)
    tan = AYS.gaussian_schedule(4, C_STD)
    k_ays, k_tan = _klub_closed(s.sigmas), _klub_closed(tan.sigmas)
    assert k_ays < 0.05 * k_tan
    # exact optimality on the grid: moving any interior point to a neighbouring grid point never
    # lowers the DP's own (MC) objective
    x0 = C_STD * torch.randn(512, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = Schedule.karras(47).sigmas
    C = AYS.klub_pair_costs(gauss, x0, grid, seed=0).numpy()
    d = TT.dp_schedule(C, grid, 4, "ays")
    idx = list(d.meta["grid_index"])
    cost = sum(C[a, b] for a, b in zip(idx[:-1], idx[1:]))
    assert d.meta["objective"] == pytest.approx(cost, rel=1e-12)
    for i in range(1, 4):
        for step in (-1, 1):
            p = idx.copy()
            p[i] += step
            if p[i - 1] < p[i] < p[i + 1]:
                assert sum(C[a, b] for a, b in zip(p[:-1], p[1:])) >= cost - 1e-12


def test_klub_interval_is_alg2_with_the_normaliser(gauss):
    """AYS Alg. 2 (importance sampling from π, weights times π's normaliser) on N(0, c²) data gives the
    closed-form interval KLUB (Lemma 3.3) for intervals of very different size."""
    x0 = C_STD * torch.randn(4000, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    draws = AYS.KLUBDraws(x0, seed=0)
    for lo, up in [(0.002, 0.01), (0.05, 0.6), (0.3, 4.0), (2.0, 80.0)]:
        got = AYS.klub_interval(gauss, draws, lo, up)
        assert got == pytest.approx(_klub_closed([up, lo]), rel=0.08)    # MC over 4000 x0 (χ²₁: ±2.2 %)
    with pytest.raises(ValueError, match="lo < up"):
        AYS.klub_interval(gauss, draws, 1.0, 0.5)


def test_ays_paper_mode_hierarchy_interpolation_and_descent(gauss):
    x0 = C_STD * torch.randn(2000, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    # no passes: the 40-step schedule is Karras-10 subdivided twice, and 10 steps read it back exactly
    s0 = AYS.ays(gauss, 10, data=x0, sweeps=(0, 0, 0))
    np.testing.assert_allclose(s0.sigmas, Schedule.karras(10).sigmas, rtol=1e-12)
    np.testing.assert_allclose(s0.meta["schedule40"], AYS.subdivide(AYS.subdivide(Schedule.karras(10).sigmas)),
                               rtol=1e-12)
    np.testing.assert_allclose(AYS.loglinear_interp(s0.meta["schedule40"], 40), s0.meta["schedule40"], rtol=1e-12)
    s = AYS.ays(gauss, 5, data=x0, sweeps=(3, 1, 1))
    assert [len(h) for h in s.meta["history"]][0] <= 4 and all(len(h) <= 2 for h in s.meta["history"][1:])
    for h in s.meta["history"]:                                    # coordinate descent on paired draws
        assert all(b <= a + 1e-12 for a, b in zip(h[:-1], h[1:]))
    assert s.sigmas[0] == 80.0 and s.sigmas[-1] == 0.002 and len(s.sigmas) == 6
    # the true (closed-form) KLUB of the 40-step schedule went down, not just the MC estimate
    assert _klub_closed(s.meta["schedule40"]) < 0.9 * _klub_closed(s0.meta["schedule40"])
    with pytest.raises(ValueError, match="mode"):
        AYS.ays(gauss, 5, data=x0, mode="x")
    with pytest.raises(ValueError, match="sweeps"):
        AYS.ays(gauss, 5, data=x0, sweeps=(1, 1))


def test_tan_rule_is_euler_optimal_on_gaussian_data(gauss):
    """Euler on N(0, c²) = exact flow × Π cos Δθ (θ = atan(σ/c)); equal Δθ (AYS Thm 3.1) is optimal,
    and ``direct`` (measured-error minimisation, held-out noise) recovers it."""
    z = torch.randn(8, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for s in (Schedule.karras(5), AYS.gaussian_schedule(5, C_STD), Schedule.uniform_logsnr(3)):
        x = solvers.euler(gauss, s.sigmas[0] * z, s)
        exact = s.sigmas[0] * z * math.sqrt(s.sigmas[-1] ** 2 + C_STD**2) / math.sqrt(s.sigmas[0] ** 2 + C_STD**2)
        torch.testing.assert_close(x, exact * AYS.euler_gaussian_factor(s, C_STD), rtol=1e-12, atol=0)
    tan = AYS.gaussian_schedule(3, C_STD)
    assert AYS.euler_gaussian_factor(tan) > AYS.euler_gaussian_factor(Schedule.karras(3))
    zr, xr = TT.reference_endpoints(gauss, n=64, seed=1)
    d = optimize(gauss, "direct", 3, n=32, grid_points=48, iters=20, polish=150)
    e_direct, e_tan = TT.endpoint_error(gauss, d, zr, xr), TT.endpoint_error(gauss, tan, zr, xr)
    e_huang = TT.endpoint_error(gauss, theory.gaussian_optimal_schedule(3, C_STD), zr, xr)
    assert e_direct <= e_tan * (1 + 1e-3) and e_tan < e_huang
    np.testing.assert_allclose(np.log(d.sigmas), np.log(tan.sigmas), atol=0.05)


def test_gits_objective_is_the_discounted_jump_cost_and_optimal():
    ring = load("toy2d-ring")
    T = TT.teacher(ring, n=32, grid_points=40)
    C = bound.jump_costs(T).numpy()
    s = optimize(ring, "gits", 4, n=32, grid_points=40, discount=1.15)
    idx = s.meta["grid_index"]
    cost = sum(1.15**e * C[a, b] for e, (a, b) in enumerate(zip(idx[:-1], idx[1:])))
    assert s.meta["objective"] == pytest.approx(cost, rel=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(50):                                                # DP ≤ random valid paths
        mid = np.sort(rng.choice(np.arange(1, 39), size=3, replace=False))
        p = [0, *mid, 39]
        assert cost <= sum(1.15**e * C[a, b] for e, (a, b) in enumerate(zip(p[:-1], p[1:]))) + 1e-12
    assert s.sigmas[0] == T.grid[0] and s.sigmas[-1] == T.grid[-1]


def test_hand_tuned_is_the_best_of_its_scan():
    ring = load("toy2d-ring")
    h = optimize(ring, "hand-tuned", 4, n=32, grid_points=40)
    k = optimize(ring, "karras-tuned", 4, n=32, grid_points=40)
    assert h.meta["objective"] == min(h.meta["scan"].values())
    assert h.meta["objective"] <= k.meta["objective"] and "uniform-logsnr" in h.meta["scan"]
    T = TT.teacher(ring, n=32, grid_points=40)
    assert TT.endpoint_error(ring, k, T.z, T.x[-1]) == pytest.approx(k.meta["objective"], rel=1e-12)
    assert k.meta["rho"] == float(k.meta["choice"].split("-")[1])


def test_direct_fits_training_noise_and_generalises():
    ring = load("toy2d-ring")
    d = optimize(ring, "direct", 4, n=64, grid_points=48, iters=20, polish=80)
    k = optimize(ring, "karras", 4)
    T = TT.teacher(ring, n=64, grid_points=48)
    assert d.meta["train_rmse"] == pytest.approx(TT.endpoint_error(ring, d, T.z, T.x[-1]), rel=1e-9)
    assert d.meta["train_rmse"] < TT.endpoint_error(ring, k, T.z, T.x[-1])
    zr, xr = TT.reference_endpoints(ring, n=128, seed=1)
    assert TT.endpoint_error(ring, d, zr, xr) < TT.endpoint_error(ring, k, zr, xr)
    with pytest.raises(ValueError, match="init"):
        optimize(ring, "direct", 4, n=8, grid_points=16, init="bad")
    with pytest.raises(ValueError, match="4 steps"):
        optimize(ring, "direct", 4, n=8, grid_points=16, init=Schedule.karras(3))
    h = optimize(ring, "hand-tuned", 4, n=64, grid_points=48)
    d2 = optimize(ring, "direct", 4, n=64, grid_points=48, iters=5, polish=30, init=h)
    assert d2.meta["train_rmse"] <= h.meta["objective"] * (1 + 1e-9) and d2.meta["init"] == "schedule:hand-tuned"


def test_cli_optimize_writes_schedule_json(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert cli_optimize(["--model", "gauss1d", "--method", "ots", "--steps", "4", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert len(d["sigmas"]) == 5 and d["sigmas"][0] == 80.0 and d["meta"]["method"] == "ots"
    with pytest.raises(ValueError, match="unknown method"):
        optimize("gauss1d", "nope", 4)


@pytest.mark.parametrize("opt,msg", [("refine=no", "refine='no' of method 'huang' must be a bool"),
                                     ("n=8.7", "n=8.7 of method 'huang' must be a int"),
                                     ("nn=3", "unknown option 'nn' for method 'huang'; valid options: n=128")])
def test_optimize_refuses_mistyped_or_unknown_options(tmp_path, capsys, opt, msg):
    from dpmsched.cli import main

    out = tmp_path / "s.json"
    assert main(["optimize", "--model", "toy2d-ring", "--method", "huang", "--steps", "3", "--opt", opt,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("method", ["karras", "uniform-t", "huang", "gits"])
def test_optimize_refuses_an_unknown_solver_for_every_method(method):
    with pytest.raises(ValueError, match="unknown solver 'foo'"):
        optimize("toy2d-ring", method, 3, solver="foo")


def test_direct_best_start_is_no_worse_than_any_of_its_starts_on_training():
    ring = load("toy2d-ring")
    common = {"n": 32, "grid_points": 32}
    d = optimize(ring, "direct", 4, **common, iters=3, polish=20, init="best")
    T = TT.teacher(ring, **common)
    starts = {m: TT.endpoint_error(ring, optimize(ring, m, 4, **common), T.z, T.x[-1])
              for m in ("hand-tuned", "gits", "bound-prop")}
    assert d.meta["init"].split(":")[1] == min(starts, key=starts.get)
    assert d.meta["train_rmse"] <= min(starts.values()) * (1 + 1e-9)


@pytest.mark.parametrize("steps", [3, 4, 6])
def test_direct_limit_on_gaussian_data_is_no_worse_than_the_closed_form_optimum(steps):
    """On N(0, c²) data the optimum of the bound is known in closed form (docs/math.md §3.6); the limit, which
    minimises the measured error itself, must not be worse on held-out noise (measured: 0.58-0.67× of it)."""
    g = load("gauss1d")
    closed = theory.gaussian_optimal_schedule(steps, g.std)
    d = optimize(g, "direct", steps, n=64, grid_points=48, iters=20, polish=80, init="best")
    zr, xr = TT.reference_endpoints(g, n=256, seed=1)
    e_closed, e_direct = (TT.endpoint_error(g, s, zr, xr) for s in (closed, d))
    assert e_direct <= e_closed
    assert e_direct <= TT.endpoint_error(g, Schedule.karras(steps, g.sigma_min, g.sigma_max), zr, xr)


@pytest.mark.parametrize("solver,batch,val_grid", [("euler", 0, 0), ("dpmpp_2m", 8, 12)])
def test_validated_direct_is_no_worse_than_its_start_on_its_validation_latents(solver, batch, val_grid):
    """``n_val`` > 0: the limit of the image benchmarks — early-stopped on validation latents of its own seed, it
    returns the best validation checkpoint, the start included, and reports that checkpoint's errors."""
    ring = load("toy2d-ring")
    start = Schedule.karras(4, ring.sigma_min, ring.sigma_max, rho=3.0)
    d = optimize(ring, "direct", 4, solver, n=32, grid_points=24, iters=10, polish=30, n_val=32, val_seed=5,
                 batch=batch, init=start, val_grid_points=val_grid)     # 12: a coarser validation teacher
    T, V = TT.teacher(ring, n=32, grid_points=24), validation_teacher(ring, 32, 5, 24, val_grid)
    assert d.meta["val_grid_points"] == (val_grid or 24) == V.G
    assert d.meta["val_rmse"] == pytest.approx(TT.endpoint_error(ring, d, V.z, V.x[-1], solver), rel=1e-9)
    assert d.meta["train_rmse"] == pytest.approx(TT.endpoint_error(ring, d, T.z, T.x[-1], solver), rel=1e-9)
    assert d.meta["val_rmse"] <= TT.endpoint_error(ring, start, V.z, V.x[-1], solver)
    assert d.meta["polished"] == (d.meta["val_rmse"] < TT.endpoint_error(ring, start, V.z, V.x[-1], solver))
    assert d.meta["batch"] == (batch or 32) and d.meta["init"] == "schedule:karras"
    if not d.meta["polished"]:                                       # nothing beat the start: it is the start, exactly
        assert np.array_equal(d.sigmas, start.sigmas)


def test_validated_direct_refuses_its_training_seed_and_a_negative_batch_before_any_work():
    with pytest.raises(ValueError, match="val_seed must differ"):
        optimize("toy2d-ring", "direct", 3, n=8, grid_points=12, seed=4, n_val=8, val_seed=4)
    with pytest.raises(ValueError, match="batch must be ≥ 0"):
        optimize("toy2d-ring", "direct", 3, n=8, grid_points=12, n_val=8, batch=-2)
    with pytest.raises(ValueError, match="val_grid_points must be 0"):
        optimize("toy2d-ring", "direct", 3, n=8, grid_points=12, n_val=8, val_grid_points=1)
