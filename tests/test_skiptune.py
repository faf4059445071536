"""Skip-Tuning (docs/math.md §5): ρ conventions, the hook on the shipped UNet and on a diffusers
UNet2DModel (checked by capturing activations), restoration, σ-windows, the denoising loss, grid search."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dpmsched import Schedule, plots, skiptune
from dpmsched.denoisers.exact import Gaussian
from dpmsched.denoisers.nets import EDMDenoiser, UNet
from dpmsched.skiptune import interpolate_rho, skip_layout, skip_scales, skip_tuning


def _random_unet_denoiser(seed=0, dtype=torch.float64, **arch):
    """A randomly initialised UNet whose zero-initialised output conv is re-drawn, so F depends on ρ."""
    torch.manual_seed(seed)
    net = UNet(ch=8, emb_dim=16, **arch)
    torch.nn.init.normal_(net.out.weight, std=0.2)
    return EDMDenoiser(net.to(dtype), 0.5, (1, net.config["size"], net.config["size"])).eval()


@pytest.fixture(scope="module")
def den():
    return _random_unet_denoiser()


@pytest.fixture(scope="module")
def tiny_diffusers(tmp_path_factory):
    pytest.importorskip("diffusers")
    from dpmsched import models
    from dpmsched.adapters import tiny_unet_folder

    folder = tiny_unet_folder(tmp_path_factory.mktemp("tiny") / "unet")
    vp = models.load(str(folder))
    vp.model.unet.double()
    return vp


def _x(b=6, seed=1, dtype=torch.float64):
    return torch.randn(b, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- ρ conventions ---------------------------------------------------------------------------------
def test_interpolate_rho_by_hand():
    np.testing.assert_allclose(interpolate_rho(0.6, 1.0, 5), [1.0, 0.9, 0.8, 0.7, 0.6], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(interpolate_rho(0.5, 0.8, 1), [0.8])
    np.testing.assert_array_equal(interpolate_rho(0.7, 0.7, 3), [0.7, 0.7, 0.7])


@given(st.floats(0, 2), st.floats(0, 2), st.integers(2, 20))
@settings(max_examples=50, deadline=None)
def test_interpolate_rho_endpoints_and_linearity(top, bottom, n):
    r = interpolate_rho(top, bottom, n)
    assert r.shape == (n,) and r.dtype == np.float64
    assert r[0] == bottom and abs(r[-1] - top) <= 1e-12
    np.testing.assert_allclose(np.diff(r), (top - bottom) / (n - 1), atol=1e-12)


@pytest.mark.parametrize("bad", [(-0.1, 1.0, 3), (1.0, float("nan"), 3), (1.0, 1.0, 0), (1.0, 1.0, 2.5)])
def test_interpolate_rho_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        interpolate_rho(*bad)
    with pytest.raises(TypeError):
        interpolate_rho("0.5", 1.0, 3)


def test_skip_scales_per_skip_and_per_level(den):
    kind, n, levels = skip_layout(den)
    assert (kind, n, levels) == ("unet", 4, (1, 1, 0, 0))        # deepest first: level-1 block, pool, level-0 ×2
    assert skip_scales(den, 0.7, 1.0) == pytest.approx([1.0, 0.9, 0.8, 0.7], abs=1e-15)
    assert skip_scales(den, 0.7, 1.0, per="level") == [1.0, 1.0, 0.7, 0.7]
    three = _random_unet_denoiser(mults=(1, 2, 2), blocks=2)
    _, n3, lv3 = skip_layout(three)
    assert n3 == 1 + 3 * 2 + 2 and lv3 == (2, 2, 2, 1, 1, 1, 0, 0, 0)
    assert skip_scales(three, 0.6, 1.0, per="level") == pytest.approx([1.0] * 3 + [0.8] * 3 + [0.6] * 3)
    with pytest.raises(ValueError, match="per must be one of"):
        skip_scales(den, 0.7, 1.0, per="block")
    with pytest.raises(TypeError, match="no UNet with skip connections"):
        skip_scales(Gaussian(0.5), 0.7, 1.0)


def test_diffusers_layout_matches_the_shipped_convention(tiny_diffusers):
    assert skip_layout(tiny_diffusers) == ("diffusers", 4, (1, 1, 0, 0))
    assert skip_layout(tiny_diffusers.model.unet) == ("diffusers", 4, (1, 1, 0, 0))


# -- ρ = 1 is the plain model ------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["unet", "diffusers"])
def test_rho_one_is_bit_identical(which, den, tiny_diffusers):
    model = den if which == "unet" else tiny_diffusers
    x, s = _x(), torch.tensor([0.01, 0.3, 1.0, 2.0, 10.0, 80.0], dtype=torch.float64)
    with torch.no_grad():
        plain = model(x, s)
        with skip_tuning(model, 1.0, 1.0) as d:
            tuned = d(x, s)
        with skip_tuning(model, 1.0, 1.0, sigma_window=(0.2, 3.0)) as d:
            windowed = d(x, s)
    assert torch.equal(plain, tuned) and torch.equal(plain, windowed)


# -- the hook changes exactly the intended tensors -------------------------------------------------
def _capture_unet(den, x, sigma):
    """Inputs of the decoder ResBlocks (in call order) and the encoder's skip tensors (pop order)."""
    net, ups, skips, hs = den.net, [], [], []
    for blk in net.up:
        if isinstance(blk, type(net.mid[0])):
            hs.append(blk.register_forward_pre_hook(lambda m, a: ups.append(a[0].clone())))
    for mod in [net.inp, *net.down]:
        hs.append(mod.register_forward_hook(lambda m, a, out: skips.append(out.clone())))
    try:
        with torch.no_grad():
            out = den(x, sigma)
    finally:
        for h in hs:
            h.remove()
    return out, ups, skips[::-1]


