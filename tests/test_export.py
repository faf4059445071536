"""adapters.to_diffusers / to_kdiffusion: our σ's set on diffusers schedulers, and sampling with them
matches our own solvers on the same σ's (tiny random UNet2DModel, float64)."""
import inspect

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


# --- the practitioner's call (notebook 07): a diffusers pipeline resets its scheduler at every call -------------

def _retrieve_timesteps():
    """diffusers' own ``retrieve_timesteps``, the function every pipeline that takes ``sigmas=`` / ``timesteps=``
    calls: StableDiffusionPipeline's module needs ``transformers``, so without it the identical copy in a pipeline
    module that imports without it (diffusers 0.42: Kandinsky 6 SR)."""
    try:
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
    except ImportError:
        try:
            from diffusers.pipelines.kandinsky6.pipeline_kandinsky6_sr import retrieve_timesteps
        except ImportError:
            pytest.skip("no diffusers pipeline module with retrieve_timesteps imports here (install transformers)")
    return retrieve_timesteps


class TinyPipeline(diffusers.DiffusionPipeline):
    """An unconditional pipeline written the way diffusers writes its pipelines: the call takes
    ``num_inference_steps`` / ``timesteps`` / ``sigmas`` and hands them to diffusers' own ``retrieve_timesteps``
    (StableDiffusionPipeline's), which calls ``scheduler.set_timesteps`` — so whatever was set on the scheduler
    before the call is replaced."""

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, latents, num_inference_steps=50, timesteps=None, sigmas=None, generator=None):
        timesteps, _ = _retrieve_timesteps()(self.scheduler, num_inference_steps, latents.device, timesteps, sigmas)
        x = latents * self.scheduler.init_noise_sigma
        kw = {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        for t in timesteps:
            out = self.unet(self.scheduler.scale_model_input(x, t), t).sample
            x = self.scheduler.step(out, t, x, **kw).prev_sample
        return x


def _scheduler(name):
    cls = getattr(diffusers, name)
    if name == "EDMEulerScheduler":
        return cls()
    accepted = inspect.signature(cls.__init__).parameters
    cfg = {k: v for k, v in {**DIFFUSERS_COMMON, "final_sigmas_type": "zero"}.items() if k in accepted}
    return cls(**cfg)


def _exported(tiny, name):
    """An uneven (optimizer-like) schedule each scheduler can take: on the ᾱ table, ending at 0."""
    if name == "EDMEulerScheduler":
        return Schedule(np.array([80.0, 17.0, 2.5, 0.31, 0.011, 0.0]))
    return _on_table(tiny, [900, 700, 420, 260, 90, 20])


SUPPORTED = adapters.SIGMA_SCHEDULERS + adapters.TIMESTEP_SCHEDULERS
#: the schedulers with a deterministic counterpart among our solvers
OURS = {"EulerDiscreteScheduler": "euler", "DPMSolverMultistepScheduler": "dpmpp_2m", "HeunDiscreteScheduler": "heun"}


def test_a_pipeline_call_without_steps_or_schedule_raises(tiny):
    """The call notebook 07 used to document — num_inference_steps=None and no timesteps — fails in set_timesteps."""
    pipe = TinyPipeline(tiny.model.unet, _scheduler("EulerDiscreteScheduler"))
    adapters.to_diffusers(_exported(tiny, "EulerDiscreteScheduler"), pipe.scheduler)
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe(_z(1), num_inference_steps=None)


@pytest.mark.parametrize("name", SUPPORTED)
def test_the_documented_pipeline_call_runs_the_exported_schedule(tiny, name):
    """``pipe(..., **adapters.pipeline_kwargs(schedule, pipe.scheduler))`` steps through exactly the schedule that
    ``to_diffusers`` sets, for every scheduler ``to_diffusers`` supports, and samples like that scheduler (and like
    our own solver where we have its counterpart)."""
    s = _exported(tiny, name)
    ref = adapters.to_diffusers(s, _scheduler(name))              # what to_diffusers sets
    pipe = TinyPipeline(tiny.model.unet, _scheduler(name))
    pipe.scheduler.set_timesteps(3)                                # a stale state: the call must replace it
    kw = adapters.pipeline_kwargs(s, pipe.scheduler)
    assert set(kw) == ({"sigmas"} if name in adapters.SIGMA_SCHEDULERS else {"timesteps"})
    z = _z()
    out = pipe(z, num_inference_steps=None, generator=torch.Generator().manual_seed(5), **kw)
    np.testing.assert_array_equal(pipe.scheduler.timesteps.numpy(), ref.timesteps.numpy())
    if hasattr(ref, "sigmas"):
        np.testing.assert_array_equal(np.asarray(pipe.scheduler.sigmas), np.asarray(ref.sigmas))
    assert torch.isfinite(out).all()
    # the same loop on the scheduler that to_diffusers configured gives the same sample
    again = TinyPipeline(tiny.model.unet, ref)
    x = z * ref.init_noise_sigma
    kw_step = {"generator": torch.Generator().manual_seed(5)} if "generator" in inspect.signature(ref.step).parameters else {}
    with torch.no_grad():
        for t in ref.timesteps:
            x = ref.step(again.unet(ref.scale_model_input(x, t), t).sample, t, x, **kw_step).prev_sample
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    if name in OURS:                                               # and our solver on the same sigmas
        pipe2 = TinyPipeline(tiny.model.unet, _scheduler(name))
        x_edm = float(s.sigmas[0]) * z
        # the pipeline starts at latents * init_noise_sigma: the EDM state itself (Euler, Heun) or x_t = x / sqrt(1 + s^2)
        ve = float(ref.init_noise_sigma) != 1.0
        latents = x_edm / float(ref.init_noise_sigma) if ve else x_edm / np.sqrt(1.0 + float(s.sigmas[0]) ** 2)
        theirs = pipe2(latents, num_inference_steps=None, **adapters.pipeline_kwargs(s, pipe2.scheduler))
        with torch.no_grad():
            ours = solvers.get(OURS[name])(tiny, x_edm, s)
        assert _rel(ours, theirs) <= 1e-4, name


def test_pipeline_kwargs_does_not_change_the_scheduler(tiny):
    sch = _scheduler("DPMSolverMultistepScheduler")
    sch.set_timesteps(4)
    before = sch.timesteps.clone()
    kw = adapters.pipeline_kwargs(_exported(tiny, "DPMSolverMultistepScheduler"), sch)
    assert kw == {"timesteps": [900, 700, 420, 260, 90, 20]} and torch.equal(sch.timesteps, before)
