"""metrics.frechet_distance / frechet_digits: closed forms, brute force, invariances, the floor, errors."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dpmsched.data import digits
from dpmsched.metrics import digits_features, frechet_digits, frechet_digits_floor, frechet_distance


def _gaussian_features(mean, cov_sqrt, n, seed):
    """Features whose sample mean / unbiased covariance are *exactly* ``mean`` and ``A Aᵀ`` (whitened)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, cov_sqrt.shape[0], generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    c = z.T @ z / (n - 1)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(c)).T          # sample covariance = I exactly
    return z @ cov_sqrt.T + mean


def test_one_dimensional_closed_form():
    """1-D: FD = (m1 − m2)² + (s1 − s2)²."""
    a = _gaussian_features(torch.tensor([1.0]), torch.tensor([[2.0]], dtype=torch.float64), 500, 0)
    b = _gaussian_features(torch.tensor([-0.5]), torch.tensor([[0.5]], dtype=torch.float64), 300, 1)
    assert frechet_distance(a, b) == pytest.approx(1.5**2 + 1.5**2, rel=1e-10)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(0, 10_000))
def test_matches_scipy_sqrtm_brute_force(dim, seed):
    from scipy.linalg import sqrtm

    g = torch.Generator().manual_seed(seed)
    a = torch.randn(40, dim, generator=g, dtype=torch.float64) @ torch.randn(dim, dim, generator=g, dtype=torch.float64)
    b = torch.randn(30, dim, generator=g, dtype=torch.float64) + torch.randn(dim, generator=g, dtype=torch.float64)
    ma, mb = a.mean(0).numpy(), b.mean(0).numpy()
    ca, cb = np.cov(a.numpy().T).reshape(dim, dim), np.cov(b.numpy().T).reshape(dim, dim)
    want = ((ma - mb) ** 2).sum() + np.trace(ca + cb - 2 * sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-7, abs=1e-9)


def test_identities():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(200, 5, generator=g, dtype=torch.float64)
    b = 2 * torch.randn(150, 5, generator=g, dtype=torch.float64) + 1
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-10)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-10)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))   # rotation + shift invariance
    assert frechet_distance(a @ q + 3, b @ q + 3) == pytest.approx(frechet_distance(a, b), rel=1e-9)
    assert frechet_distance(a, a + 0.5) == pytest.approx(5 * 0.25, rel=1e-10)    # a shift adds ‖δ‖²


def test_errors():
    with pytest.raises(ValueError, match="dimension mismatch"):
        frechet_distance(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.randn(1, 3), torch.randn(10, 3))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(torch.full((5, 3), float("nan")), torch.randn(10, 3))
    with pytest.raises(ValueError, match=r"\(M, 1, 8, 8\)"):
        frechet_digits(torch.randn(10, 64))
    with pytest.raises(ValueError, match="NaN"):
        frechet_digits(torch.full((10, 1, 8, 8), float("nan")))


def test_frechet_digits_floor_and_orderings():
    test, train = digits("test"), digits("train")
    same = frechet_digits(test, "test")
    assert same["fd"] == pytest.approx(0.0, abs=1e-6)
    assert torch.equal(same["class_hist"], same["class_hist_reference"]) and same["n"] == 360
    _, y = digits("test", labels=True)
    true_hist = torch.bincount(y, minlength=10).double() / len(y)
    assert (same["class_hist"] - true_hist).abs().sum() <= 2 * 0.03       # ≥ 97 % accuracy moves ≤ 3 % of mass
    floor = frechet_digits_floor()
    assert floor == pytest.approx(frechet_digits(train)["fd"]) and floor > 0
    g = torch.Generator().manual_seed(0)
    noisy = frechet_digits(train + 0.3 * torch.randn(train.shape, generator=g))["fd"]
    ones = frechet_digits(train[digits("train", labels=True)[1] == 1])        # one class only
    assert floor < noisy and floor < ones["fd"]
    assert ones["class_hist"][1] > 0.9
    f, lab = digits_features(test)
    assert f.dtype == torch.float64 and f.shape == (360, 64) and lab.shape == (360,)
