import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpmsched import Schedule, adapters, solvers
from dpmsched import schedules as S
from dpmsched.files import atomic_write_text
from dpmsched.noise import DiscreteVP, EDMTimeFit, LinearVP


# -- error paths ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sigmas, msg", [
    ([80.0, 1.0, 2.0, 0.002], r"strictly decreasing; sigmas\[2\]"),
    ([80.0, 1.0, 1.0, 0.002], r"strictly decreasing; sigmas\[2\]"),
    ([80.0, float("nan"), 0.002], r"finite; sigmas\[1\]"),
    ([80.0, float("inf"), 0.002], r"finite; sigmas\[1\]"),
    ([80.0, 1.0, -0.5], r">= 0; sigmas\[2\]"),
    ([80.0], r"at least 2 points"),
    ([], r"at least 2 points"),
    ([80.0, 0.0, 0.0], r"only the last sigma may be 0; sigmas\[1\]"),
    ([1.0, 0.0], r"at least one positive step"),
    ([[80.0, 1.0]], r"1-D"),
])
def test_invalid_schedules_name_problem_and_index(sigmas, msg):
    with pytest.raises(ValueError, match=msg):
        Schedule(sigmas)


@pytest.mark.parametrize("ctor", [Schedule.karras, Schedule.uniform_logsnr, Schedule.uniform_t,
                                  Schedule.quadratic_t, Schedule.cosine])
def test_constructor_errors(ctor):
    with pytest.raises(ValueError, match="steps must be >= 1"):
        ctor(0)
    with pytest.raises(ValueError, match="steps must be an integer"):
        ctor(2.5)
    with pytest.raises(ValueError, match=r"sigma_min \(80.0\) must be < sigma_max \(1.0\)"):
        ctor(5, sigma_min=80.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="sigma_min must be a finite positive"):
        ctor(5, sigma_min=0.0)


def test_unknown_name():
    with pytest.raises(ValueError, match=r"unknown schedule 'edm'; expected one of"):
        S.get("edm", 5)


def test_sigmas_are_read_only_float64():
    s = Schedule.karras(5)
    assert s.sigmas.dtype == np.float64
    with pytest.raises(ValueError):
        s.sigmas[1] = 3.0


