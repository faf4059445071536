"""DDIM-η, DDPM ancestral, Heun churn, DPM-Solver++ 2M/3M, UniPC, iPNDM, SA-Solver (docs/math.md §2, §6).

Evidence: convergence orders against the closed-form PF-ODE solution on Gaussian data, exact identities
between solvers, coefficient checks by quadrature, NFE = counted calls, distribution checks for the
stochastic samplers, error paths, and gradients with respect to the schedule.
"""
import math

import numpy as np
import pytest
import torch

from dpmsched import Schedule, data, solvers
from dpmsched.denoisers.exact import Gaussian

KS = (8, 16, 32, 64)


def _z(n=64, seed=0, dim=1):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _measured_order(name, ks=KS, **opts):
    """Least-squares slope of log max-error vs log N (default N = 8..64), Karras ρ = 7, data N(0, 1)."""
    den, z = Gaussian(1.0, dim=1), _z()
    exact = den.ode_solution(80.0 * z, 80.0, 0.002)
    errs = [float((solvers.get(name)(den, 80.0 * z, Schedule.karras(k), **opts) - exact).abs().max()) for k in ks]
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:])), errs
    return -np.polyfit(np.log(ks), np.log(errs), 1)[0]


@pytest.mark.parametrize("name,opts", [
    ("euler", {}), ("ddim", {}), ("heun", {}), ("dpmpp_2m", {}), ("dpmpp_3m", {}),
    ("unipc", {"order": 1}), ("unipc", {"order": 2}), ("unipc", {"order": 3}),
    ("unipc", {"order": 3, "variant": "bh2"}), ("unipc", {"order": 2, "corrector": False}),
    ("sa_solver", {"tau": 0.0}), ("sa_solver", {"tau": 0.0, "predictor_order": 1, "corrector_order": 2}),
], ids=lambda v: str(v))
def test_convergence_order_matches_theory(name, opts):
    p = _measured_order(name, **opts)
    assert abs(p - solvers.solver_order(name, **opts)) < 0.3, (name, opts, p)


@pytest.mark.parametrize("max_order", [1, 2, 3, 4])
def test_ipndm_order_on_karras(max_order):
    # iPNDM's coefficients assume equal steps: on the graded Karras grid it is second order at best
    # (measured slopes → 2.01 up to N = 256).  N = 8 is pre-asymptotic for max_order 3 (the error
    # grows 8 → 16), so this fit starts at 16.
    assert abs(_measured_order("ipndm", ks=(16, 32, 64, 128), max_order=max_order) - min(max_order, 2)) < 0.3


def test_solver_order_values():
    assert [solvers.solver_order(n) for n in ("euler", "ddim", "heun", "dpmpp_2m", "dpmpp_3m", "rk4")] == [1, 1, 2, 2, 3, 4]
    assert solvers.solver_order("unipc", order=2) == 3 and solvers.solver_order("unipc", order=2, corrector=False) == 2
    assert solvers.solver_order("sa_solver") == 4 and solvers.solver_order("sa_solver", corrector_order=0) == 3
    assert solvers.solver_order("DPM++-2M") == 2


def test_nfe_and_order_reject_unknown_options():
    # a typo or a bad value must not give a silently wrong count or order
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['eta'\] for solver 'euler'"):
        solvers.nfe("euler", 10, eta=1.0)
    with pytest.raises(ValueError, match="mode"):
        solvers.nfe("sa_solver", 10, mode="many")
    with pytest.raises(ValueError, match="order"):
        solvers.solver_order("unipc", order=7)
    with pytest.raises(ValueError, match="corrector"):
        solvers.solver_order("unipc", corrector="no")
    with pytest.raises(ValueError, match="unknown option"):
        solvers.nfe("dpmpp_2m", Schedule.karras(5), order=3)
    # every option a solver takes is accepted, the generator included
    assert solvers.nfe("sa_solver", 5, tau=0.5, generator=torch.Generator(), mode="more_steps") == 6
    assert solvers.nfe("heun", 5, s_churn=1.0, final_zero=True) == 9


