"""Our solvers vs diffusers' schedulers on a tiny random UNet2DModel loaded through our adapter.

Setting (the pairs and their scheduler settings are ``adapters.DIFFUSERS_COUNTERPARTS``):
* model: ``adapters.tiny_unet_folder`` — UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
  block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4), random init (seed 0), ε-prediction,
  linear β (1e-4 … 0.02, T = 1000); saved to a temporary folder (``config.json`` + weights +
  ``scheduler_config.json``) and loaded back with :func:`dpmsched.models.load` — the real loading code.
* every scheduler: ``timestep_spacing="trailing"`` (integer timesteps 999, 874, …, so the σ's lie on the
  ᾱ table and our adapter feeds the network the same t); ``lower_order_final=True`` (diffusers' default;
  at N = 8 < 15 it lowers the last steps like ours); ``final_sigmas_type="zero"`` for Euler, DPM-Solver++
  and UniPC-bh2 (Heun always ends at 0); UniPC-bh1 with "zero" returns NaN in diffusers 0.42, so it and
  SASolverScheduler (which has no such option) end at the table's σ(t = 0); SA-Solver with ``tau_func`` ≡ 0.
* diffusers' schedulers cannot take our σ's (they hold σ in float32, and DPM/UniPC/SA-Solver accept only
  timesteps), so the comparison runs the other way: our float64 solver runs on the σ's of the scheduler's
  integer timesteps, read from our float64 ᾱ table (``adapters.schedule_of_scheduler``).
* model and samples in float64; tolerance max|ours − diffusers| ≤ 1e-4 · max|diffusers|.  The float32
  figures are in ``benchmarks/solvers.md`` (``benchmarks/bench_solvers.py``).
"""
import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is an optional extra: pip install 'dpmsched[hub]'")

from dpmsched import models  # noqa: E402
from dpmsched.adapters import DIFFUSERS_COUNTERPARTS, compare_with_diffusers, load_diffusers, tiny_unet_folder  # noqa: E402

STEPS = 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    den = models.load(str(tiny_unet_folder(tmp_path_factory.mktemp("tiny_unet"))))
    den.model.unet.double()
    return den


@pytest.mark.parametrize("case", sorted(DIFFUSERS_COUNTERPARTS))
def test_matches_diffusers_float64(tiny, case):
    z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours, theirs, rel = compare_with_diffusers(tiny, case, STEPS, z)
    assert torch.isfinite(theirs).all() and theirs.abs().max() > 1.0     # a non-trivial output
    assert rel <= 1e-4, (case, rel)


def test_adapter_loads_folder_layouts(tiny, tmp_path):
    assert tiny.event_shape == (1, 8, 8) and tiny.prediction == "epsilon"
    assert tiny.sigma_max == pytest.approx(157.4, rel=1e-3) and tiny.sigma_min == pytest.approx(0.01, rel=1e-2)
    with pytest.raises(FileNotFoundError, match="not a diffusers folder"):
        load_diffusers(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        load_diffusers(tmp_path / "missing")
    # the pipeline layout: model_index.json + unet/ + scheduler/
    pipe = tmp_path / "pipe"
    tiny_unet_folder(pipe / "unet")
    (pipe / "unet" / "scheduler_config.json").rename(pipe / "scheduler_config.json")
    (pipe / "scheduler").mkdir()
    (pipe / "scheduler_config.json").rename(pipe / "scheduler" / "scheduler_config.json")
    (pipe / "model_index.json").write_text('{"_class_name": "DDPMPipeline"}')
    den = models.load(str(pipe))
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(den(x, 3.0), tiny(x, 3.0), rtol=1e-5, atol=1e-5)   # same seed → same net


def test_from_vp_model_checks_noise():
    from dpmsched.adapters import from_vp_model

    with pytest.raises(TypeError, match="alphas_cumprod"):
        from_vp_model(lambda x, t: x, noise="linear")
    with pytest.raises(ValueError, match="strictly decreasing"):
        from_vp_model(lambda x, t: x, noise=[0.5, 0.9])


def test_a_pickle_only_diffusers_folder_is_refused(tmp_path, capsys):
    """diffusers falls back to unpickling ``diffusion_pytorch_model.bin``; we never do: a folder whose weights are
    only a .bin is refused by the loader and by the command (exit 2, one line, no output written)."""
    import pickle

    from dpmsched.cli import main

    folder = tiny_unet_folder(tmp_path / "unet")
    for w in folder.glob("*.safetensors"):
        w.unlink()
    (folder / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"weight": [1.0]}))
    with pytest.raises(ValueError, match="safetensors only"):
        load_diffusers(folder)
    out = tmp_path / "s.npy"
    assert main(["sample", "--model", str(folder), "--steps", "3", "--n", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "safetensors only" in err and "Traceback" not in err and not out.exists()
