"""Watson et al.'s decomposed ELBO and exact DP (dpmsched.optimize.elbo; docs/math.md §7)."""
import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dpmsched import solvers
from dpmsched.data import digits
from dpmsched.denoisers.exact import Empirical, Gaussian
from dpmsched.noise import DiscreteVP
from dpmsched.optimize import elbo, elbo_dp
from dpmsched.schedules import Schedule

SMALL_T = DiscreteVP.linear(10, 1e-3, 0.5)      # a short table whose ᾱ_T is already small


@pytest.fixture(scope="module")
def digit_sets():
    x = digits("train", dtype=torch.float64)
    return x[:48], x[48:80]                       # model data, evaluation data (disjoint)


@pytest.fixture(scope="module")
def small_terms(digit_sets):
    y, x = digit_sets
    model = elbo.as_ddpm(Empirical(y), SMALL_T)
    return model, x, elbo.estimate_terms(model, x, seed=3)


# -- closed forms -------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(1e-4, 0.5), min_size=3, max_size=30), st.data())
def test_kappa_is_half_delta_snr_for_the_posterior_variance(betas, data):
    abar = elbo.alphas_bar(np.cumprod(1.0 - np.asarray(betas)))
    T = abar.size - 1
    s = data.draw(st.integers(1, T - 1))
    t = data.draw(st.integers(s + 1, T))
    c, kappa = elbo.edge_coefficients(abar, s, t, "small")
    snr = np.concatenate([[np.inf], abar[1:] / (1.0 - abar[1:])])
    assert c == 0.0
    assert kappa == pytest.approx(0.5 * (snr[s] - snr[t]), rel=1e-9)
    # "large": c is the KL between the two zero-mean Gaussians N(0, β̃) ‖ N(0, β) (≥ 0), κ scales by β̃/β
    beta, tilde = elbo.jump_variances(abar, s, t)
    c_l, kappa_l = elbo.edge_coefficients(abar, s, t, "large")
    assert c_l == pytest.approx(float(elbo.gaussian_kl(0.0, tilde, 0.0, beta)), rel=1e-9, abs=1e-15)
    assert kappa_l == pytest.approx(kappa * tilde / beta, rel=1e-9)


def test_edge_coefficients_reject_bad_input():
    abar = elbo.alphas_bar(SMALL_T)
    with pytest.raises(ValueError, match="variance"):
        elbo.edge_coefficients(abar, 1, 2, "medium")
    with pytest.raises(ValueError, match="1 <= s < t"):
        elbo.edge_coefficients(abar, 3, 3)
    with pytest.raises(ValueError, match="strictly decreasing"):
        elbo.alphas_bar(np.array([0.5, 0.7]))


@settings(max_examples=40, deadline=None)
@given(levels=st.integers(2, 40), mean=st.floats(-3, 3), logvar=st.floats(-12, 2))
def test_discretized_decoder_sums_to_one_over_the_levels(levels, mean, logvar):
    grid = torch.linspace(-1, 1, levels, dtype=torch.float64).reshape(-1, 1)
    nll = elbo.discretized_gaussian_nll(grid, torch.full_like(grid, mean), math.exp(logvar), levels)
    assert float(torch.exp(-nll).sum()) == pytest.approx(1.0, abs=1e-9)


def test_discretized_decoder_interior_bin_and_errors():
    from scipy.stats import norm

    x = torch.tensor([[0.25]], dtype=torch.float64)            # a 17-level value (bin ±1/16)
    nll = elbo.discretized_gaussian_nll(x, torch.tensor([[0.3]], dtype=torch.float64), 0.01, 17)
    assert float(nll) == pytest.approx(-math.log(norm.cdf(0.3125, 0.3, 0.1) - norm.cdf(0.1875, 0.3, 0.1)), rel=1e-12)
    # far in the tail the log-probability stays finite (no log(0))
    far = elbo.discretized_gaussian_nll(x, torch.tensor([[-0.9]]), 1e-4, 17)
    assert torch.isfinite(far).all() and float(far) > 1000
    with pytest.raises(ValueError, match="17-level grid"):
        elbo.discretized_gaussian_nll(torch.tensor([[0.3]]), torch.zeros(1, 1), 0.1, 17)
    with pytest.raises(ValueError, match="levels"):
        elbo.discretized_gaussian_nll(x, x, 0.1, 1)