def test_unet_hook_scales_exactly_skip_k(den):
    x = _x()
    plain_out, plain_in, plain_skips = _capture_unet(den, x, 1.5)
    for k in range(4):
        rho = [1.0] * 4
        rho[k] = 0.5
        with skip_tuning(den, rho=rho):
            out, ins, skips = _capture_unet(den, x, 1.5)
        for a, b in zip(skips, plain_skips):                       # the encoder is untouched
            assert torch.equal(a, b)
        for j in range(k):                                         # blocks before k see the plain input
            assert torch.equal(ins[j], plain_in[j])
        c = skips[k].shape[1]
        assert torch.equal(ins[k][:, :-c], plain_in[k][:, :-c])    # h part unchanged at block k
        assert torch.equal(ins[k][:, -c:], 0.5 * plain_skips[k])   # skip part: exactly ρ_k · skip_k
        assert not torch.allclose(out, plain_out)


def _capture_diffusers(vp, x, sigma):
    unet, ins, hs = vp.model.unet, [], []
    for blk in unet.up_blocks:
        for r in blk.resnets:
            hs.append(r.register_forward_pre_hook(lambda m, a: ins.append(a[0].clone())))
    res = []
    for blk in unet.up_blocks:            # the tuples the UNet hands its up-blocks, before any other hook
        hs.append(blk.register_forward_pre_hook(lambda m, a: res.extend(t.clone() for t in reversed(a[1])),
                                                prepend=True))
    try:
        with torch.no_grad():
            out = vp(x, sigma)
    finally:
        for h in hs:
            h.remove()
    return out, ins, res


def test_diffusers_hook_scales_exactly_skip_k(tiny_diffusers):
    x = _x()
    plain_out, plain_in, plain_res = _capture_diffusers(tiny_diffusers, x, 1.5)
    assert len(plain_in) == len(plain_res) == 4
    for k in range(4):
        rho = [1.0] * 4
        rho[k] = 0.25
        with skip_tuning(tiny_diffusers, rho=rho):
            out, ins, res = _capture_diffusers(tiny_diffusers, x, 1.5)
        for j in range(4):
            assert torch.equal(res[j], plain_res[j])               # the encoder's tensors are untouched
        for j in range(k):
            assert torch.equal(ins[j], plain_in[j])
        c = res[k].shape[1]
        assert torch.equal(ins[k][:, :-c], plain_in[k][:, :-c])
        assert torch.allclose(ins[k][:, -c:], 0.25 * plain_res[k], rtol=0, atol=0)
        assert not torch.allclose(out, plain_out)


# -- restoration ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["unet", "diffusers"])
def test_model_restored_after_exception(which, den, tiny_diffusers):
    model = den if which == "unet" else tiny_diffusers
    x = _x()
    with torch.no_grad():
        before = model(x, 0.7)
        with pytest.raises(ZeroDivisionError):
            with skip_tuning(model, 0.6, 0.9) as d:
                assert not torch.equal(d(x, 0.7), before)
                1 / 0
        assert torch.equal(model(x, 0.7), before)
    if which == "unet":
        assert den.net.skip_scales is None
    else:
        assert all(not blk._forward_pre_hooks for blk in tiny_diffusers.model.unet.up_blocks)
    with pytest.raises(RuntimeError, match="outside its skip_tuning context"):
        d(x, 0.7)