# -- baselines against hand-computed values ---------------------------------------------------------
def test_karras_hand_values():
    s = Schedule.karras(2, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    mid = ((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7
    np.testing.assert_allclose(s.sigmas, [80.0, mid, 0.002], rtol=1e-14)
    assert abs(mid - 2.5152) < 1e-3          # by hand: ((1.87018 + 0.41155)/2)^7
    # rho = 1 is uniform in sigma
    np.testing.assert_allclose(Schedule.karras(4, 1.0, 5.0, rho=1).sigmas, [5, 4, 3, 2, 1], rtol=1e-14)


def test_karras_tends_to_geometric():
    np.testing.assert_allclose(Schedule.karras(6, rho=1e6).sigmas, Schedule.uniform_logsnr(6).sigmas, rtol=1e-4)


def test_uniform_logsnr_hand_values():
    s = Schedule.uniform_logsnr(2, sigma_min=0.01, sigma_max=100.0)
    np.testing.assert_allclose(s.sigmas, [100.0, 1.0, 0.01], rtol=1e-14)
    np.testing.assert_allclose(np.diff(s.lambdas), np.log(100.0))


def test_edm_time_fit_passes_through_endpoints():
    f = EDMTimeFit(0.002, 80.0)
    np.testing.assert_allclose(f.sigma([1e-3, 1.0]), [0.002, 80.0], rtol=1e-10)   # roundoff of expm1
    np.testing.assert_allclose(f.t_of_sigma(f.sigma([0.1, 0.5])), [0.1, 0.5], rtol=1e-12)


def test_uniform_and_quadratic_t():
    f = EDMTimeFit()
    s = Schedule.uniform_t(4)
    t = f.t_of_sigma(s.sigmas)
    np.testing.assert_allclose(np.diff(t), (1e-3 - 1.0) / 4, rtol=1e-9)
    q = Schedule.quadratic_t(4)
    np.testing.assert_allclose(np.diff(np.sqrt(f.t_of_sigma(q.sigmas))), (math.sqrt(1e-3) - 1.0) / 4, rtol=1e-9)
    # on a continuous VP model the times are uniform on that model's axis
    vp = LinearVP()
    s = Schedule.uniform_t(5, sigma_min=float(vp.sigma(1e-3)), sigma_max=float(vp.sigma(1.0)), noise=vp)
    np.testing.assert_allclose(s.to_t(vp), np.linspace(1.0, 1e-3, 6), rtol=1e-9, atol=1e-12)


def test_cosine_hand_values():
    s = Schedule.cosine(2, sigma_min=0.002, sigma_max=80.0)
    mid = math.tan(0.5 * (math.atan(80.0) + math.atan(0.002)))
    np.testing.assert_allclose(s.sigmas, [80.0, mid, 0.002], rtol=1e-14)


def test_discrete_respacings():
    noise = DiscreteVP.linear(1000)
    d = Schedule.ddim_uniform(10, noise)
    assert d.meta["timesteps"] == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert d.has_final_zero and d.steps == 10
    np.testing.assert_allclose(d.sigmas[:-1], noise.sigmas[d.meta["timesteps"]])
    r = Schedule.iddpm_respace(4, noise)
    assert r.meta["timesteps"] == [999, 666, 333, 0]        # round(linspace(1, 1000, 4)) − 1
    r2 = Schedule.iddpm_respace(4, noise, final_zero=False)
    assert r2.steps == 4 and not r2.has_final_zero and len(r2.meta["timesteps"]) == 5
    with pytest.raises(ValueError, match="cannot pick"):
        Schedule.ddim_uniform(1001, noise)


def test_discrete_vp_conversions():
    noise = DiscreteVP.linear(1000)
    sig = noise.sigmas
    assert abs(sig[0] - math.sqrt(1e-4 / (1 - 1e-4))) < 1e-12
    n = np.array([0, 10, 500, 999])
    np.testing.assert_allclose(noise.index_of_sigma(sig[n]), n, atol=1e-6)


# -- JSON -------------------------------------------------------------------------------------------
def test_json_round_trip_exact(tmp_path):
    s = Schedule.karras(7, rho=3.3)
    s.meta["objective"] = 0.1 + 0.2
    back = Schedule.from_json(s.to_json())
    assert back == s and back.sigmas.tobytes() == s.sigmas.tobytes()
    p = tmp_path / "s.json"
    atomic_write_text(p, s.to_json())
    assert Schedule.from_json(p) == s
    assert json.loads(p.read_text())["name"] == "karras"


def test_json_errors(tmp_path):
    with pytest.raises(ValueError, match="invalid schedule JSON"):
        Schedule.from_json("{not json")
    with pytest.raises(ValueError, match="'sigmas' list"):
        Schedule.from_json('{"name": "x"}')
    with pytest.raises(ValueError, match="cannot read schedule file"):
        Schedule.from_json(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="strictly decreasing"):
        Schedule.from_json('{"sigmas": [1, 2]}')


# -- misc -------------------------------------------------------------------------------------------
def test_final_zero_and_nfe():
    s = Schedule.karras(5)
    z = s.with_final_zero()
    assert z.steps == 6 and z.has_final_zero and z.sigma_min == 0.002
    assert z.without_final_zero() == Schedule(s.sigmas, s.name, s.meta)
    assert solvers.nfe("euler", s) == 5 and solvers.nfe("heun", s) == 10 and solvers.nfe("heun", z) == 11
    assert solvers.nfe("euler", s, denoise_to_zero=True) == 6
    assert adapters.to_kdiffusion(s)[-1] == 0 and len(adapters.to_kdiffusion(s)) == 7
    with pytest.raises(ValueError, match="unknown solver"):
        solvers.nfe("rk45", s)


# -- hypothesis properties ----------------------------------------------------------------------------
ranges = st.tuples(st.floats(1e-4, 1.0), st.floats(2.0, 500.0))


@settings(max_examples=60, deadline=None)
@given(steps=st.integers(1, 60), rng=ranges, rho=st.floats(0.5, 20.0),
       name=st.sampled_from(["karras", "uniform-logsnr", "uniform-t", "quadratic-t", "cosine"]))
def test_baselines_are_valid_with_exact_endpoints(steps, rng, rho, name):
    kw = {"rho": rho} if name == "karras" else {}
    s = S.get(name, steps, sigma_min=rng[0], sigma_max=rng[1], **kw)
    assert s.steps == steps
    assert s.sigmas[0] == rng[1] and s.sigmas[-1] == rng[0]
    assert np.all(np.diff(s.sigmas) < 0)
    assert Schedule.from_json(s.to_json()) == s


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(st.floats(-1e3, 1e3), st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0])),
                min_size=0, max_size=12))
def test_constructor_accepts_exactly_the_valid_arrays(values):
    a = np.array(values, dtype=np.float64)
    valid = (a.size >= 2 and np.all(np.isfinite(a)) and np.all(np.diff(a) < 0) and np.all(a[:-1] > 0)
             and a[-1] >= 0 and not (a[-1] == 0 and a.size < 3))
    if valid:
        assert np.array_equal(Schedule(a).sigmas, a)
    else:
        with pytest.raises(ValueError):
            Schedule(a)