# -- the O(T) table equals a direct per-pair evaluation -------------------------------------------------
@pytest.mark.parametrize("variance", elbo.VARIANCES)
def test_table_from_T_passes_equals_direct_per_pair_kl(small_terms, variance):
    model, x0, terms = small_terms
    abar, T = terms.abar, terms.T
    x0 = x0.double()
    flat = x0.reshape(x0.shape[0], -1)
    for t in range(1, T + 1):
        g = torch.Generator().manual_seed(elbo._step_seed(3, t))      # the estimator's noise for step t
        eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        x_t = math.sqrt(abar[t]) * x0 + math.sqrt(1 - abar[t]) * eps
        e_hat = model.eps(x_t, torch.full((x0.shape[0],), float(t - 1), dtype=torch.float64))
        x0_hat = ((x_t - math.sqrt(1 - abar[t]) * e_hat) / math.sqrt(abar[t])).clamp(-1, 1)
        for s in range(0, t):
            if s == 0:
                direct = elbo.discretized_gaussian_nll(x0, x0_hat, elbo.decoder_variance(abar, t), 17).mean()
            else:
                # q(x_s | x_t, x0) and p(x_s | x_t): the full Gaussian KL, no simplification
                beta = 1 - abar[t] / abar[s]
                c0 = math.sqrt(abar[s]) * beta / (1 - abar[t])
                c1 = math.sqrt(abar[t] / abar[s]) * (1 - abar[s]) / (1 - abar[t])
                var_q = beta * (1 - abar[s]) / (1 - abar[t])
                var_p = var_q if variance == "small" else beta
                mu_q = (c0 * x0 + c1 * x_t).reshape(flat.shape)
                mu_p = (c0 * x0_hat + c1 * x_t).reshape(flat.shape)
                direct = elbo.gaussian_kl(mu_q, var_q, mu_p, var_p).sum(1).mean()
            assert terms.edge_cost(s, t, variance) == pytest.approx(float(direct), rel=1e-9, abs=1e-12), (s, t)
    prior = elbo.gaussian_kl(math.sqrt(abar[T]) * flat, 1 - abar[T], 0.0, 1.0).sum(1).mean()
    assert terms.prior == pytest.approx(float(prior), rel=1e-12)


def test_mse_matches_the_closed_form_mmse_of_binary_data():
    # x0 = ±1 (1-D, equiprobable) with its exact denoiser: M(t) = 1 − E tanh(γ + √γ Z), γ = SNR_t
    y = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    x0 = y.repeat(2000, 1)
    noise = DiscreteVP.linear(1000)
    steps = np.array([200, 400, 600, 800, 1000])
    terms = elbo.estimate_terms(elbo.as_ddpm(Empirical(y), noise), x0, steps=steps, levels=2, clip=False, batch=4000)
    z, w = np.polynomial.hermite_e.hermegauss(80)
    for t in steps:
        g = terms.abar[t] / (1 - terms.abar[t])
        mmse = 1 - np.sum(w * np.tanh(g + np.sqrt(g) * z)) / np.sqrt(2 * np.pi)
        se = np.sqrt(2.0 / x0.shape[0]) * max(mmse, 1e-3) + 1e-4
        assert abs(terms.mse[t] - mmse) < 5 * se, (t, terms.mse[t], mmse)


def test_as_ddpm_reproduces_the_denoiser_at_the_table_levels():
    den = Gaussian(0.5, dim=3)
    noise = DiscreteVP.linear(1000)
    m = elbo.as_ddpm(den, noise)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for n in (0, 10, 500, 999):
        sig = float(noise.sigmas[n])
        assert torch.allclose(m(x * sig, sig), den(x * sig, sig), atol=1e-10)
    # and it is what models.load would give for an EDM model: a VPDenoiser with .eps and .noise
    assert m.noise is noise and m.prediction == "epsilon"


