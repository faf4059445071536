"""Phase-2 finetuning and the alternating loop (docs/math.md §3.5): the loss, the weights, DDP, resume,
the checkpoint tied to its schedule."""
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from dpmsched import Schedule, finetune
from dpmsched.cli import main as cli_main
from dpmsched.cli.finetune import main as cli_finetune
from dpmsched.denoisers.exact import Gaussian
from dpmsched.denoisers.nets import MLP, EDMDenoiser
from dpmsched.finetune import Phase2Config, dsm_loss, step_weights
from dpmsched.optimize.teacher import reference_endpoints
from dpmsched.theory import convex_weights

ROOT = Path(__file__).resolve().parents[1]


def TinyEDM(dim=4, width=16, seed=0, sigma_data=0.5):
    """A tiny EDM-preconditioned MLP (dpmsched.denoisers.nets) in float64, output layer randomised."""
    torch.manual_seed(seed)
    net = MLP(dim=dim, width=width, depth=1, emb_dim=8).double()
    torch.nn.init.normal_(net.out.weight, std=0.3)
    return EDMDenoiser(net, sigma_data, (dim,), name="tiny")


def toy_data(n=256, dim=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(n, dim, generator=g, dtype=torch.float64) + torch.linspace(-1, 1, dim, dtype=torch.float64)


def params(m):
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


# -- the weights ------------------------------------------------------------------------------------------------
def test_step_weights_options():
    s = Schedule.karras(6)
    _, w = convex_weights(s)
    assert np.allclose(step_weights(s, "convex"), w / w.sum())
    assert np.allclose(step_weights(s, "convex-sq"), w**2 / (w**2).sum())
    assert np.allclose(step_weights(s, "uniform"), np.full(6, 1 / 6))
    sig = s.sigmas[:-1]
    edm = (sig**2 + 0.25) / (sig * 0.5) ** 2                       # λ_EDM by hand
    assert np.allclose(step_weights(s, "edm"), edm / edm.sum())
    for kind in finetune.WEIGHTS:
        lam = step_weights(s, kind)
        assert lam.shape == (6,) and np.all(lam >= 0) and math.isclose(lam.sum(), 1.0)
    with pytest.raises(ValueError, match="unknown step weights"):
        step_weights(s, "bogus")


def test_edm_effective_weight_peak():
    # λ_EDM(σ)·N(ln σ; −1.2, 1.2²): hand value at σ = 1, and the maximum lies between σ_min and 1
    v = finetune.edm_effective_weight(np.array([1.0]))[0]
    assert math.isclose(v, 5.0 * math.exp(-0.5) / (1.2 * math.sqrt(2 * math.pi)), rel_tol=1e-12)
    s = np.geomspace(0.002, 80, 2001)
    peak = s[np.argmax(finetune.edm_effective_weight(s))]
    assert 0.002 < peak < 1.0
    with pytest.raises(ValueError):
        finetune.edm_loss_weight(np.array([0.0]))


# -- the loss -----------------------------------------------------------------------------------------------------
def test_dsm_loss_equal_weights_dense_schedule_is_ordinary_dsm(gen):
    """Equal λ on a dense schedule == ordinary DSM with σ uniform over those levels (same x0, ε)."""
    net = TinyEDM()
    s = Schedule.karras(64)
    x0 = toy_data(8)
    eps = torch.randn(8, 64, 4, generator=gen, dtype=torch.float64)
    got = dsm_loss(net, x0, eps, s.sigmas[:-1], step_weights(s, "uniform"))
    # brute force: one (x0, σ, ε) triple at a time, unit weight, then the plain average
    terms = [((net(x0[b:b + 1] + s.sigmas[i] * eps[b, i:i + 1], float(s.sigmas[i])) - x0[b:b + 1]) ** 2).mean()
             for b in range(8) for i in range(64)]
    assert torch.allclose(got, torch.stack(terms).mean(), rtol=1e-12, atol=0)


def test_dsm_loss_closed_form_on_gaussian_data(gen):
    """With the exact denoiser of N(0, c²): E‖D(x0+σε;σ) − x0‖²/d = c²σ²/(c²+σ²), so the loss is Σ λ_i of that."""
    c, d, B = 0.5, 3, 20000
    den = Gaussian(c, dim=d)
    s = Schedule.karras(5)
    lam = step_weights(s, "convex")
    x0 = c * torch.randn(B, d, generator=gen, dtype=torch.float64)
    eps = torch.randn(B, 5, d, generator=gen, dtype=torch.float64)
    got = float(dsm_loss(den, x0, eps, s.sigmas[:-1], lam))
    sig = s.sigmas[:-1]
    want = float(np.sum(lam * c**2 * sig**2 / (c**2 + sig**2)))
    assert abs(got - want) < 0.03 * want                     # MC with 1e5 terms: ~0.5 % standard error


def test_dsm_loss_shape_errors():
    net = TinyEDM()
    with pytest.raises(ValueError, match="eps must have shape"):
        dsm_loss(net, toy_data(4), torch.zeros(4, 3, 5, dtype=torch.float64), [1.0, 0.5, 0.1], [1 / 3] * 3)
    with pytest.raises(ValueError, match="sigmas and lam"):
        dsm_loss(net, toy_data(4), torch.zeros(4, 3, 4, dtype=torch.float64), [1.0, 0.5], [0.5, 0.5])


def test_config_validation():
    assert Phase2Config().loss == "distill"          # the reading that improves samples (README) is the default
    with pytest.raises(ValueError, match="unknown Phase-2 loss"):
        Phase2Config(loss="bogus")
    with pytest.raises(ValueError, match="iters must be >= 1"):
        Phase2Config(iters=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        Phase2Config(lr=0.0)
    with pytest.raises(ValueError, match="device must be"):
        finetune.resolve_device("tpu")


# -- Phase-2 runs ---------------------------------------------------------------------------------------------------
def test_phase2_dsm_lowers_the_loss_at_the_selected_steps(gen):
    net, data = TinyEDM(), toy_data()
    s = Schedule.karras(4)
    cfg = Phase2Config(loss="dsm", iters=60, batch=32, lr=5e-3, ema_halflife=0, seed=0)
    x0 = toy_data(512, seed=5)
    eps = torch.randn(512, 4, 4, generator=gen, dtype=torch.float64)
    lam = step_weights(s, cfg.weights)
    with torch.no_grad():
        before = float(dsm_loss(net, x0, eps, s.sigmas[:-1], lam))
    tuned, hist = finetune.phase2(net, s, data, config=cfg, device="cpu")
    with torch.no_grad():
        after = float(dsm_loss(tuned, x0, eps, s.sigmas[:-1], lam))
    assert after < 0.7 * before, (before, after)
    assert len(hist["loss"]) == 60 and hist["schedule"]["sigmas"] == list(s.sigmas)
    assert torch.equal(params(net), params(TinyEDM()))            # the input model is not modified


def test_phase2_distill_lowers_the_few_step_error():
    net = TinyEDM()
    s = Schedule.karras(3)
    pairs = reference_endpoints(net, 128, 3, 16, 256, sigma_range=(0.002, 80.0), dtype=torch.float64, cache=False)
    cfg = Phase2Config(iters=60, batch=32, lr=3e-3, loss="distill", ema_halflife=0)

    def err(m):
        with torch.no_grad():
            return float(finetune.distill_loss(m, *pairs, s, "euler"))

    tuned, _ = finetune.phase2(net, s, config=cfg, device="cpu", pairs=pairs)
    assert err(tuned) < 0.8 * err(net), (err(net), err(tuned))


def test_phase2_is_deterministic_and_rejects_bad_input():
    s = Schedule.karras(3)
    cfg = Phase2Config(loss="dsm", iters=5, batch=8, lr=1e-3)
    a, _ = finetune.phase2(TinyEDM(), s, toy_data(), config=cfg, device="cpu")
    b, _ = finetune.phase2(TinyEDM(), s, toy_data(), config=cfg, device="cpu")
    assert torch.equal(params(a), params(b))
    with pytest.raises(ValueError, match="sigma_min > 0"):
        finetune.phase2(TinyEDM(), s.with_final_zero(), toy_data(), config=cfg, device="cpu")
    with pytest.raises(ValueError, match="needs the training data"):
        finetune.phase2(TinyEDM(), s, None, config=cfg, device="cpu")


def test_kill_and_resume_gives_the_same_parameters(tmp_path):
    """Interrupt after iteration 7 (last checkpoint at 6), resume: same model, EMA and Adam state as uninterrupted."""
    s = Schedule.karras(3)
    cfg = Phase2Config(loss="dsm", iters=10, batch=8, lr=1e-3, ema_halflife=3, checkpoint_every=3, seed=4)
    full, _ = finetune.phase2(TinyEDM(), s, toy_data(), config=cfg, device="cpu", state_dir=tmp_path / "a")

    class Killed(Exception):
        pass

    def kill(it, loss):
        if it == 7:
            raise Killed

    with pytest.raises(Killed):
        finetune.phase2(TinyEDM(), s, toy_data(), config=cfg, device="cpu", state_dir=tmp_path / "b", callback=kill)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "b" / "state.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["meta"])["step"] == 6                 # one file: tensors + their step
    resumed, hist = finetune.phase2(TinyEDM(), s, toy_data(), config=cfg, device="cpu",
                                    state_dir=tmp_path / "b", resume=True)
    assert hist["start_iteration"] == 6 and len(hist["loss"]) == 10      # the loss history survives too
    assert torch.equal(params(full), params(resumed))
    # the raw (non-EMA) weights and the Adam moments match too
    from dpmsched.files import tensors_from_file
    ta, tb = (tensors_from_file(tmp_path / k / "state.safetensors") for k in "ab")
    keys = {k for k in ta if k.split(".")[0] in ("net", "ema", "opt")}
    assert any(k.startswith("opt.") for k in keys) and keys == {k for k in tb if k.split(".")[0] in ("net", "ema", "opt")}
    assert all(torch.equal(ta[k], tb[k]) for k in keys)
    # resuming with another configuration is refused (train.py's check)
    with pytest.raises(ValueError, match="other settings"):
        finetune.phase2(TinyEDM(), s, toy_data(), config=Phase2Config(loss="dsm", iters=10, batch=8, lr=2e-3, checkpoint_every=3),
                        device="cpu", state_dir=tmp_path / "b", resume=True)


# -- DDP (2 gloo processes on CPU) -----------------------------------------------------------------------------------
_DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_finetune import TinyEDM, toy_data
    from dpmsched import Schedule, finetune
    from dpmsched.optimize.teacher import reference_endpoints
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    pairs = reference_endpoints(TinyEDM(seed=9), 64, 1, 8, 256, sigma_range=(0.002, 80.0), dtype=torch.float64, cache=False)
    out = {{}}
    for loss in ("dsm", "distill"):
        cfg = finetune.Phase2Config(iters=6, batch=16, lr=1e-3, ema_halflife=2, seed=2, loss=loss)
        m, _ = finetune.phase2(TinyEDM(), Schedule.karras(3), toy_data(), config=cfg, device="cpu", pairs=pairs)
        out[loss] = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    if dist.get_rank() == 0:
        torch.save(out, {out!r})
    dist.barrier()                  # no rank tears the group down while the other still uses it
    dist.destroy_process_group()
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_gloo_processes_equal_single_process_doubled_batch(tmp_path):
    """2 processes × batch 8 (global 16) == 1 process × batch 16, to 1e-10 in float64 (summation order only),
    for both Phase-2 losses."""
    out = tmp_path / "ddp.pt"
    script = tmp_path / "run.py"
    script.write_text(_DDP_SCRIPT.format(tests=str(ROOT / "tests"), out=str(out)))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2",
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script)], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    logs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    pairs = reference_endpoints(TinyEDM(seed=9), 64, 1, 8, 256, sigma_range=(0.002, 80.0), dtype=torch.float64, cache=False)
    got = torch.load(out)
    for loss in ("dsm", "distill"):
        cfg = Phase2Config(iters=6, batch=16, lr=1e-3, ema_halflife=2, seed=2, loss=loss)
        single, _ = finetune.phase2(TinyEDM(), Schedule.karras(3), toy_data(), config=cfg, device="cpu", pairs=pairs)
        ddp = got[loss]
        assert not torch.equal(ddp, params(TinyEDM()))                   # it trained
        assert torch.allclose(ddp, params(single), rtol=0, atol=1e-10), (loss, float((ddp - params(single)).abs().max()))