# -- identities ------------------------------------------------------------------------------------
def _same(a_name, a_opts, b_name, b_opts, steps=(3, 5, 10), tol=1e-10):
    den, z = data.mixture_2d("ring"), 80.0 * _z(32, dim=2)
    for k in steps:
        for s in (Schedule.karras(k), Schedule.uniform_logsnr(k)):
            a = solvers.get(a_name)(den, z, s, **a_opts)
            b = solvers.get(b_name)(den, z, s, **b_opts)
            assert float((a - b).abs().max()) < tol, (a_name, a_opts, b_name, b_opts, k)


def test_ddim_eta0_is_euler():
    _same("ddim", {"eta": 0.0}, "euler", {})


def test_unipc_order1_without_corrector_is_ddim():
    _same("unipc", {"order": 1, "corrector": False}, "ddim", {})


def test_unipc_bh2_order2_predictor_is_dpmpp_2m():
    _same("unipc", {"order": 2, "variant": "bh2", "corrector": False}, "dpmpp_2m", {})


def test_sa_solver_tau0_identities():
    # predictor only, order 1: the DPM-Solver++(1) / DDIM update
    _same("sa_solver", {"tau": 0.0, "predictor_order": 1, "corrector_order": 0}, "euler", {})
    # order-2 predictor with the App. D rescaling = UniP-2 with B(h) = h
    _same("sa_solver", {"tau": 0.0, "predictor_order": 2, "corrector_order": 0},
          "unipc", {"order": 2, "variant": "bh1", "corrector": False})
    # predictor p with corrector p + 1 = UniPC-p bh1 (p = 1 rescaled, p = 3 exact Adams weights)
    for p in (1, 3):
        _same("sa_solver", {"tau": 0.0, "predictor_order": p, "corrector_order": p + 1},
              "unipc", {"order": p, "variant": "bh1"})


@pytest.mark.parametrize("tau", [0.0, 0.7, 1.5])
def test_sa_coefficients_are_exponential_lagrange_integrals(tau):
    """c_j = (1+τ²)∫_{−h}^0 e^{(1+τ²)u} ℓ_j(u) du, checked by 64-point Gauss–Legendre quadrature (§6.2)."""
    g, w = np.polynomial.legendre.leggauss(64)
    a = 1.0 + tau**2
    for h, nodes in [(0.3, [-0.3, -0.55, -0.9, -1.4]), (2.0, [0.0, -2.0, -2.7]), (0.01, [-0.01, -0.02])]:
        c = solvers.sa_coefficients([torch.tensor(u, dtype=torch.float64) for u in nodes],
                                    torch.tensor(h, dtype=torch.float64), tau)
        u = 0.5 * h * (g - 1.0)                       # quadrature nodes on [−h, 0]
        for j, uj in enumerate(nodes):
            ell = np.prod([(u - uk) / (uj - uk) for k, uk in enumerate(nodes) if k != j], axis=0)
            ref = a * 0.5 * h * np.sum(w * np.exp(a * u) * ell)
            assert float(c[j]) == pytest.approx(ref, rel=1e-10, abs=1e-14)
        assert float(sum(c)) == pytest.approx(-math.expm1(-a * h), rel=1e-12)   # Σ c_j = 1 − e^{−(1+τ²)h}


# -- NFE, callbacks, final zero ---------------------------------------------------------------------
ALL = [("euler", {}), ("ddim", {"eta": 0.5}), ("ddpm_ancestral", {}), ("heun", {}), ("heun", {"s_churn": 10.0}),
       ("dpmpp_2m", {}), ("dpmpp_3m", {}), ("unipc", {}), ("unipc", {"variant": "bh2", "order": 2}),
       ("ipndm", {}), ("sa_solver", {}), ("sa_solver", {"mode": "more_steps"})]


STOCHASTIC = {"ddim", "ddpm_ancestral", "heun", "sa_solver"}