# -- the DP ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variance", elbo.VARIANCES)
def test_dp_equals_brute_force_over_all_paths(small_terms, variance):
    _, _, terms = small_terms
    T = terms.T
    res = elbo_dp.dp_paths(terms, range(1, T + 1), variance)
    for k in range(1, T + 1):
        best = min(terms.nelbo([0, *mid, T], variance) for mid in itertools.combinations(range(1, T), k - 1))
        path, value = res[k]
        assert value == pytest.approx(best, rel=1e-12)
        assert terms.nelbo(path, variance) == pytest.approx(best, rel=1e-12) and len(path) == k + 1


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_dp_not_worse_than_any_random_valid_path(small_terms, data):
    _, _, terms = small_terms
    T = terms.T
    k = data.draw(st.integers(1, T))
    mid = sorted(data.draw(st.lists(st.integers(1, T - 1), min_size=k - 1, max_size=k - 1, unique=True)))
    variance = data.draw(st.sampled_from(elbo.VARIANCES))
    assert elbo_dp.dp_paths(terms, [k], variance)[k][1] <= terms.nelbo([0, *mid, T], variance) + 1e-12


def test_dp_on_a_candidate_subset_and_budget_errors(digit_sets):
    y, x = digit_sets
    model = elbo.as_ddpm(Empirical(y), DiscreteVP.linear(1000))
    terms = elbo.estimate_terms(model, x[:8], steps=[1, 250, 500, 750])
    assert list(terms.steps) == [1, 250, 500, 750, 1000]          # T is always added
    res = elbo_dp.dp_paths(terms, [1, 2, 5])
    assert set(res[2][0]) <= {0, 1, 250, 500, 750, 1000} and list(res[5][0]) == [0, 1, 250, 500, 750, 1000]
    with pytest.raises(ValueError, match="budgets"):
        elbo_dp.dp_paths(terms, [6])
    with pytest.raises(ValueError, match="not evaluated"):
        terms.nelbo([0, 100, 1000])


def test_nelbo_of_the_exact_model_is_above_the_entropy_of_its_data(digit_sets):
    # the ideal denoiser of a set Y defines p_θ; on Y itself every path's −ELBO ≥ −E log p_θ ≥ log|Y|
    # (in expectation: the DP's paths are scored on fresh noise, since the noise they were chosen on
    # makes them optimistic — the §7.5 pitfall)
    y, _ = digit_sets
    y = y[:32]
    model, steps = elbo.as_ddpm(Empirical(y)), np.arange(10, 1001, 10).tolist() + [1]
    fit = elbo.estimate_terms(model, y, steps=steps, seed=0)
    fresh = elbo.estimate_terms(model, y.repeat(4, 1, 1, 1), steps=steps, seed=1)
    floor = math.log2(y.shape[0]) / fit.dim
    res = elbo_dp.dp_paths(fit, [1, 2, 4, 8, 32])
    for k in (1, 2, 4, 8):
        assert fresh.bits_per_dim(res[k][0]) > floor
    assert fresh.bits_per_dim(fresh.full_path()) < floor + 0.05        # near-tight with 101 steps
    assert res[1][1] > res[8][1] > res[32][1]


# -- paths, schedules, I/O --------------------------------------------------------------------------------
@pytest.mark.parametrize("T,K", [(1000, 2), (1000, 10), (1000, 64), (50, 50), (7, 3)])
def test_even_stride_is_the_iddpm_respacing(T, K):
    noise = DiscreteVP.linear(T) if T >= 2 else None
    respaced = Schedule.iddpm_respace(K, noise=noise).meta["timesteps"][::-1]
    assert list(elbo_dp.stride_path(T, K, 1.0)) == [0] + [n + 1 for n in respaced]


@settings(max_examples=80, deadline=None)
@given(T=st.integers(2, 2000), data=st.data(), power=st.floats(0.3, 4.0))
def test_stride_paths_are_valid(T, data, power):
    K = data.draw(st.integers(1, T))
    p = elbo_dp.stride_path(T, K, power)
    assert len(p) == K + 1
    elbo.check_path(p, T)


def test_quadratic_stride_is_dense_near_the_data():
    p = elbo_dp.stride_path(1000, 10, 2.0)
    assert np.all(np.diff(np.diff(p[1:])) >= 0) and p[2] - p[1] < p[-1] - p[-2]


