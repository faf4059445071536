import numpy as np

from dpmsched.noise import LinearVP, lambda_to_sigma, sigma_to_lambda, vp_alpha_sigma


def test_lambda_sigma_round_trip():
    s = np.geomspace(0.002, 80, 17)
    np.testing.assert_allclose(lambda_to_sigma(sigma_to_lambda(s)), s, rtol=1e-15)


def test_vp_alpha_sigma_consistent():
    s = np.geomspace(0.002, 80, 17)
    a, sv = vp_alpha_sigma(s)
    np.testing.assert_allclose(a**2 + sv**2, 1.0, rtol=1e-14)
    np.testing.assert_allclose(sv / a, s, rtol=1e-13)


def test_linear_vp_inverse():
    vp = LinearVP()
    t = np.linspace(1e-3, 1.0, 50)
    np.testing.assert_allclose(vp.t_of_lambda(vp.lam(t)), t, rtol=1e-10)
    np.testing.assert_allclose(vp.t_of_sigma(vp.sigma(t)), t, rtol=1e-10)
    np.testing.assert_allclose(-np.log(vp.sigma(t)), vp.lam(t), rtol=1e-12)
