"""The diffusion math against an independent implementation: diffusers' DDPMScheduler and
DDIMScheduler (a test dependency, never a runtime one), given the same float64 tables, to 1e-10.
Where the two differ by design, the test says how and checks that difference."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ddpm.diffusion import GaussianDiffusion
from ddpm.schedules import beta_schedule

T = 1000
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
F64 = torch.float64


def stand_in(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic "model" whose output depends on x_t and t, and whose x_0 leaves [-1, 1]."""
    return 0.3 * x + 0.1 + 2e-4 * t.to(x.dtype).reshape(-1, 1, 1, 1)


def with_our_tables(scheduler: DDPMScheduler | DDIMScheduler, diffusion: GaussianDiffusion):  # noqa: ANN201
    """The scheduler computing in float64 from our tables (its own are float32)."""
    scheduler.betas = diffusion.betas.clone()
    scheduler.alphas = 1 - scheduler.betas
    scheduler.alphas_cumprod = diffusion.alphas_cumprod.clone()
    scheduler.one = scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=F64)  # alphā before the first step
    return scheduler


def noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The noise diffusers' step() draws from a CPU generator seeded so (its randn_tensor)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def x_t() -> torch.Tensor:
    return 1.5 * noise((4, 3, 8, 8), 0)


def largest_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("t", [T - 1, T // 2, 1, 0])
def test_a_ddpm_step_equals_diffusers(prediction: str, variance: str, clip: bool, t: int) -> None:
    ours = GaussianDiffusion(beta_schedule("linear", T), prediction)
    scheduler = with_our_tables(
        DDPMScheduler(T, variance_type=variance, clip_sample=clip, prediction_type=PREDICTION_TYPES[prediction]), ours
    )
    x, steps = x_t(), torch.full((4,), t)
    theirs = scheduler.step(stand_in(x, steps), t, x, generator=torch.Generator().manual_seed(1)).prev_sample
    assert largest_difference(ours.p_sample(stand_in, x, steps, noise(x.shape, 1), variance, clip), theirs) < 1e-10


# diffusers' DDIM step goes from t to t − T/n; ours takes any t_prev. t = 19 is the end of the chain (t_prev = −1).
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("t", [T - 1, T // 2, 19])
def test_a_ddim_step_equals_diffusers(prediction: str, eta: float, clip: bool, t: int) -> None:
    ours = GaussianDiffusion(beta_schedule("cosine", T), prediction)
    scheduler = with_our_tables(DDIMScheduler(T, clip_sample=clip, prediction_type=PREDICTION_TYPES[prediction]), ours)
    scheduler.set_timesteps(50)  # a stride of T/n = 20
    x, z, steps = x_t(), noise((4, 3, 8, 8), 2), torch.full((4,), t)
    # use_clipped_model_output=True: the direction term uses the eps of the clipped x_0, as ours does (see below)
    theirs = scheduler.step(stand_in(x, steps), t, x, eta=eta, use_clipped_model_output=True, variance_noise=z)
    ours_prev = ours.ddim_step(stand_in, x, steps, steps - 20 if t >= 20 else torch.full_like(steps, -1), z, eta, clip)
    assert largest_difference(ours_prev, theirs.prev_sample) < 1e-10


def test_by_design_diffusers_ddim_uses_the_unclipped_eps_by_default() -> None:
    # With clipping, diffusers' DDIM by default (use_clipped_model_output=False) points the chain
    # along the model's raw eps while ours recomputes eps from the clipped x_0, so that x_0 and eps
    # stay consistent (as improved-diffusion does). They differ exactly where x_0 was clipped.
    ours = GaussianDiffusion(beta_schedule("linear", T))
    scheduler = with_our_tables(DDIMScheduler(T, clip_sample=True), ours)
    scheduler.set_timesteps(50)
    x, steps = x_t(), torch.full((4,), 500)
    ours_prev = ours.ddim_step(stand_in, x, steps, steps - 20, torch.zeros_like(x), 0.0, True)
    default = scheduler.step(stand_in(x, steps), 500, x, eta=0.0).prev_sample
    x0 = ours.predict_x0(stand_in(x, steps), x, steps)
    clipped = (x0.abs() > 1).any()
    assert clipped and largest_difference(ours_prev, default) > 0.1
    unclipped = x0.abs() <= 1  # where nothing was clipped, the two agree
    assert largest_difference(ours_prev[unclipped], default[unclipped]) < 1e-10


def test_by_design_diffusers_ddim_steps_back_t_minus_T_over_n_whatever_its_timestep_list_says() -> None:
    # With timestep_spacing="linspace" the scheduler's own list goes 999, 979, 958, ... but step()
    # at 979 always goes to 979 − 1000 // 50 = 959. Our loop follows its list (ddim_timesteps):
    # so the same list through diffusers' step() lands one timestep off, at 959 instead of 958.
    ours = GaussianDiffusion(beta_schedule("linear", T))
    scheduler = with_our_tables(DDIMScheduler(T, clip_sample=False, timestep_spacing="linspace"), ours)
    scheduler.set_timesteps(50)
    assert scheduler.timesteps[:3].tolist() == [999, 979, 958]
    assert ours.ddim_timesteps(50).flip(0)[:3].tolist() == [999, 979, 958]
    x, steps = x_t(), torch.full((4,), 979)
    theirs = scheduler.step(stand_in(x, steps), 979, x, eta=0.0).prev_sample
    to_959 = ours.ddim_step(stand_in, x, steps, torch.full_like(steps, 959), torch.zeros_like(x), 0.0, False)
    to_958 = ours.ddim_step(stand_in, x, steps, torch.full_like(steps, 958), torch.zeros_like(x), 0.0, False)
    assert largest_difference(to_959, theirs) < 1e-10 and largest_difference(to_958, theirs) > 1e-4


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_q_sample_and_the_v_target_equal_diffusers(name: str) -> None:
    ours = GaussianDiffusion(beta_schedule(name, T), "v")
    scheduler = with_our_tables(DDPMScheduler(T), ours)
    x0, eps, steps = noise((5, 3, 4, 4), 3).clamp(-1, 1), noise((5, 3, 4, 4), 4), torch.tensor([0, 1, 500, 998, 999])
    assert largest_difference(ours.q_sample(x0, steps, eps), scheduler.add_noise(x0, eps, steps)) < 1e-10
    assert largest_difference(ours.training_target(x0, steps, eps), scheduler.get_velocity(x0, eps, steps)) < 1e-10