@pytest.mark.parametrize("name,opts", ALL, ids=lambda v: str(v))
def test_nfe_counts_calls_and_callback(name, opts):
    den = data.mixture_2d("ring")
    calls, seen = [], []

    def counting(x, s):
        calls.append(1)
        return den(x, s)

    x = 80.0 * _z(4, dim=2)
    for s in (Schedule.karras(5), Schedule.karras(5).with_final_zero(), Schedule.karras(1)):
        for dz in (False, True):
            if dz and s.has_final_zero:
                continue
            calls.clear(), seen.clear()
            kw = dict(opts, generator=torch.Generator().manual_seed(0)) if name in STOCHASTIC else opts
            out = solvers.get(name)(counting, x, s, callback=seen.append, denoise_to_zero=dz, **kw)
            assert len(calls) == solvers.nfe(name, s, denoise_to_zero=dz, **opts), (s, dz)
            assert torch.isfinite(out).all()
            if name != "heun":                      # Heun's corrector calls are off the callback
                assert len(seen) == len(calls)
            if s.has_final_zero and name not in ("heun", "ipndm"):
                assert torch.equal(out, seen[-1]["denoised"])   # the jump to σ = 0 is x ← D


def test_stochastic_solvers_are_reproducible():
    den, x = data.mixture_2d("ring"), 80.0 * _z(16, dim=2)
    s = Schedule.karras(6)
    for name, opts in [("ddim", {"eta": 1.0}), ("ddpm_ancestral", {}), ("heun", {"s_churn": 20.0}),
                       ("sa_solver", {"tau": 1.0})]:
        a = solvers.get(name)(den, x, s, generator=torch.Generator().manual_seed(3), **opts)
        b = solvers.get(name)(den, x, s, generator=torch.Generator().manual_seed(3), **opts)
        c = solvers.get(name)(den, x, s, generator=torch.Generator().manual_seed(4), **opts)
        assert torch.equal(a, b) and not torch.equal(a, c), name


@pytest.mark.parametrize("name,opts", [("ddpm_ancestral", {}), ("ddim", {"eta": 0.5}),
                                       ("sa_solver", {"tau": 1.0, "tau_window": None}),
                                       ("sa_solver", {"tau": 0.6, "predictor_order": 2, "corrector_order": 2}),
                                       ("heun", {"s_churn": 40.0})], ids=str)
def test_stochastic_solvers_sample_the_data_distribution(name, opts):
    """Gaussian data N(0, c²): with many steps the output std must be c and the mean 0 (n = 20000)."""
    c = 0.5
    den = Gaussian(c, dim=1)
    z = _z(20000, seed=1)
    s = Schedule.karras(200)
    out = solvers.get(name)(den, 80.0 * z, s, generator=torch.Generator().manual_seed(2), **opts)
    assert float(out.std()) == pytest.approx(c, rel=0.03)
    assert abs(float(out.mean())) < 4 * c / math.sqrt(z.shape[0])
    # and it is not the ODE map of z: the noise was injected
    assert float((out - den.ode_solution(80.0 * z, 80.0, 0.002)).abs().mean()) > 0.05 * c


# -- errors and gradients ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,opts,match", [
    ("ddim", {"eta": -1.0}, "eta"), ("unipc", {"order": 4}, "order"), ("unipc", {"variant": "bh3"}, "variant"),
    ("unipc", {"corrector": "yes"}, "corrector"), ("dpmpp_2m", {"lower_order_final": 1}, "lower_order_final"),
    ("ipndm", {"max_order": 5}, "max_order"), ("sa_solver", {"predictor_order": 0}, "predictor_order"),
    ("sa_solver", {"corrector_order": 5}, "corrector_order"), ("sa_solver", {"tau": -0.1}, "tau"),
    ("sa_solver", {"mode": "many"}, "mode"), ("sa_solver", {"tau_window": (5.0, 1.0)}, "tau_window"),
    ("heun", {"s_churn": -1.0}, "s_churn"),
])
def test_bad_options_raise(name, opts, match):
    with pytest.raises(ValueError, match=match):
        solvers.get(name)(lambda x, s: x, torch.zeros(2, 2), Schedule.karras(3), **opts)