def test_batch_must_divide_world_size(monkeypatch):
    monkeypatch.setattr(finetune.loop, "rank_world", lambda: (0, 3))
    with pytest.raises(ValueError, match="divisible by the world size 3"):
        finetune.phase2(TinyEDM(), Schedule.karras(3), toy_data(), config=Phase2Config(batch=8), device="cpu")


# -- the alternating loop ----------------------------------------------------------------------------------------------
def test_alternate_recomputes_phase1_each_round_with_the_current_model():
    seen = []

    def phase1(model, steps, solver):
        seen.append(params(model).clone())
        return Schedule.karras(steps, rho=5.0 + len(seen))

    cfg = Phase2Config(loss="dsm", iters=5, batch=8, lr=1e-3)
    calls = []
    model, sched, hist = finetune.alternate(TinyEDM(), 3, toy_data(), rounds=2, phase1=phase1, config=cfg, device="cpu",
                                            on_round=lambda r, m, s, h: calls.append((r, params(m), s.sigmas, h)))
    assert [c[0] for c in calls] == [0, 1, 2] and calls[0][3] is None
    assert torch.equal(calls[0][1], params(TinyEDM())) and np.array_equal(calls[0][2], calls[1][2])  # r=0: Phase-1 only
    assert len(seen) == 2 and not torch.equal(seen[0], seen[1])     # round 2 optimised the tuned model
    assert np.array_equal(sched.sigmas, Schedule.karras(3, rho=7.0).sigmas) and "phase1_seconds" in sched.meta
    assert [h["round"] for h in hist] == [1, 2] and hist[1]["config"]["seed"] == 2


