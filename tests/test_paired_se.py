"""Held-out RMSE with standard errors: the per-method SE and the paired difference the benchmarks report."""
import pytest
import torch

from dpmsched import metrics


def _pair(seed=0, n=400):
    g = torch.Generator().manual_seed(seed)
    common = torch.rand(n, generator=g, dtype=torch.float64) * 2          # latents that are hard for both
    a = common + 0.05 * torch.rand(n, generator=g, dtype=torch.float64)
    b = common + 0.05 * torch.rand(n, generator=g, dtype=torch.float64) + 0.01
    return a, b


def test_rmse_se_is_the_rmse_and_a_delta_method_se():
    a, _ = _pair()
    rmse, se = metrics.rmse_se(a)
    assert rmse == pytest.approx(float(a.pow(2).mean().sqrt()))
    # bootstrap SE of the RMSE agrees with the delta method to ~15 %
    g = torch.Generator().manual_seed(1)
    boots = torch.stack([a[torch.randint(len(a), (len(a),), generator=g)].pow(2).mean().sqrt() for _ in range(400)])
    assert se == pytest.approx(float(boots.std()), rel=0.15)


def test_paired_difference_is_exact_and_its_se_is_smaller_than_unpaired():
    a, b = _pair()
    d, se = metrics.paired_rmse_difference(a, b)
    assert d == pytest.approx(metrics.rmse_se(a)[0] - metrics.rmse_se(b)[0], rel=1e-12)
    unpaired = (metrics.rmse_se(a)[1] ** 2 + metrics.rmse_se(b)[1] ** 2) ** 0.5
    assert 0 < se < unpaired / 5                      # the shared hard latents cancel
    assert d < -2 * se                                # b is worse by 0.01 on every latent: clearly resolved


def test_paired_difference_needs_the_same_samples():
    with pytest.raises(ValueError, match="same shape"):
        metrics.paired_rmse_difference(torch.ones(3), torch.ones(4))
