"""Our solvers vs diffusers' schedulers on a tiny random UNet2DModel loaded through our adapter.

Setting (documented as the issue asks):
* model: ``UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
  layers_per_block=1, norm_num_groups=4)``, random init (seed 0), ε-prediction, linear β (1e-4 … 0.02,
  T = 1000); saved to a temporary folder (``config.json`` + weights + ``scheduler_config.json``) and
  loaded back with :func:`dpmsched.denoisers.load` — the real loading code.
* every scheduler: ``timestep_spacing="trailing"`` (integer timesteps 999, 874, …, so the σ's lie on the
  ᾱ table and our adapter feeds the network the same t), ``lower_order_final=True`` (diffusers' default;
  at N = 8 < 15 it lowers the last steps like ours), ``final_sigmas_type="zero"`` where the scheduler has
  it (Euler, DPM-Solver++, UniPC-bh2; Heun always ends at 0; UniPC-bh1: "sigma_min", see CASES).  SASolverScheduler has no final_sigmas_type:
  it stops at the table's σ(t = 0); ``tau_func = 0`` (the ODE).
* diffusers' schedulers cannot take our σ's (they hold σ in float32 and DPM/UniPC/SA-Solver accept
  only timesteps), so the comparison runs the other way: our float64 solver runs on the σ's of the
  scheduler's integer timesteps, read from our float64 ᾱ table (``schedule_of_scheduler``).
* model and samples in float64; tolerance max|ours − diffusers| ≤ 1e-4 · max|diffusers|.  The
  float32 run of diffusers is reported by ``benchmarks/bench_solvers.py``.
"""
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional extra: pip install 'dpmsched[hub]'")

from dpmsched import denoisers, solvers  # noqa: E402
from dpmsched.denoisers.adapters import sample_with_diffusers, schedule_of_scheduler  # noqa: E402

STEPS = 8
COMMON = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
          "prediction_type": "epsilon", "timestep_spacing": "trailing"}

#: (diffusers scheduler, its extra config, our solver, its options)
CASES = {
    "euler": ("EulerDiscreteScheduler", {"final_sigmas_type": "zero"}, "euler", {}),
    "heun": ("HeunDiscreteScheduler", {}, "heun", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                 "solver_type": "midpoint", "lower_order_final": True, "final_sigmas_type": "zero"}, "dpmpp_2m", {}),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3,
                 "solver_type": "midpoint", "lower_order_final": True, "final_sigmas_type": "zero"}, "dpmpp_3m", {}),
    "unipc_bh2_2": ("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2", "lower_order_final": True,
                    "final_sigmas_type": "zero"}, "unipc", {"order": 2, "variant": "bh2"}),
    # bh1 with final_sigmas_type="zero" returns NaN in diffusers 0.42 (measured; B(h) = −h is −∞ on the
    # jump to σ = 0), so bh1 is compared ending at σ(t = 0) = "sigma_min"
    "unipc_bh1_3": ("UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1", "lower_order_final": True,
                    "final_sigmas_type": "sigma_min"}, "unipc", {"order": 3, "variant": "bh1"}),
    "sa_solver_3_4": ("SASolverScheduler", {"predictor_order": 3, "corrector_order": 4, "lower_order_final": True,
                      "algorithm_type": "data_prediction", "tau_func": lambda t: 0},
                      "sa_solver", {"predictor_order": 3, "corrector_order": 4, "tau": 0.0}),
    "sa_solver_2_2": ("SASolverScheduler", {"predictor_order": 2, "corrector_order": 2, "lower_order_final": True,
                      "algorithm_type": "data_prediction", "tau_func": lambda t: 0},
                      "sa_solver", {"predictor_order": 2, "corrector_order": 2, "tau": 0.0}),
}


def make_tiny_unet_folder(path, seed: int = 0):
    """Save a tiny random ε-prediction UNet2DModel + DDPM scheduler config to ``path``."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(path)
    diffusers.DDPMScheduler(**{k: v for k, v in COMMON.items() if k != "timestep_spacing"}).save_config(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_unet_folder(tmp_path_factory.mktemp("tiny_unet"))
    den = denoisers.load(str(path))
    den.model.unet.double()
    return den


def _scheduler(cls, extra):
    sched = getattr(diffusers, cls)(**COMMON, **extra)
    sched.set_timesteps(STEPS)
    return sched


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_diffusers_float64(tiny, case):
    cls, extra, ours, opts = CASES[case]
    sched = _scheduler(cls, extra)
    s = schedule_of_scheduler(sched, tiny.noise)
    z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = s.sigmas[0] * z
    theirs = sample_with_diffusers(tiny, sched, x)
    with torch.no_grad():
        mine = solvers.get(ours)(tiny, x, s, **opts)
    rel = float((mine - theirs).abs().max() / theirs.abs().max())
    assert rel <= 1e-4, (case, rel)


def test_adapter_loads_folder_layouts(tiny, tmp_path):
    assert tiny.event_shape == (1, 8, 8) and tiny.prediction == "epsilon"
    assert tiny.sigma_max == pytest.approx(157.4, rel=1e-3) and tiny.sigma_min == pytest.approx(0.01, rel=1e-2)
    with pytest.raises(FileNotFoundError, match="not a diffusers folder"):
        from dpmsched.denoisers.adapters import load_diffusers

        load_diffusers(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        load_diffusers(tmp_path / "missing")
