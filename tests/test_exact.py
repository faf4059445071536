import math

import pytest
import torch

from dpmsched import data
from dpmsched.denoisers.exact import Empirical, Gaussian, GaussianMixture


def autograd_denoiser(model, x, sigma):
    """x + σ² ∇ log p_σ(x), the score computed by autograd of the exact log-density."""
    x = x.clone().double().requires_grad_(True)
    (g,) = torch.autograd.grad(model.log_prob(x, sigma).sum(), x)
    return (x + sigma**2 * g).detach()


def models():
    g = torch.Generator().manual_seed(3)
    return {
        "gaussian": Gaussian(0.7, dim=3, mean=0.2),
        "gmm-iso": data.mixture_2d("ring"),
        "gmm-diag": GaussianMixture(torch.randn(4, 3, generator=g), 0.05 + torch.rand(4, 3, generator=g),
                                    weights=[1.0, 2.0, 3.0, 4.0]),
        "empirical": Empirical(torch.randn(50, 3, generator=g)),
    }


@pytest.mark.parametrize("name", list(models()))
@pytest.mark.parametrize("sigma", [0.002, 0.05, 0.5, 3.0, 80.0])
def test_denoiser_equals_autograd_score(name, sigma):
    m = models()[name]
    g = torch.Generator().manual_seed(1)
    x0 = m.sample(64, g) if hasattr(m, "sample") else m.data[torch.randint(0, 50, (64,), generator=g)]
    x = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    d = m(x, sigma)
    ref = autograd_denoiser(m, x, sigma)
    assert torch.isfinite(d).all()
    scale = 1.0 + x.abs().max()
    assert torch.allclose(d, ref, atol=1e-9 * scale, rtol=1e-9), float((d - ref).abs().max())


def test_empirical_stable_at_extremes_and_returns_input_dtype():
    dig = data.digits("train")
    m = Empirical(dig)
    g = torch.Generator().manual_seed(0)
    near = dig[:8] + 0.002 * torch.randn(8, 1, 8, 8, generator=g)
    out = m(near, 0.002)
    assert out.dtype == torch.float32 and out.shape == near.shape
    assert torch.allclose(out, dig[:8], atol=1e-5)          # tiny noise → the training point itself
    far = 80.0 * torch.randn(8, 1, 8, 8, generator=g)
    out = m(far, 80.0)
    # at huge sigma the posterior is nearly uniform: D ≈ data mean
    assert torch.allclose(out, dig.mean(0, keepdim=True).expand_as(out), atol=0.05)


def test_per_sample_sigma_matches_scalar():
    m = data.mixture_2d("grid")
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sig = torch.tensor([0.01, 0.1, 1.0, 2.0, 10.0, 80.0], dtype=torch.float64)
    batched = m(x, sig)
    for i in range(6):
        assert torch.allclose(batched[i], m(x[i:i + 1], float(sig[i]))[0], atol=1e-14)


def test_gaussian_ode_solution_solves_the_ode():
    m = Gaussian(0.5, dim=2)
    x = torch.randn(5, 2, dtype=torch.float64)
    s, h = 1.3, 1e-6
    # dx/dσ = (x − D(x;σ))/σ along the closed-form path
    dx = (m.ode_solution(x, 1.3, s + h) - m.ode_solution(x, 1.3, s - h)) / (2 * h)
    assert torch.allclose(dx, (x - m(x, s)) / s, atol=1e-8)


def test_bad_inputs():
    m = data.mixture_2d("ring")
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 2\)"):
        m(torch.zeros(3, 4), 1.0)
    with pytest.raises(ValueError, match="sigma must be a scalar or have shape"):
        m(torch.zeros(3, 2), torch.ones(2))
    with pytest.raises(ValueError, match="finite"):
        m(torch.zeros(3, 2), float("nan"))
    with pytest.raises(ValueError, match="stds must be"):
        GaussianMixture([[0.0, 0.0]], [[1.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="std must be"):
        Gaussian(0.0)


def test_gmm_sample_statistics():
    m = data.mixture_2d("ring")
    x = m.sample(20000, torch.Generator().manual_seed(0))
    assert abs(float(x.pow(2).sum(1).mean()) - (1.0 + 2 * 0.01)) < 0.02
    assert abs(m.std - math.sqrt((1.0 + 2 * 0.01) / 2)) < 1e-12


def test_digits_split():
    tr, ytr = data.digits("train", labels=True)
    te = data.digits("test")
    assert tr.shape == (1437, 1, 8, 8) and te.shape == (360, 1, 8, 8)
    assert tr.min() == -1 and tr.max() == 1
    levels = torch.unique(torch.cat([tr, te]))
    assert len(levels) <= data.DIGITS_LEVELS
    assert torch.equal(data.digits("train"), tr)                 # fixed split
    assert set(ytr.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="split must be"):
        data.digits("valid")
