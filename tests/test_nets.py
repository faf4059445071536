"""nets.py: EDM preconditioning (docs/math.md §0.1), the UNet skip hook (§5.2), dtype and σ-gradients."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dpmsched.denoisers.nets import (
    MLP,
    DigitsClassifier,
    EDMDenoiser,
    UNet,
    build_net,
    level_skip_scales,
    precond_coefficients,
)
from dpmsched.denoisers.vp import VPDenoiser
from dpmsched.noise import DiscreteVP


def test_precond_coefficients_hand_values():
    sd = 0.5
    c_skip, c_out, c_in, c_noise = precond_coefficients(torch.tensor(sd, dtype=torch.float64), sd)
    assert float(c_skip) == pytest.approx(0.5, abs=1e-15)
    assert float(c_out) == pytest.approx(sd / math.sqrt(2), abs=1e-15)
    assert float(c_in) == pytest.approx(1 / (sd * math.sqrt(2)), abs=1e-15)
    assert float(c_noise) == pytest.approx(math.log(sd) / 4, abs=1e-15)
    c_skip, c_out, c_in, _ = precond_coefficients(torch.tensor(3.0, dtype=torch.float64), 1.0)
    assert (float(c_skip), float(c_out), float(c_in)) == pytest.approx((0.1, 3 / math.sqrt(10), 1 / math.sqrt(10)))


@settings(max_examples=50, deadline=None)
@given(st.floats(1e-3, 1e3), st.floats(0.05, 5.0))
def test_precond_identities(sigma, sd):
    """c_skip + c_out²/σ_d² = 1 (unit-variance target) and c_in²(σ² + σ_d²) = 1."""
    c_skip, c_out, c_in, _ = precond_coefficients(torch.tensor(sigma, dtype=torch.float64), sd)
    assert float(c_skip + c_out**2 / sd**2) == pytest.approx(1.0, rel=1e-12)
    assert float(c_in**2 * (sigma**2 + sd**2)) == pytest.approx(1.0, rel=1e-12)


class _Probe(torch.nn.Module):
    """F(x, c) = x + c (broadcast), to read back what the preconditioner feeds the net."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, c):
        return x + c.reshape(-1, *([1] * (x.ndim - 1)))


def test_edm_denoiser_applies_the_formula():
    sd = 0.7
    den = EDMDenoiser(_Probe(), sd, (3,))
    x = torch.randn(4, 3, dtype=torch.float64)
    sig = torch.tensor([0.01, 0.5, 2.0, 80.0], dtype=torch.float64)
    s = sig[:, None]
    want = sd**2 / (s**2 + sd**2) * x + s * sd / torch.sqrt(s**2 + sd**2) * (x / torch.sqrt(s**2 + sd**2)
                                                                             + torch.log(s) / 4)
    torch.testing.assert_close(den(x, sig), want, rtol=1e-14, atol=1e-14)


def test_fresh_net_is_c_skip_times_x():
    den = EDMDenoiser(UNet(ch=8), 0.5, (1, 8, 8))
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(den(x, 1.0), 0.25 / 1.25 * x)


def test_skip_scales_all_ones_is_bit_identical(randomized):
    net = randomized(UNet(ch=8, mults=(1, 2), blocks=2))
    x, c = torch.randn(3, 1, 8, 8), torch.tensor([-1.0, 0.0, 1.0])
    ref = net(x, c)
    assert torch.equal(net(x, c, skip_scales=[1.0] * net.n_skips), ref)
    net.skip_scales = torch.ones(net.n_skips)
    assert torch.equal(net(x, c), ref)
    net.skip_scales = [1.0] * (net.n_skips - 1) + [0.5]      # the input-conv skip, scaled
    assert not torch.allclose(net(x, c), ref)


def test_skip_scales_reach_every_concatenation(randomized):
    net = randomized(UNet(ch=8, mults=(1, 2), blocks=1))
    x, c = torch.randn(2, 1, 8, 8), torch.zeros(2)
    ref = net(x, c)
    for j in range(net.n_skips):
        rho = [1.0] * net.n_skips
        rho[j] = 0.0
        assert not torch.allclose(net(x, c, skip_scales=rho), ref), f"skip {j} has no effect"


def test_skip_counts_and_levels():
    net = UNet(ch=8, mults=(1, 2, 2), blocks=1, size=16)
    assert net.n_skips == 1 + 3 * 1 + 2
    assert net.skip_levels == (2, 2, 1, 1, 0, 0)                 # deepest first, input conv last
    assert level_skip_scales(net, [1.0, 0.8, 0.6]) == [0.6, 0.6, 0.8, 0.8, 1.0, 1.0]
    with pytest.raises(ValueError, match="3 per-level"):
        level_skip_scales(net, [1.0, 0.8])
    with pytest.raises(ValueError, match="skip_scales must have 6"):
        net(torch.randn(1, 1, 16, 16), torch.zeros(1), skip_scales=[1.0])
    assert net(torch.randn(2, 1, 16, 16), torch.zeros(2)).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="divisible"):
        UNet(mults=(1, 2, 2, 2), size=4)


def test_float64_input_and_double_net(randomized):
    net = randomized(UNet(ch=8))
    den = EDMDenoiser(net, 0.5, (1, 8, 8))
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    y32 = den(x, 0.3)
    assert y32.dtype == torch.float64
    den.double()
    y64 = den(x, 0.3)
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y32, y64, rtol=1e-4, atol=1e-4)


def test_differentiable_in_sigma_matches_finite_difference(randomized):
    den = EDMDenoiser(randomized(MLP(width=16, depth=2)), 0.5, (2,)).double()
    x = torch.randn(3, 2, dtype=torch.float64)
    s = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(den(x, s).sum(), s)
    h = 1e-6
    fd = (den(x, 0.7 + h).sum() - den(x, 0.7 - h).sum()) / (2 * h)
    assert float(g) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_epsilon_unet_in_vp_wrapper_is_x_minus_sigma_eps(randomized):
    """A discrete ε-UNet read through VPDenoiser: x0 = (x_t − σ_t ε̂)/α = x − σ ε̂(α x, n(σ))."""
    net = randomized(UNet(ch=8))
    vp = VPDenoiser(net, DiscreteVP.linear(1000), event_shape=(1, 8, 8))
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.05, 3.0], dtype=torch.float64)
    alpha = torch.rsqrt(1 + sigma**2)[:, None, None, None]
    n = torch.as_tensor(DiscreteVP.linear(1000).index_of_sigma(sigma.numpy()))
    eps = net(alpha * x, n)
    torch.testing.assert_close(vp(x, sigma), x - sigma[:, None, None, None] * eps, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(vp.model_time(sigma).numpy(), n.numpy(), rtol=1e-9)


def test_builders_and_errors():
    assert isinstance(build_net({"type": "mlp", "width": 8}), MLP)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_net({"type": "transformer"})
    with pytest.raises(ValueError, match="bad unet"):
        build_net({"type": "unet", "channels": 3})
    with pytest.raises(ValueError, match="shape"):
        EDMDenoiser(MLP(), 0.5, (2,))(torch.randn(3, 5), 1.0)
    with pytest.raises(ValueError, match="sigma > 0"):
        EDMDenoiser(MLP(), 0.5, (2,))(torch.randn(3, 2), 0.0)
    with pytest.raises(ValueError, match="sigma_data"):
        EDMDenoiser(MLP(), 0.0, (2,))
    clf = DigitsClassifier()
    assert clf.features(torch.randn(5, 1, 8, 8)).shape == (5, 64)
    assert clf(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        clf.features(torch.randn(5, 64))