# -- a checkpoint tied to its schedule ---------------------------------------------------------------------------------
def test_check_schedule_warns_on_another_schedule_or_solver():
    m = TinyEDM()
    s = Schedule.karras(4)
    assert finetune.check_schedule(m, Schedule.karras(5))           # not finetuned: nothing to check
    m.finetuned_for = {"schedule": s.to_dict(), "solver": "euler"}
    assert finetune.check_schedule(m, s, "euler")
    with pytest.warns(finetune.ScheduleMismatchWarning, match="schedule"):
        assert not finetune.check_schedule(m, Schedule.karras(4, rho=3.0), "euler")
    with pytest.warns(finetune.ScheduleMismatchWarning, match="solver 'heun'"):
        finetune.check_schedule(m, s, "heun")


def test_finetuned_checkpoint_round_trips_with_its_schedule(tmp_path):
    # float32 like the shipped models (checkpoints.load_model builds the net in float32 before loading)
    s = Schedule.karras(3, rho=5.0)
    tuned, _ = finetune.phase2(TinyEDM().float(), s, toy_data().float(), config=Phase2Config(loss="dsm", iters=3, batch=8),
                               solver="heun", device="cpu")
    finetune.save_finetuned(tuned, tmp_path / "ft", s, "heun", {"rounds": 1})
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")                           # the tuned pair loads silently
        back, s2, solver = finetune.load_finetuned(tmp_path / "ft", s, "heun")
    assert np.array_equal(s2.sigmas, s.sigmas) and solver == "heun" and back.config["finetune"]["rounds"] == 1
    x = torch.randn(5, 4)
    assert torch.equal(back(x, 0.7), tuned(x, 0.7))               # same weights, same function
    with pytest.warns(finetune.ScheduleMismatchWarning):
        finetune.load_finetuned(tmp_path / "ft", Schedule.karras(3), "heun")
    from dpmsched.models import load  # the generic loader is covered too
    with pytest.warns(finetune.ScheduleMismatchWarning, match="solver 'euler'"):
        finetune.model_samples(load(tmp_path / "ft"), s, "euler", n=4)
    # a plain (not finetuned) checkpoint is refused by load_finetuned
    from dpmsched.checkpoints import save_model
    save_model(TinyEDM(), tmp_path / "plain", kind="edm", dataset="toy")
    with pytest.raises(ValueError, match="not a finetuned checkpoint"):
        finetune.load_finetuned(tmp_path / "plain")


