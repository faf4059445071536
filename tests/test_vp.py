"""VPDenoiser: ε/v/x0-prediction VP models read as EDM denoisers (docs/math.md §0.1, §0.4)."""
import numpy as np
import pytest
import torch

from dpmsched.denoisers.exact import Gaussian
from dpmsched.denoisers.vp import VPDenoiser
from dpmsched.noise import DiscreteVP, LinearVP


def _oracle(pred, noise, time_of):
    """An exact VP model of a Gaussian: returns ε, v or x0 from the exact posterior mean."""
    g = Gaussian(std=0.5, dim=3)

    def model(x_t, t):
        sigma = torch.as_tensor(time_of(t.to(torch.float64)), dtype=x_t.dtype)
        s = sigma.reshape(-1, 1)
        alpha = torch.rsqrt(1 + s**2)
        x_tilde = x_t / alpha
        x0 = g(x_tilde, sigma)
        eps = (x_tilde - x0) / s
        if pred == "epsilon":
            return eps
        if pred == "v_prediction":
            return alpha * eps - s * alpha * x0
        return x0

    return g, model


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
def test_linear_vp_reproduces_exact_denoiser(pred):
    noise = LinearVP()
    scale = 1000.0

    def time_to_sigma(t):
        return torch.as_tensor(noise.sigma(t.numpy() / scale))

    g, model = _oracle(pred, noise, time_to_sigma)
    den = VPDenoiser(model, noise, prediction=pred, event_shape=(3,), time_scale=scale)
    x = torch.randn(7, 3, dtype=torch.float64) * 2
    for sigma in [0.01, 0.3, 2.0, 40.0]:
        torch.testing.assert_close(den(x, sigma), g(x, sigma), rtol=1e-8, atol=1e-8)


def test_discrete_vp_time_hits_grid_indices():
    noise = DiscreteVP.linear(1000)
    den = VPDenoiser(lambda x, t: torch.zeros_like(x), noise, event_shape=(2,))
    n = np.array([0, 1, 10, 500, 998, 999])
    t = den.model_time(torch.as_tensor(noise.sigmas[n]))
    np.testing.assert_allclose(t.numpy(), n, atol=1e-6)
    assert den.sigma_min == pytest.approx(noise.sigmas[0])
    assert den.sigma_max == pytest.approx(noise.sigmas[-1])


def test_model_time_is_differentiable_in_sigma():
    for noise in (DiscreteVP.linear(1000), LinearVP()):
        den = VPDenoiser(lambda x, t: torch.zeros_like(x), noise)
        s = torch.tensor([0.5, 3.0], dtype=torch.float64, requires_grad=True)
        den.model_time(s).sum().backward()
        assert torch.all(s.grad > 0), "model time must increase with σ"


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="prediction"):
        VPDenoiser(lambda x, t: x, LinearVP(), prediction="score")
    with pytest.raises(ValueError, match="DiscreteVP or LinearVP"):
        VPDenoiser(lambda x, t: x, noise="linear")