def test_path_to_schedule():
    noise = DiscreteVP.linear(1000)
    s = elbo_dp.path_to_schedule([0, 1, 400, 1000], noise, meta={"bits_per_dim": 1.0})
    assert s.steps == 3 and s.has_final_zero
    assert np.array_equal(s.sigmas[:-1], noise.sigmas[[999, 399, 0]])
    assert s.meta["path"] == [0, 1, 400, 1000] and s.meta["timesteps"] == [999, 399, 0]
    assert Schedule.from_json(s.to_json()) == s
    for bad in ([1, 1000], [0, 500], [0, 500, 500, 1000], [0.0, 1000.0]):
        with pytest.raises(ValueError, match="path"):
            elbo_dp.path_to_schedule(bad, noise)


def test_terms_round_trip_and_bad_files(small_terms, tmp_path):
    _, _, terms = small_terms
    p = tmp_path / "t.json"
    terms.save(p)
    back = elbo.ELBOTerms.load(p)
    for a in ("abar", "mse", "decoder"):
        assert np.array_equal(getattr(back, a), getattr(terms, a), equal_nan=True)
    assert back.prior == terms.prior and back.meta == json.loads(json.dumps(terms.meta))
    with pytest.raises(FileNotFoundError):
        elbo.ELBOTerms.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="JSON"):
        elbo.ELBOTerms.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="ELBO terms"):
        elbo.ELBOTerms.load(tmp_path / "other.json")


def test_cached_terms_reuses_only_a_matching_file(digit_sets, tmp_path):
    y, x = digit_sets
    model = elbo.as_ddpm(Empirical(y), SMALL_T)
    p = tmp_path / "c.json"
    a = elbo.cached_terms(p, model, x[:8], seed=1)
    stamp = p.stat().st_mtime_ns
    b = elbo.cached_terms(p, model, x[:8], seed=1)
    assert p.stat().st_mtime_ns == stamp and np.array_equal(a.mse, b.mse, equal_nan=True)
    c = elbo.cached_terms(p, model, x[:8], seed=2)              # another key: recomputed and rewritten
    assert not np.array_equal(a.mse, c.mse, equal_nan=True) and elbo.ELBOTerms.load(p).meta["seed"] == 2


def test_estimate_terms_rejects_bad_input(digit_sets):
    y, x = digit_sets
    model = elbo.as_ddpm(Empirical(y), SMALL_T)
    with pytest.raises(ValueError, match="steps"):
        elbo.estimate_terms(model, x[:4], steps=[0, 3])
    with pytest.raises(ValueError, match="grid"):
        elbo.estimate_terms(model, x[:4] + 0.01)
    with pytest.raises(TypeError, match="DDPM"):
        elbo.estimate_terms(42, x[:4])


# -- the registered method and the CLI ---------------------------------------------------------------------
def test_optimize_method_elbo_dp():
    from dpmsched.optimize import METHODS, optimize

    assert "elbo-dp" in METHODS
    s = optimize("digits-empirical", "elbo-dp", 3, candidates=4, n_train=24, batch=64)
    assert s.steps == 3 and s.has_final_zero and s.name == "elbo-dp"
    path = s.meta["path"]
    assert path[0] == 0 and path[-1] == 1000 and set(path[1:-1]) <= {1, 112, 445}
    assert s.meta["bits_per_dim"] > 0 and s.meta["bits_per_dim_train"] > 0


def test_cli_elbo_table(tmp_path, capsys):
    from dpmsched.cli import main

    out, cache = tmp_path / "t.json", tmp_path / "cache"
    argv = ["elbo-table", "--model", "digits-empirical", "--ks", "2,3", "--candidates", "3", "--n-train", "16",
            "--n-test", "8", "--cache-dir", str(cache), "--out", str(out)]
    assert main(argv) == 0
    r = json.loads(out.read_text())
    assert r["ks"] == [2, 3] and all(len(r[k]) == 2 for k in ("even", "quadratic", "dp"))
    assert all(d <= e + 1e-12 and d <= q + 1e-12 for d, e, q in zip(r["train"]["dp"], r["train"]["even"],
                                                                     r["train"]["quadratic"]))
    assert math.isfinite(r["full"]) and len(list(cache.glob("*.json"))) == 2
    with pytest.raises(SystemExit):
        main(["elbo-table", "--ks", "a,b", "--out", str(out)])
    capsys.readouterr()
    for bad in (["--n-train", "-3"], ["--n-test", "x"], ["--candidates", "-1"]):   # counts are checked (no train[:-3])
        with pytest.raises(SystemExit) as e:
            main(["elbo-table", *bad, "--out", str(tmp_path / "never.json")])
        assert e.value.code == 2 and bad[0] in capsys.readouterr().err
    assert not (tmp_path / "never.json").exists()