def test_alternate_distill_teacher_base_vs_current(monkeypatch):
    """distill_teacher="base": every round regresses onto the base model's solves (same pairs, computed once);
    "current": phase2 gets no pairs and recomputes them from the current θ each round."""
    seen = []
    real = finetune.phase2

    def spy(model, sched, data, **kw):
        seen.append(kw["pairs"])
        return real(model, sched, data, **kw)

    monkeypatch.setattr(finetune.loop, "phase2", spy)
    base = TinyEDM()
    cfg = Phase2Config(iters=2, batch=8, lr=1e-3, loss="distill", teacher_pairs=16, teacher_steps=4)
    finetune.alternate(base, 2, rounds=2, phase1=lambda m, n, s: Schedule.karras(n), config=cfg, device="cpu")
    assert seen[0] is seen[1]
    z, x_ref = reference_endpoints(base, 16, cfg.seed + 7919, 4, 256, sigma_range=(0.002, 80.0), dtype=torch.float64, cache=False)
    assert torch.equal(seen[0][0], z) and torch.equal(seen[0][1], x_ref)
    seen.clear()
    from dataclasses import replace
    finetune.alternate(base, 2, rounds=2, phase1=lambda m, n, s: Schedule.karras(n),
                       config=replace(cfg, distill_teacher="current"), device="cpu")
    assert seen == [None, None]
    with pytest.raises(ValueError, match="distill_teacher"):
        Phase2Config(distill_teacher="old")


