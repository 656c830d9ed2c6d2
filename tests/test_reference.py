"""The diffusion math against an independent implementation: diffusers' DDPMScheduler,
DDIMScheduler and DPMSolverMultistepScheduler (a test dependency, never a runtime one), given the
same float64 tables, to 1e-10; the timestep spacings against the same schedulers' lists.
Where the two differ by design, the test says how and checks that difference."""

from unittest import mock

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from ddpm.diffusion import GaussianDiffusion
from ddpm.schedules import beta_schedule
from ddpm.spacing import timesteps

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


# Each clip mode (ddpm.diffusion.GaussianDiffusion.denoise) as diffusers spells it: the scheduler's
# options, and step()'s use_clipped_model_output (DDIM only: recompute eps from the clipped x_0).
# Dynamic thresholding is Imagen's, whose s has no cap: diffusers' sample_max_value (default 1, which
# makes it plain clipping) is set to infinity.
CLIP_MODES = {
    "recompute": ({"clip_sample": True}, True),
    "x0": ({"clip_sample": True}, False),
    "dynamic": ({"thresholding": True, "dynamic_thresholding_ratio": 0.995, "sample_max_value": float("inf")}, False),
    "none": ({"clip_sample": False}, False),
}


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
@pytest.mark.parametrize("mode", CLIP_MODES)
@pytest.mark.parametrize("t", [T - 1, T // 2, 1, 0])
def test_a_ddpm_step_equals_diffusers(prediction: str, variance: str, mode: str, t: int) -> None:
    ours = GaussianDiffusion(beta_schedule("linear", T), prediction)
    options, _ = CLIP_MODES[mode]
    scheduler = with_our_tables(
        DDPMScheduler(T, variance_type=variance, prediction_type=PREDICTION_TYPES[prediction], **options), ours
    )
    x, steps = x_t(), torch.full((4,), t)
    theirs = scheduler.step(stand_in(x, steps), t, x, generator=torch.Generator().manual_seed(1)).prev_sample
    assert largest_difference(ours.p_sample(stand_in, x, steps, noise(x.shape, 1), variance, mode), theirs) < 1e-10


# diffusers' DDIM step goes from t to t − T/n; ours takes any t_prev. t = 19 is the end of the chain (t_prev = −1).
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("mode", CLIP_MODES)
@pytest.mark.parametrize("t", [T - 1, T // 2, 19])
def test_a_ddim_step_equals_diffusers(prediction: str, eta: float, mode: str, t: int) -> None:
    ours = GaussianDiffusion(beta_schedule("cosine", T), prediction)
    options, recompute = CLIP_MODES[mode]
    scheduler = with_our_tables(DDIMScheduler(T, prediction_type=PREDICTION_TYPES[prediction], **options), ours)
    scheduler.set_timesteps(50)  # a stride of T/n = 20
    x, z, steps = x_t(), noise((4, 3, 8, 8), 2), torch.full((4,), t)
    theirs = scheduler.step(stand_in(x, steps), t, x, eta=eta, use_clipped_model_output=recompute, variance_noise=z)
    t_prev = steps - 20 if t >= 20 else torch.full_like(steps, -1)
    assert largest_difference(ours.ddim_step(stand_in, x, steps, t_prev, z, eta, mode), theirs.prev_sample) < 1e-10


def test_the_stand_in_makes_every_mode_act() -> None:
    # the equalities above would hold vacuously if x_0 never left [-1, 1] or the quantile never passed 1
    ours = GaussianDiffusion(beta_schedule("cosine", T))
    for t in (T - 1, T // 2, 19):
        x, steps = x_t(), torch.full((4,), t)
        x0 = ours.predict_x0(stand_in(x, steps), x, steps)
        assert (x0.abs() > 1).any() and (x0.flatten(1).abs().quantile(0.995, dim=1) > 1).all()


def diffusers_chain(scheduler: DDPMScheduler | DDIMScheduler, x_T: torch.Tensor, g: torch.Generator, **step):  # noqa: ANN201
    """diffusers' own sampling loop over its own timesteps, the noise drawn from `g`."""
    x = x_T
    for t in scheduler.timesteps:
        x = scheduler.step(stand_in(x, torch.full((len(x),), int(t))), t, x, generator=g, **step).prev_sample
    return x


def start(seed: int = 0) -> tuple[torch.Tensor, torch.Generator]:
    """x_T and the generator that then draws each step's noise, for both sides alike."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 8, 8, generator=g, dtype=F64), g


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
@pytest.mark.parametrize("mode", CLIP_MODES)
def test_full_ddpm_chains_equal_diffusers(prediction: str, mode: str) -> None:
    # T = 100, every timestep: diffusers' loop and ours, x_T and every z from generators seeded alike
    ours = GaussianDiffusion(beta_schedule("cosine", 100), prediction)
    options, _ = CLIP_MODES[mode]
    scheduler = with_our_tables(DDPMScheduler(100, prediction_type=PREDICTION_TYPES[prediction], **options), ours)
    scheduler.set_timesteps(100)
    x_T, g = start()
    *_, (_, x0) = ours.p_sample_loop_progressive(stand_in, x_T, g, "fixed_small", mode)
    x_T, g = start()
    assert largest_difference(x0, diffusers_chain(scheduler, x_T, g)) < 1e-10


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
@pytest.mark.parametrize("mode", CLIP_MODES)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_full_ddim_chains_equal_diffusers(prediction: str, mode: str, eta: float) -> None:
    # Our loop at every one of T = 100 timesteps is diffusers' loop with 100 steps (its list 99, ..., 0,
    # each step to t − 1); with 10 steps diffusers' list is 90, 80, ..., 0 ("leading"), which our
    # ddim_step follows here (our own list differs, test_by_design_..._steps_back below).
    ours = GaussianDiffusion(beta_schedule("cosine", 100), prediction)
    options, recompute = CLIP_MODES[mode]
    scheduler = with_our_tables(DDIMScheduler(100, prediction_type=PREDICTION_TYPES[prediction], **options), ours)
    scheduler.set_timesteps(100)
    x_T, g = start()
    *_, (_, x0) = ours.ddim_sample_loop_progressive(
        stand_in, x_T, timesteps("ddim", "linspace", 100, 100), eta, g, mode
    )
    x_T, g = start()
    assert (
        largest_difference(x0, diffusers_chain(scheduler, x_T, g, eta=eta, use_clipped_model_output=recompute)) < 1e-10
    )
    scheduler.set_timesteps(10)
    x, g = start()
    for t in scheduler.timesteps.tolist():
        steps = torch.full((4,), t)
        z = torch.randn(x.shape, generator=g, dtype=F64) if eta > 0 else torch.zeros_like(x)
        x = ours.ddim_step(stand_in, x, steps, (steps - 10).clamp(min=-1), z, eta, mode)  # −1: alphā = 1
    x_T, g = start()
    assert (
        largest_difference(x, diffusers_chain(scheduler, x_T, g, eta=eta, use_clipped_model_output=recompute)) < 1e-10
    )


def test_by_design_recompute_and_x0_differ_exactly_where_x0_was_clipped() -> None:
    # recompute (improved-diffusion) points the direction term along the eps of the clipped x_0; x0
    # (diffusers' default, use_clipped_model_output=False) along the model's own eps. They differ
    # exactly where x_0 was clipped, and there by a lot.
    ours = GaussianDiffusion(beta_schedule("linear", T))
    x, steps = x_t(), torch.full((4,), 500)
    recompute, kept = (
        ours.ddim_step(stand_in, x, steps, steps - 20, torch.zeros_like(x), 0.0, m) for m in ("recompute", "x0")
    )
    x0 = ours.predict_x0(stand_in(x, steps), x, steps)
    clipped = (x0.abs() > 1).any()
    assert clipped and largest_difference(recompute, kept) > 0.1
    unclipped = x0.abs() <= 1
    assert largest_difference(recompute[unclipped], kept[unclipped]) < 1e-10


def test_by_design_diffusers_ddim_steps_back_t_minus_T_over_n_whatever_its_timestep_list_says() -> None:
    # With timestep_spacing="linspace" the scheduler's own list goes 999, 979, 958, ... but step()
    # at 979 always goes to 979 − 1000 // 50 = 959. Our loop follows its list (ddim_timesteps):
    # so the same list through diffusers' step() lands one timestep off, at 959 instead of 958.
    ours = GaussianDiffusion(beta_schedule("linear", T))
    scheduler = with_our_tables(DDIMScheduler(T, clip_sample=False, timestep_spacing="linspace"), ours)
    scheduler.set_timesteps(50)
    assert scheduler.timesteps[:3].tolist() == [999, 979, 958]
    assert timesteps("ddim", "linspace", 50, T)[:3] == [999, 979, 958]
    x, steps = x_t(), torch.full((4,), 979)
    theirs = scheduler.step(stand_in(x, steps), 979, x, eta=0.0).prev_sample
    to_959 = ours.ddim_step(stand_in, x, steps, torch.full_like(steps, 959), torch.zeros_like(x), 0.0, "none")
    to_958 = ours.ddim_step(stand_in, x, steps, torch.full_like(steps, 958), torch.zeros_like(x), 0.0, "none")
    assert largest_difference(to_959, theirs) < 1e-10 and largest_difference(to_958, theirs) > 1e-4


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_q_sample_and_the_v_target_equal_diffusers(name: str) -> None:
    ours = GaussianDiffusion(beta_schedule(name, T), "v")
    scheduler = with_our_tables(DDPMScheduler(T), ours)
    x0, eps, steps = noise((5, 3, 4, 4), 3).clamp(-1, 1), noise((5, 3, 4, 4), 4), torch.tensor([0, 1, 500, 998, 999])
    assert largest_difference(ours.q_sample(x0, steps, eps), scheduler.add_noise(x0, eps, steps)) < 1e-10
    assert largest_difference(ours.training_target(x0, steps, eps), scheduler.get_velocity(x0, eps, steps)) < 1e-10


# --- the timestep spacings (ddpm.spacing) against diffusers' lists ----------------------------------

SCHEDULERS = {"ddim": DDIMScheduler, "dpmsolver++": DPMSolverMultistepScheduler}
# numpy's, about DPMSolverMultistepScheduler.set_timesteps' own np.array of a tensor, once a call:
# thousands of warnings recorded cost more than the lists
numpys_warning = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")


def diffusers_timesteps(scheduler: DDIMScheduler | DPMSolverMultistepScheduler, n: int) -> list[int]:
    scheduler.set_timesteps(n)
    return scheduler.timesteps.tolist()


def by_design(sampler: str, spacing: str, n: int, T: int, theirs: list[int]) -> bool:
    """The step counts where our list differs from diffusers' on purpose, each checked by its own
    test_by_design_... below."""
    return (
        (sampler, spacing, n) == ("ddim", "linspace", 1)
        or (sampler == "dpmsolver++" and spacing in ("linspace", "leading") and n == T)
        or (spacing == "trailing" and len(theirs) == n + 1)
    )


@numpys_warning
@pytest.mark.parametrize("T", [50, 1000])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++"])
def test_every_spacing_list_equals_diffusers_at_every_step_count(sampler: str, spacing: str, T: int) -> None:
    scheduler = SCHEDULERS[sampler](T, timestep_spacing=spacing)
    differ = []
    for n in range(1, T + 1):
        theirs = diffusers_timesteps(scheduler, n)
        if by_design(sampler, spacing, n, T, theirs):
            differ.append(n)
        else:
            assert timesteps(sampler, spacing, n, T) == theirs, n
    assert (
        len(differ) == {"linspace": 1, "leading": sampler == "dpmsolver++", "trailing": {50: 2, 1000: 62}[T]}[spacing]
    )


@pytest.mark.parametrize("T", [50, 1000])
def test_by_design_ddim_linspace_at_one_step_starts_from_T_minus_1(T: int) -> None:
    # diffusers' one step is at t = 0, which reads pure noise as almost clean data; our chain starts
    # from x_T, so its one step is at T − 1 (ddpm.spacing)
    assert diffusers_timesteps(DDIMScheduler(T, timestep_spacing="linspace"), 1) == [0]
    assert timesteps("ddim", "linspace", 1, T) == [T - 1]


@numpys_warning
@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++"])
@pytest.mark.parametrize(("T", "overshooting"), [(50, [29, 31]), (1000, [61, 103, 121, 122, 201])])
def test_by_design_trailing_takes_n_points_where_diffusers_arange_yields_n_plus_1(
    sampler: str, T: int, overshooting: list[int]
) -> None:
    # np.arange(T, 0, −T/n) in floats leaves T − n·T/n just above 0 at these n, so diffusers lists
    # n + 1 timesteps, the last −1 (no timestep at all); ours takes the n it asked for
    scheduler = SCHEDULERS[sampler](T, timestep_spacing="trailing")
    for n in overshooting:
        theirs = diffusers_timesteps(scheduler, n)
        assert len(theirs) == n + 1 and theirs[-1] == -1
        assert timesteps(sampler, "trailing", n, T) == theirs[:n]
    overshoots = [n for n in range(1, T + 1) if len(np.arange(T, 0, -T / n)) == n + 1]
    assert overshoots[: len(overshooting)] == overshooting and len(overshoots) == {50: 2, 1000: 62}[T]


@numpys_warning
@pytest.mark.parametrize("T", [50, 1000])
@pytest.mark.parametrize("spacing", ["linspace", "leading"])
def test_by_design_dpm_solver_refuses_a_list_that_rounding_makes_repeat(spacing: str, T: int) -> None:
    # at n = T, n + 1 points over T − 1 (linspace) or a stride T // (T + 1) = 0 (leading) repeat
    # timesteps: diffusers would step from t to t (h = 0); ours refuses in one line
    theirs = diffusers_timesteps(DPMSolverMultistepScheduler(T, timestep_spacing=spacing), T)
    assert len(theirs) == T and len(set(theirs)) < T
    with pytest.raises(ValueError, match=f"{spacing} repeats timesteps at {T} steps of T = {T}; take fewer steps"):
        timesteps("dpmsolver++", spacing, T, T)


@pytest.mark.parametrize("T", [50, 100, 1000])
def test_ddim_quadratic_is_the_ddim_papers_code(T: int) -> None:
    # Song et al.'s code (runners/diffusion.py, skip_type "quad"), ascending; ours descending
    # at every n, the paper's 50 and 100 steps included, where the first points round to 0 alike: the
    # list keeps those repeats, as their runs did (a DDIM step from t to t spends an evaluation)
    for n in [n for n in (*range(1, 30), 50, 100, T) if n <= T]:
        paper = [int(s) for s in np.linspace(0, np.sqrt(T * 0.8), n) ** 2]
        assert timesteps("ddim", "quadratic", n, T) == paper[::-1], n
    assert timesteps("ddim", "quadratic", 50, 1000)[-3:] == [1, 0, 0]


def test_a_ddim_step_from_t_to_t_is_the_identity_without_clipping() -> None:
    # what quadratic's repeated t = 0 costs: nothing but the evaluation (η = 0, x̂_0 as predicted)
    ours = GaussianDiffusion(beta_schedule("linear", T))
    x, steps = x_t(), torch.full((4,), 0)
    again = ours.ddim_step(stand_in, x, steps, steps, torch.zeros_like(x), 0.0, "none")
    assert largest_difference(again, x) < 1e-12


# --- DPM-Solver++(2M) full chains against diffusers' loop ------------------------------------------

# The clip modes as DPMSolverMultistepScheduler spells them: it has no clip_sample, only thresholding,
# which with sample_max_value = 1 is plain clipping of x̂_0. Only x̂_0 enters a data-prediction step, so
# recompute and x0 are one chain (ddpm.diffusion.GaussianDiffusion.dpm_solver_sample_loop_progressive).
DPM_CLIP_MODES = {
    "x0": {"thresholding": True, "sample_max_value": 1.0},
    "dynamic": {"thresholding": True, "dynamic_thresholding_ratio": 0.995, "sample_max_value": float("inf")},
    "none": {"thresholding": False},
}


def dpm_solver(diffusion: GaussianDiffusion, spacing: str, n: int, **options) -> DPMSolverMultistepScheduler:  # noqa: ANN003
    """diffusers' DPM-Solver++(2M) with n steps, computing in float64 from our tables (its own are float32):
    its sigmas (σ/α at its timesteps, then 0 for the last step to the data) are recomputed after
    set_timesteps, which casts them to float32."""
    scheduler = DPMSolverMultistepScheduler(
        diffusion.num_timesteps,
        solver_order=2,
        algorithm_type="dpmsolver++",
        timestep_spacing=spacing,
        prediction_type=PREDICTION_TYPES[diffusion.prediction],
        **options,
    )
    scheduler.alphas_cumprod = diffusion.alphas_cumprod.clone()
    scheduler.alpha_t, scheduler.sigma_t = (
        diffusion.sqrt_alphas_cumprod.clone(),
        diffusion.sqrt_one_minus_alphas_cumprod.clone(),
    )
    scheduler.lambda_t = scheduler.alpha_t.log() - scheduler.sigma_t.log()
    scheduler.set_timesteps(n)
    alphas_cumprod = diffusion.alphas_cumprod[scheduler.timesteps]
    scheduler.sigmas = torch.cat([((1 - alphas_cumprod) / alphas_cumprod).sqrt(), alphas_cumprod.new_zeros(1)])
    return scheduler


def diffusers_dpm_chain(
    scheduler: DPMSolverMultistepScheduler, x_T: torch.Tensor, float64: bool = True
) -> torch.Tensor:
    """diffusers' own loop over its own timesteps. Its step() casts the sample with
    `sample.to(torch.float32)` whatever the tables: with `float64`, torch.float32 is patched to
    float64 inside step(), so that it computes in float64 throughout."""
    x = x_T
    for t in scheduler.timesteps:
        model_output = stand_in(x, torch.full((len(x),), int(t)))
        if float64:
            with mock.patch.object(torch, "float32", F64):
                x = scheduler.step(model_output, t, x).prev_sample
        else:
            x = scheduler.step(model_output, t, x).prev_sample
    return x


@numpys_warning
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
@pytest.mark.parametrize("mode", DPM_CLIP_MODES)
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_full_dpm_solver_chains_equal_diffusers(prediction: str, mode: str, spacing: str) -> None:
    # T = 100; 1 step (first order, onto x̂_0), 2 (first order twice), 3 (one second-order step) and 10;
    # diffusers' final step to sigma = 0 is first order (final_sigmas_type "zero"), as ours
    ours = GaussianDiffusion(beta_schedule("cosine", 100), prediction)
    for n in (1, 2, 3, 10):
        x_T, _ = start()
        *_, (_, x0) = ours.dpm_solver_sample_loop_progressive(
            stand_in, x_T, timesteps("dpmsolver++", spacing, n, 100), mode
        )
        theirs = diffusers_dpm_chain(dpm_solver(ours, spacing, n, **DPM_CLIP_MODES[mode]), start()[0])
        assert largest_difference(x0, theirs) < 1e-10, n


@numpys_warning
def test_the_float64_patch_hides_nothing_plain_float32_diffusers_agrees_to_1e_4() -> None:
    # the same chain through diffusers as it ships (float32 sigmas and samples): only float32's rounding apart
    ours = GaussianDiffusion(beta_schedule("cosine", 100), "v")
    for mode, options in DPM_CLIP_MODES.items():
        x_T, _ = start()
        *_, (_, x0) = ours.dpm_solver_sample_loop_progressive(
            stand_in, x_T, timesteps("dpmsolver++", "trailing", 10, 100), mode
        )
        scheduler = DPMSolverMultistepScheduler(
            100,
            solver_order=2,
            algorithm_type="dpmsolver++",
            timestep_spacing="trailing",
            prediction_type="v_prediction",
            trained_betas=ours.betas.numpy(),
            **options,
        )
        scheduler.set_timesteps(10)
        theirs = diffusers_dpm_chain(scheduler, start()[0], float64=False)
        assert theirs.dtype == F64 and 1e-9 < largest_difference(x0, theirs) < 1e-4 * x0.abs().max().item(), mode


def test_the_stand_in_makes_every_dpm_solver_mode_act() -> None:
    # the equalities above would hold vacuously if clipping and thresholding never changed the chain
    ours = GaussianDiffusion(beta_schedule("cosine", 100))
    chains = {
        mode: list(
            ours.dpm_solver_sample_loop_progressive(
                stand_in, start()[0], timesteps("dpmsolver++", "trailing", 10, 100), mode
            )
        )[-1][1]
        for mode in DPM_CLIP_MODES
    }
    assert largest_difference(chains["x0"], chains["dynamic"]) > 0.1
    assert (
        largest_difference(chains["x0"], chains["none"]) > 0.1
        and largest_difference(chains["dynamic"], chains["none"]) > 0.1
    )


# --- DDIM full chains over diffusers' own lists ----------------------------------------------------


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize(("spacing", "step_counts"), [("leading", (1, 7)), ("trailing", (4, 10))])
def test_full_ddim_chains_over_leading_and_trailing_equal_diffusers(
    prediction: str, eta: float, spacing: str, step_counts: tuple[int, ...]
) -> None:
    # diffusers' step always goes to t − T // n: for leading (any n) and for trailing with n dividing T
    # that is the next timestep of its list (and the last goes to alphā = 1), so its loop is our loop
    ours = GaussianDiffusion(beta_schedule("cosine", 100), prediction)
    for mode, (options, recompute) in CLIP_MODES.items():
        scheduler = with_our_tables(
            DDIMScheduler(100, prediction_type=PREDICTION_TYPES[prediction], timestep_spacing=spacing, **options), ours
        )
        for n in step_counts:
            scheduler.set_timesteps(n)
            x_T, g = start()
            *_, (_, x0) = ours.ddim_sample_loop_progressive(
                stand_in, x_T, timesteps("ddim", spacing, n, 100), eta, g, mode
            )
            x_T, g = start()
            theirs = diffusers_chain(scheduler, x_T, g, eta=eta, use_clipped_model_output=recompute)
            assert largest_difference(x0, theirs) < 1e-10, (mode, n)