def test_nested_contexts_refused_and_outer_restored(den):
    x = _x()
    with torch.no_grad():
        before = den(x, 0.7)
        with skip_tuning(den, 0.8, 0.8):
            with pytest.raises(RuntimeError, match="already active"):
                with skip_tuning(den, 0.5, 0.5):
                    pass
            tuned = den(x, 0.7)                                   # the outer tuning is still in place
        assert torch.equal(den(x, 0.7), before)
    with skip_tuning(den, 0.8, 0.8):
        assert torch.equal(den(x, 0.7), tuned)


def test_bad_rho_rejected_and_model_restored(den):
    with pytest.raises(ValueError, match="rho needs 4 entries"):
        with skip_tuning(den, rho=[0.9, 0.9]):
            pass
    with pytest.raises(ValueError, match="sigma_window"):
        with skip_tuning(den, 0.9, 0.9, sigma_window=(3.0, 1.0)):
            pass
    assert den.net.skip_scales is None and not den.net._dpmsched_skiptune_active


# -- σ-window --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["unet", "diffusers"])
def test_sigma_window_is_per_sample(which, den, tiny_diffusers):
    model = den if which == "unet" else tiny_diffusers
    x = _x()
    s = torch.tensor([0.1, 0.5, 1.0, 2.0, 5.0, 20.0], dtype=torch.float64)
    inside = (s >= 0.5) & (s <= 2.0)
    with torch.no_grad():
        plain = model(x, s)
        with skip_tuning(model, 0.6, 0.9) as d:
            const = d(x, s)
            const1 = d(x, 1.0)
        with skip_tuning(model, 0.6, 0.9, sigma_window=(0.5, 2.0)) as d:
            win = d(x, s)
            assert torch.equal(model(x, s), plain)                # only the yielded denoiser is windowed
            assert torch.equal(d(x, 1.0), const1)                  # a scalar σ inside: the constant path
    assert torch.allclose(win[inside], const[inside], rtol=0, atol=1e-14)
    assert torch.equal(win[~inside], plain[~inside])
    assert not torch.allclose(const[~inside], plain[~inside])


# -- denoising loss -----------------------------------------------------------------------------------
def test_denoising_loss_matches_gaussian_mmse():
    c, n = 0.5, 20000
    g = Gaussian(c, dim=4)
    x0 = g.sample(n, torch.Generator().manual_seed(0))
    sig = np.array([0.1, 0.5, 2.0])
    got = skiptune.denoising_loss(g, x0, sig, seed=3)
    mmse = c**2 * sig**2 / (c**2 + sig**2)                    # E‖D − x0‖²/d for Gaussian data
    np.testing.assert_allclose(got, mmse, rtol=0.03)
    g.sigma_data = c
    w = (sig**2 + c**2) / (sig * c) ** 2
    np.testing.assert_allclose(skiptune.denoising_loss(g, x0, sig, seed=3, weighted=True), w * got, rtol=1e-12)
    with pytest.raises(ValueError, match="sigmas"):
        skiptune.denoising_loss(g, x0, [0.0, 1.0])


def test_denoising_loss_same_noise_for_each_model(den):
    x0 = _x(32, seed=5)
    a = skiptune.denoising_loss(den, x0, [0.3, 3.0], seed=1)
    assert np.array_equal(a, skiptune.denoising_loss(den, x0, [0.3, 3.0], seed=1))
    with skip_tuning(den, 0.5, 0.5) as d:
        b = skiptune.denoising_loss(d, x0, [0.3, 3.0], seed=1)
    assert not np.allclose(a, b)


# -- grid search ------------------------------------------------------------------------------------------
def mean_abs(x):
    """A picklable toy score: mean |x| of the samples."""
    return float(x.abs().mean())


