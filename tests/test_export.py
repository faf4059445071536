"""adapters.to_diffusers / to_kdiffusion: our σ's set on diffusers schedulers, and sampling with them
matches our own solvers on the same σ's (tiny random UNet2DModel, float64)."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional extra: pip install 'dpmsched[hub]'")

from dpmsched import adapters, models, solvers  # noqa: E402
from dpmsched.adapters import DIFFUSERS_COMMON, sample_with_diffusers, schedule_of_scheduler, tiny_unet_folder  # noqa: E402
from dpmsched.schedules import Schedule  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    den = models.load(str(tiny_unet_folder(tmp_path_factory.mktemp("tiny_unet"))))
    den.model.unet.double()
    return den


def _on_table(den, idx, final_zero=True):
    """A schedule whose σ's are the ᾱ-table σ's at integer timesteps ``idx`` (decreasing)."""
    sig = den.noise.sigmas[np.asarray(idx)]
    return Schedule(np.append(sig, 0.0) if final_zero else sig, "on-table")


def _z(n=3):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_euler_takes_any_sigmas_and_matches_ours(tiny):
    s = _on_table(tiny, [950, 700, 420, 260, 90, 20])          # uneven, like an optimized schedule
    sch = adapters.to_diffusers(s, diffusers.EulerDiscreteScheduler(**DIFFUSERS_COMMON))
    np.testing.assert_allclose(sch.sigmas.numpy(), s.sigmas, rtol=1e-6)
    x = float(s.sigmas[0]) * _z()
    with torch.no_grad():
        ours = solvers.euler(tiny, x, s)
    theirs = sample_with_diffusers(tiny, sch, x)
    assert theirs.abs().max() > 1.0 and _rel(ours, theirs) <= 1e-4


@pytest.mark.parametrize("cls,ours_name,extra", [
    ("DPMSolverMultistepScheduler", "dpmpp_2m", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                 "lower_order_final": True, "final_sigmas_type": "zero"}),
    ("HeunDiscreteScheduler", "heun", {}),
])
def test_timestep_schedulers_round_trip_and_match(tiny, cls, ours_name, extra):
    s = _on_table(tiny, [990, 610, 300, 120, 35])
    sch = adapters.to_diffusers(s, getattr(diffusers, cls)(**DIFFUSERS_COMMON, **extra))
    back = schedule_of_scheduler(sch, tiny.noise)
    np.testing.assert_allclose(back.sigmas, s.sigmas, rtol=1e-12)
    x = float(s.sigmas[0]) * _z()
    with torch.no_grad():
        ours = solvers.get(ours_name)(tiny, x, s)
    theirs = sample_with_diffusers(tiny, sch, x)
    assert _rel(ours, theirs) <= 1e-4


def test_off_table_sigmas_round_with_warning_and_clashes_raise(tiny):
    sch = diffusers.DPMSolverMultistepScheduler(**DIFFUSERS_COMMON, final_sigmas_type="zero")
    with pytest.warns(UserWarning, match="integer timesteps"):
        adapters.to_diffusers(Schedule.karras(4, sigma_min=0.002, sigma_max=80.0).with_final_zero(), sch, rtol=1e-6)
    assert len(sch.timesteps) == 5
    fine = Schedule(np.array([10.0, 9.999, 1.0, 0.0]))
    with pytest.raises(ValueError, match="same timestep"):
        adapters.to_diffusers(fine, sch)
    with pytest.raises(ValueError, match="with_final_zero"):
        adapters.to_diffusers(Schedule.karras(4), sch)                      # ends at 0.002, the scheduler at 0


@pytest.mark.parametrize("cls", ["DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler"])
def test_schedulers_without_custom_sigmas_name_the_alternatives(cls):
    with pytest.raises(ValueError, match="EulerDiscreteScheduler.*DPMSolverMultistepScheduler"):
        adapters.to_diffusers(Schedule.karras(5).with_final_zero(), getattr(diffusers, cls)(**DIFFUSERS_COMMON))


def test_edm_euler_reproduces_sigmas():
    s = Schedule(np.array([80.0, 17.0, 2.5, 0.31, 0.011, 0.0]))
    sch = adapters.to_diffusers(s, diffusers.EDMEulerScheduler())
    np.testing.assert_allclose(sch.sigmas.numpy(), s.sigmas, rtol=1e-5)


def test_to_kdiffusion_appends_one_zero():
    s = Schedule.karras(5)
    k = adapters.to_kdiffusion(s)
    assert k.dtype == torch.float64 and k.shape == (7,) and k[-1] == 0
    np.testing.assert_array_equal(k[:-1].numpy(), s.sigmas)
    assert torch.equal(adapters.to_kdiffusion(s.with_final_zero()), k)
