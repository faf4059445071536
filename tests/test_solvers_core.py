import subprocess
import sys

import numpy as np
import pytest
import torch

from dpmsched import Schedule, data, metrics, solvers
from dpmsched.denoisers.exact import Gaussian


def _order(solver, den, z, ks=(8, 16, 32, 64)):
    exact = den.ode_solution(80.0 * z, 80.0, 0.002)
    errs = [float((solver(den, 80.0 * z, Schedule.karras(k)) - exact).abs().max()) for k in ks]
    return np.polyfit(np.log(ks), np.log(errs), 1)[0], errs


def test_euler_and_heun_orders_on_gaussian():
    den = Gaussian(0.5, dim=1)
    z = torch.randn(64, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p1, _ = _order(solvers.euler, den, z)
    p2, _ = _order(solvers.heun, den, z)
    p4, _ = _order(solvers.rk4, den, z, ks=(8, 16, 32))
    assert abs(-p1 - 1) < 0.3 and abs(-p2 - 2) < 0.3 and abs(-p4 - 4) < 0.5, (p1, p2, p4)


def test_reference_is_accurate():
    den = Gaussian(0.5, dim=3)
    z = torch.randn(128, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = solvers.reference(den, 80.0 * z, 80.0, 0.002)
    assert float((ref - den.ode_solution(80.0 * z, 80.0, 0.002)).abs().max()) < 2e-6


def test_callback_and_denoise_to_zero():
    den = data.mixture_2d("ring")
    x = 80.0 * torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = []
    s = Schedule.karras(4)
    out = solvers.euler(den, x, s, callback=seen.append, denoise_to_zero=True)
    assert [d["i"] for d in seen] == [0, 1, 2, 3, 4]
    assert [d["sigma"] for d in seen] == pytest.approx(list(s.sigmas))
    assert torch.equal(out, seen[-1]["denoised"])
    assert len(seen) == solvers.nfe("euler", s, denoise_to_zero=True)
    with pytest.raises(ValueError, match="denoise_to_zero needs"):
        solvers.euler(den, x, s.with_final_zero(), denoise_to_zero=True)


def test_heun_nfe_matches_calls():
    calls = []
    den = data.mixture_2d("ring")

    def counting(x, s):
        calls.append(1)
        return den(x, s)

    x = 80.0 * torch.randn(4, 2, dtype=torch.float64)
    for s in (Schedule.karras(5), Schedule.karras(5).with_final_zero()):
        calls.clear()
        solvers.heun(counting, x, s)
        assert len(calls) == solvers.nfe("heun", s)


def test_final_zero_euler_returns_last_denoised():
    den = data.mixture_2d("ring")
    x = 80.0 * torch.randn(4, 2, dtype=torch.float64)
    seen = []
    out = solvers.euler(den, x, Schedule.karras(3).with_final_zero(), callback=seen.append)
    assert torch.equal(out, seen[-1]["denoised"])


def test_nan_state_raises_with_step():
    def bad(x, s):
        return x * float("nan") if float(s) < 1.0 else x * 0

    x = 80.0 * torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(FloatingPointError, match="step 2"):
        solvers.euler(bad, x, Schedule([80.0, 5.0, 0.5, 0.01]))


def test_registry():
    assert solvers.get("euler") is solvers.euler
    with pytest.raises(ValueError, match="unknown solver 'foo'"):
        solvers.get("foo")
    with pytest.raises(ValueError, match="strictly decreasing"):
        solvers.euler(lambda x, s: x, torch.zeros(2, 2), torch.tensor([1.0, 2.0]))


def test_metrics():
    a = torch.zeros(10, 3)
    b = torch.full((10, 3), 2.0)
    assert metrics.truncation_error(a, b) == pytest.approx(2.0)
    assert metrics.truncation_error(a, b, per_sample=True).shape == (10,)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4000, 2, generator=g), torch.randn(3000, 2, generator=g)
    assert metrics.sliced_wasserstein(x, y) < 0.05
    assert metrics.sliced_wasserstein(x, y + 1.0) == pytest.approx(1.0, abs=0.1)
    mix = data.mixture_2d("ring")
    good = mix.sample(4000, g)
    assert metrics.gmm_nll(good, mix) < metrics.gmm_nll(good * 1.1, mix)


def test_import_is_light():
    code = ("import sys, dpmsched; import dpmsched.solvers, dpmsched.theory, dpmsched.data, dpmsched.metrics; "
            "bad = [m for m in ('diffusers', 'jupyter_client', 'ipykernel', 'ipywidgets', 'matplotlib', 'papermill') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_euler_is_differentiable_in_the_schedule():
    den = Gaussian(0.5, dim=1)
    z = torch.randn(32, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = den.ode_solution(80.0 * z, 80.0, 0.002)
    base = Schedule.karras(4).sigmas

    def loss(mid):
        s = torch.cat([torch.tensor([80.0], dtype=torch.float64), mid, torch.tensor([0.002], dtype=torch.float64)])
        return ((solvers.euler(den, 80.0 * z, s) - exact) ** 2).mean()

    mid = torch.tensor(base[1:-1], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(loss(mid), mid)
    for j in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[j] = 1e-6 * base[j + 1]
        fd = (loss(mid.detach() + e) - loss(mid.detach() - e)) / (2 * e[j])
        assert float(g[j]) == pytest.approx(float(fd), rel=1e-5)
    # float32 states stay float32 with float64 coefficients
    assert solvers.euler(den, 80.0 * z.float(), Schedule.karras(4)).dtype == torch.float32


def test_model_registry_and_optimize_cli(tmp_path, capsys):
    from dpmsched import models
    from dpmsched.cli import main

    m = models.load("toy2d-ring")
    assert m.event_shape == (2,) and m.sigma_max == 80.0
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        models.load("nope")
    out = tmp_path / "s.json"
    assert main(["optimize", "--model", "toy2d-ring", "--method", "karras", "--steps", "6",
                 "--opt", "rho=3", "--out", str(out)]) == 0
    s = Schedule.from_json(out)
    assert s.steps == 6 and s.meta["method"] == "karras"
    np.testing.assert_array_equal(s.sigmas, Schedule.karras(6, rho=3).sigmas)
    with pytest.raises(SystemExit) as e:                             # argparse: one usage line, exit 2
        main(["optimize", "--model", "toy2d-ring", "--method", "magic", "--steps", "6"])
    assert e.value.code == 2 and "invalid choice: 'magic'" in capsys.readouterr().err
    assert main(["optimize", "--model", "toy2d-ring", "--method", "gits", "--solver", "foo", "--steps", "6",
                 "--out", str(tmp_path / "never.json")]) == 2
    err = capsys.readouterr().err
    assert "dpmsched optimize: error: unknown solver 'foo'" in err and "Traceback" not in err
    assert not (tmp_path / "never.json").exists()