def test_grid_search_brute_force_and_pool(den):
    sched = Schedule.karras(3)
    tops, bottoms = [1.0, 0.7], [0.9, 0.6]
    r = skiptune.grid_search(den, sched, "euler", tops, bottoms, n=16, seed=2, score=mean_abs, dtype=torch.float64)
    assert r["scores"].shape == (2, 2) and r["nfe"] == 3
    from dpmsched import solvers

    for i, rt in enumerate(tops):                                  # every cell equals a direct computation
        for j, rb in enumerate(bottoms):
            with skip_tuning(den, rt, rb) as d:
                x = solvers.sample(d, sched, "euler", 16, seed=2, dtype=torch.float64)
            assert r["scores"][i, j] == mean_abs(x)
    i, j = np.unravel_index(np.argmin(r["scores"]), (2, 2))
    assert r["best"] == {"rho_top": tops[i], "rho_bottom": bottoms[j], "score": r["scores"][i, j]}
    assert r["baseline"] == mean_abs(solvers.sample(den, sched, "euler", 16, seed=2, dtype=torch.float64))
    assert math.isclose(r["improvement"], r["baseline"] / r["best"]["score"])
    pooled = skiptune.grid_search(den, sched, "euler", tops, bottoms, n=16, seed=2, score=mean_abs,
                                  dtype=torch.float64, workers=2)
    assert np.array_equal(pooled["scores"], r["scores"]) and pooled["baseline"] == r["baseline"]


def test_grid_search_rejects_bad_input(den):
    sched = Schedule.karras(3)
    with pytest.raises(ValueError, match="workers"):
        skiptune.grid_search(den, sched, workers=0, score=mean_abs)
    with pytest.raises(ValueError, match="unknown solver"):
        skiptune.grid_search(den, sched, "eulr", score=mean_abs)
    with pytest.raises(ValueError, match="non-empty"):
        skiptune.grid_search(den, sched, rho_tops=[], score=mean_abs)
    with pytest.raises(TypeError, match="no UNet"):
        skiptune.grid_search(Gaussian(0.5), sched, score=mean_abs)


# -- the shipped model, the default score, the figures ------------------------------------------------
def test_shipped_digits_edm_layout_and_restore():
    from dpmsched import models

    d = models.load("digits-edm").eval()
    kind, n, levels = skip_layout(d)
    assert kind == "unet" and n == len(d.net.skip_levels) and levels == tuple(d.net.skip_levels)
    assert levels[0] == max(levels) and levels[-1] == 0            # pop order: deepest first, input conv last
    x = torch.randn(4, *d.event_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = d(x, 1.0)
        with skip_tuning(d, 0.6, 0.6) as t:
            tuned = t(x, 1.0)
        assert torch.equal(d(x, 1.0), plain) and not torch.allclose(tuned, plain, atol=1e-3)


def test_fd_score_is_frechet_digits_and_separates_noise_from_digits():
    from dpmsched import data, metrics

    test = data.digits("test")
    assert skiptune.fd_score(test) < 1e-6 * float(metrics.digits_features(test)[0].var(0).sum())   # FD(X, X) = 0
    train = data.digits("train")[:360]
    assert skiptune.fd_score(train) == metrics.frechet_digits(train)["fd"]
    noise = torch.rand(360, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert skiptune.fd_score(noise) > 5 * skiptune.fd_score(train)


def test_digits_mosaic_places_every_image():
    import matplotlib

    matplotlib.use("Agg")
    x = torch.rand(5, 1, 3, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ax = plots.digits_mosaic(x, nrow=2)
    canvas = np.asarray(ax.images[0].get_array())
    assert canvas.shape == (3 * 4 + 1, 2 * 3 + 1)
    for k in range(5):                                   # image k at row k // 2, column k % 2, 1-pixel gaps
        r, c = divmod(k, 2)
        np.testing.assert_allclose(canvas[1 + 4 * r:4 + 4 * r, 1 + 3 * c:3 + 3 * c], (x[k, 0].double().numpy() + 1) / 2)
    assert (canvas[3 * 4 - 3:3 * 4, 4:6] == 1).all()     # the empty sixth slot stays blank
    with pytest.raises(ValueError, match="shape"):
        plots.digits_mosaic(torch.zeros(2, 3, 4, 4))


def test_plot_heatmap_marks_best_and_plain():
    import matplotlib

    matplotlib.use("Agg")
    r = {"rho_top": [1.0, 0.8], "rho_bottom": [1.0, 0.6], "scores": np.array([[5.0, 4.0], [3.0, 6.0]]),
         "best": {"rho_top": 0.8, "rho_bottom": 1.0, "score": 3.0}, "solver": "euler", "nfe": 5}
    ax = plots.skip_heatmap(r)
    (rect,) = [p for p in ax.patches]
    assert rect.get_xy() == (-0.5, 0.5)                  # column ρ_bottom = 1.0, row ρ_top = 0.8
    texts = {t.get_text() for t in ax.texts}
    assert {"5\nplain", "4", "3", "6"} == texts
    assert ax.get_title() == "euler, NFE 5"