# -- the exact discrete model (dpmsched.denoisers.discrete) ---------------------------------------------------
def _random_mixture(K=3, d=2, L=3, seed=0):
    from dpmsched.denoisers.discrete import FactorizedMixture

    g = torch.Generator().manual_seed(seed)
    return FactorizedMixture(torch.rand(K, generator=g) + 0.1, torch.rand(K, d, L, generator=g) + 0.05)


def _grid_points(d, L):
    v = torch.linspace(-1, 1, L, dtype=torch.float64)
    return torch.cartesian_prod(*[v] * d).reshape(-1, d)


def test_factorized_mixture_pmf_and_denoiser_by_enumeration():
    m = _random_mixture()
    pts = _grid_points(2, 3)
    logp = m.log_pmf(pts)
    assert float(torch.exp(logp).sum()) == pytest.approx(1.0, abs=1e-12)
    y = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for sigma in (0.01, 0.3, 2.0, 50.0):
        logw = logp[None] - ((y[:, None, :] - pts[None]) ** 2).sum(2) / (2 * sigma**2)      # (7, 9)
        brute = torch.softmax(logw, 1) @ pts
        assert torch.allclose(m(y, sigma), brute, atol=1e-12, rtol=1e-10)


def test_factorized_mixture_fit_sample_and_errors():
    from dpmsched.denoisers.discrete import FactorizedMixture

    x = digits("train", dtype=torch.float64)[:300]
    short, long = FactorizedMixture.fit(x, 5, iters=2), FactorizedMixture.fit(x, 5, iters=30)
    assert float(long.log_pmf(x).mean()) > float(short.log_pmf(x).mean())          # EM climbs
    s = long.sample(4000, torch.Generator().manual_seed(0))
    assert s.shape == (4000, 1, 8, 8) and torch.isfinite(long.log_pmf(s)).all()
    # the mean image of the samples matches the model's
    mean = (torch.exp(long.log_w)[:, None, None] * long._pv).sum((0, 2)).reshape(1, 8, 8)
    assert torch.allclose(s.mean(0), mean, atol=0.1)
    with pytest.raises(ValueError, match="grid"):
        FactorizedMixture.fit(x + 0.01, 3)
    with pytest.raises(ValueError, match="shape"):
        long(torch.zeros(2, 64), 1.0)
    with pytest.raises(ValueError, match="> 0"):
        FactorizedMixture(torch.ones(2), torch.zeros(2, 3, 4))


# -- samples along a path ---------------------------------------------------------------------------------
def test_sample_quality_shares_noise_and_ranks_truncation_error(digit_sets):
    y, _ = digit_sets
    model = elbo.as_ddpm(Empirical(y))                            # exact ε-model, T = 1000
    T = model.noise.T
    fine = elbo_dp.path_to_schedule(elbo_dp.stride_path(T, 24, 2.0), model.noise, "fine")
    coarse = elbo_dp.path_to_schedule(elbo_dp.stride_path(T, 2, 2.0), model.noise, "coarse")
    q = elbo_dp.sample_quality(model, {"a": fine, "b": fine, "c": coarse}, 48, seed=1, n_ref=16, ref_steps=12)
    assert q["a"]["fd_ancestral"] == q["b"]["fd_ancestral"] and q["a"]["fd_ddim"] == q["b"]["fd_ddim"]
    assert torch.equal(q["a"]["samples"], q["b"]["samples"]) and q["a"]["samples"].shape == (48, 1, 8, 8)
    assert q["a"]["trunc_ddim"] < 0.5 * q["c"]["trunc_ddim"]      # more steps, smaller DDIM truncation error
    with pytest.raises(ValueError, match="sigma_max"):
        elbo_dp.sample_quality(model, {"x": fine.without_final_zero()}, 4, n_ref=2, ref_steps=2)
    with pytest.raises(ValueError, match="rows"):
        solvers.sample(model, fine, "euler", 4, z=torch.zeros(3, 1, 8, 8, dtype=torch.float64))