def test_alternate_default_phase1_is_huang():
    m, s, hist = finetune.alternate(TinyEDM(), 3, toy_data(), rounds=1, config=Phase2Config(loss="dsm", iters=2, batch=8),
                                    device="cpu")
    assert s.name == "huang" and s.steps == 3 and s.sigmas[0] == 80.0 and math.isclose(s.sigmas[-1], 0.002)
    assert m.finetuned_for["schedule"]["sigmas"] == list(s.sigmas)


# -- the GPU preset: plumbing and shapes on the CPU (its numbers need a GPU) -------------------------------------------
@pytest.mark.slow
def test_gpu_preset_plumbing_on_cpu(tmp_path, monkeypatch):
    """--scale gpu without --model trains the preset's base UNet, then runs the alternating loop; here with tiny
    counts on the CPU (base batch 4 instead of 256): the preset's architecture, the files and the summary."""
    import json

    preset = finetune.PRESETS["gpu"]
    finetune.Phase2Config(**preset["phase2"])                      # the preset's hyper-parameters validate
    monkeypatch.setitem(preset, "base", dict(preset["base"], batch=4))
    out = tmp_path / "gpu"
    rc = cli_finetune(["--scale", "gpu", "--steps", "2", "--rounds", "1", "--base-steps", "1", "--iters", "1",
                      "--batch", "4", "--teacher-pairs", "8", "--teacher-steps", "2", "--eval-samples", "4", "--phase1-opt", "n=4", "--phase1-opt",
                                "grid_points=8", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["arch"] == preset["base"]["arch"] and cfg["training"]["steps"] == 1
    assert cfg["finetune"]["solver"] == "euler" and len(cfg["finetune"]["schedule"]["sigmas"]) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1] and summary["phase1"] == {"n": 4, "grid_points": 8}
    assert all(math.isfinite(r["rmse"]) and math.isfinite(r["frechet"]) for r in summary["rounds"])
    m, s, solver = finetune.load_finetuned(out / "model")
    x = finetune.model_samples(m, s, solver, n=3)
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="no base model"):
        finetune.train_base("cpu-small", tmp_path)


def test_cli_resume_with_other_settings_is_refused(tmp_path, capsys):
    """A --resume with another --steps (or solver, loss, model …) would reuse the old schedule while the summary
    records the new settings: it is refused with one line naming what differs, and nothing is changed."""
    out = tmp_path / "ft"
    tiny = ["--model", "toy2d-edm", "--rounds", "1", "--iters", "1", "--batch", "8", "--teacher-pairs", "8",
            "--teacher-steps", "2", "--eval-samples", "8", "--phase1-opt", "n=8", "--phase1-opt", "grid_points=8",
            "--device", "cpu", "--out", str(out)]
    assert cli_main(["finetune", "--steps", "3", *tiny]) == 0
    summary = (out / "summary.json").read_bytes()
    capsys.readouterr()
    for change, msg in ((["--steps", "4"], "steps was 3, now 4"), (["--steps", "3", "--solver", "heun"], "solver was"),
                        (["--steps", "3", "--loss", "dsm"], "phase2.loss was 'distill', now 'dsm'")):
        assert cli_main(["finetune", *change, *tiny, "--resume"]) == 2
        err = capsys.readouterr().err
        assert "dpmsched finetune: error: --resume with other settings" in err and msg in err, err
    assert cli_main(["finetune", "--steps", "3", *tiny]) == 2                # an existing run without --resume
    assert "pass --resume" in capsys.readouterr().err
    assert (out / "summary.json").read_bytes() == summary
    assert cli_main(["finetune", "--steps", "3", *tiny, "--resume"]) == 0   # the same settings resume fine