@pytest.mark.parametrize("name", ["ddim", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm", "sa_solver"])
def test_nan_state_raises_with_step(name):
    def bad(x, s):
        return x * float("nan") if float(s) < 1.0 else x * 0

    with pytest.raises(FloatingPointError, match=r"step \d"):
        solvers.get(name)(bad, 80.0 * _z(4, dim=2), Schedule([80.0, 5.0, 0.5, 0.05, 0.01]))


@pytest.mark.parametrize("name,opts", [("dpmpp_3m", {}), ("unipc", {}), ("sa_solver", {"tau": 0.0}),
                                       ("ipndm", {}), ("ddim", {"eta": 0.0})], ids=str)
def test_differentiable_in_the_schedule(name, opts):
    den = Gaussian(0.5, dim=1)
    z = _z(16)
    exact = den.ode_solution(80.0 * z, 80.0, 0.002)
    base = Schedule.karras(5).sigmas

    def loss(mid):
        s = torch.cat([torch.tensor([80.0], dtype=torch.float64), mid, torch.tensor([0.002], dtype=torch.float64)])
        return ((solvers.get(name)(den, 80.0 * z, s, **opts) - exact) ** 2).mean()

    mid = torch.tensor(base[1:-1], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(loss(mid), mid)
    for j in range(mid.numel()):
        e = torch.zeros_like(mid)
        e[j] = 1e-6 * base[j + 1]
        fd = (loss(mid.detach() + e) - loss(mid.detach() - e)) / (2 * e[j])
        assert float(g[j]) == pytest.approx(float(fd), rel=1e-4, abs=1e-12)


def test_float32_state_stays_float32():
    den = Gaussian(0.5, dim=1)
    for name in ("dpmpp_3m", "unipc", "sa_solver", "ipndm"):
        assert solvers.get(name)(den, 80.0 * _z(4).float(), Schedule.karras(4)).dtype == torch.float32


# -- the sample command -------------------------------------------------------------------------------
def test_sample_cli_matches_direct_call(tmp_path, capsys):
    from safetensors.torch import load_file

    from dpmsched.cli import main

    out = tmp_path / "s.npz"
    assert main(["sample", "--model", "toy2d-ring", "--solver", "dpmpp_3m", "--steps", "6", "--n", "50",
                 "--batch", "16", "--seed", "3", "--out", str(out)]) == 0
    got = np.load(out)["samples"]
    s = Schedule.karras(6)
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    want = solvers.dpmpp_3m(data.mixture_2d("ring"), 80.0 * z, s)
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-12)       # batching does not change samples
    # a schedule file, a stochastic solver with an option, safetensors output
    sched = tmp_path / "k.json"
    sched.write_text(Schedule.karras(5, rho=3.0).to_json())
    out2 = tmp_path / "s.safetensors"
    assert main(["sample", "--model", "toy2d-ring", "--solver", "sa_solver", "--schedule", str(sched),
                 "--opt", "tau=0.5", "--n", "8", "--out", str(out2)]) == 0
    assert load_file(out2)["samples"].shape == (8, 2)
    # --baseline is an alias of --schedule: a non-default baseline over the model's sigma range
    out3 = tmp_path / "u.npy"
    assert main(["sample", "--model", "toy2d-ring", "--baseline", "uniform-logsnr", "--steps", "5", "--n", "6",
                 "--out", str(out3)]) == 0
    from dpmsched.models import load

    m = load("toy2d-ring")
    s = Schedule.uniform_logsnr(5, sigma_min=float(m.sigma_min), sigma_max=float(m.sigma_max))
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    np.testing.assert_allclose(np.load(out3), solvers.euler(m, float(s.sigmas[0]) * z, s).numpy(), rtol=0, atol=1e-12)
    capsys.readouterr()
    before = out.read_bytes()
    for argv, msg in ((["--schedule", str(sched), "--steps", "7"], "contradicts"),
                      (["--solver", "magic", "--steps", "4"], "unknown solver 'magic'")):
        assert main(["sample", "--model", "toy2d-ring", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "dpmsched sample: error:" in err and msg in err and "Traceback" not in err
        assert out.read_bytes() == before                              # the old output is untouched
    with pytest.raises(SystemExit):
        main(["sample", "--model", "toy2d-ring", "--steps", "4", "--out", str(tmp_path / "x.txt")])
