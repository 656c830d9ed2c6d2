"""Learned variances (Nichol & Dhariwal 2021, section 3.1, "learned_range"): the log-variance's closed
form, one DDPM step against diffusers' DDPMScheduler(variance_type="learned_range"), L_hybrid by hand
with its stop-gradient, and the bound against an independent float64 (scipy) computation."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CPU, tiny_config
from scipy.stats import norm

from ddpm.checkpoint import load_trained
from ddpm.config import EvaluateConfig, SampleConfig, SweepConfig
from ddpm.diffusion import GaussianDiffusion, normal_kl
from ddpm.errors import UserError
from ddpm.evaluate import likelihood
from ddpm.sample import check_learned_variance, generate
from ddpm.schedules import beta_schedule
from ddpm.state import _differences
from ddpm.sweep import check_sweep
from ddpm.train import train
from ddpm.unet import UNet

T = 100


def process(prediction: str = "eps", variance: str = "learned_range") -> GaussianDiffusion:
    return GaussianDiffusion(beta_schedule("linear", T), prediction, variance)


def fixed_output(output: torch.Tensor):  # noqa: ANN201
    """A fake model that answers `output` (B, 2C, ...) whatever it is asked."""
    return lambda x, t: output


def test_log_variance_ends_are_the_clipped_tables_in_closed_form() -> None:
    d = process()
    betas = beta_schedule("linear", T)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    t = torch.tensor([0, 1, 50, T - 1])
    beta_tilde = betas[t] * (1 - alphas_cumprod[t - 1]) / (1 - alphas_cumprod[t])
    beta_tilde[0] = betas[1] * (1 - alphas_cumprod[0]) / (1 - alphas_cumprod[1])  # t = 0: the next step's
    beta = torch.where(t == 0, beta_tilde, betas[t])
    ones = torch.ones(4, 1, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(d.learned_log_variance(-ones, t).flatten(), beta_tilde.log(), rtol=1e-13, atol=0)
    torch.testing.assert_close(d.learned_log_variance(ones, t).flatten(), beta.log(), rtol=1e-13, atol=0)
    # halfway, v = 0: the geometric mean of the two
    middle = d.learned_log_variance(0 * ones, t).flatten()
    torch.testing.assert_close(middle, 0.5 * (beta.log() + beta_tilde.log()), rtol=1e-13, atol=0)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_step_equals_diffusers_learned_range(prediction: str, clip: bool) -> None:
    diffusers = pytest.importorskip("diffusers")
    betas = beta_schedule("linear", T)
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=T, trained_betas=betas.numpy(), variance_type="learned_range", clip_sample=clip,
        prediction_type={"eps": "epsilon", "v": "v_prediction"}[prediction],
    )  # fmt: skip
    d = process(prediction)
    g = torch.Generator().manual_seed(0)
    for step in (T - 1, T // 2, 1):
        x = torch.randn(1, 3, 4, 4, generator=g)
        output = torch.randn(1, 6, 4, 4, generator=g)  # v ∈ [−1, 1] mostly, beyond it sometimes
        # diffusers draws its noise as randn(shape, generator): the same noise from the same seed
        noise = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(step))
        theirs = scheduler.step(output, step, x, torch.Generator().manual_seed(step)).prev_sample
        t = torch.full((1,), step)
        ours = d.p_sample(fixed_output(output), x, t, noise, "fixed_small", "x0" if clip else "none")
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    # sample.variance is not what ran: at t = 1, where beta_t and beta~_t differ most, the step differs
    fixed = process(prediction, "fixed").p_sample(fixed_output(output[:, :3]), x, t, noise, "fixed_small", "none")
    assert (ours - fixed).abs().max() > 1e-3


def test_the_samplers_mean_reads_the_first_half_only() -> None:
    d, fixed = process("v"), process("v", "fixed")
    g = torch.Generator().manual_seed(1)
    x, output = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 6, 4, 4, generator=g)
    t = torch.tensor([10, 60])
    for ours, theirs in zip(d.denoise(fixed_output(output), x, t, "none"),
                            fixed.denoise(fixed_output(output[:, :3]), x, t, "none"), strict=True):  # fmt: skip
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_hybrid_loss_by_hand_and_its_gradient_reaches_only_the_variance() -> None:
    """Two pixels, one channel: L_simple + 0.001·T·L_t, L_t the KL (nats → bits/dim) by normal_kl at
    t > 0 and the discretized decoder at t = 0; the gradient of the L_vlb part w.r.t. the mean's
    channel is zero (stop-gradient)."""
    d = process()
    x0 = torch.tensor([[[[0.5, -0.25]]], [[[1.0, -1.0]]]])  # (2, 1, 1, 2)
    noise = torch.tensor([[[[0.3, -1.2]]], [[[0.7, 0.1]]]])
    t = torch.tensor([40, 0])
    output = torch.tensor([[[[0.2, -1.0]], [[0.4, -0.6]]], [[[0.9, 0.3]], [[-0.2, 1.5]]]], requires_grad=True)
    loss = d.training_loss(lambda x, s: output, x0, t, noise)

    eps, v = output[:, :1].detach().double(), output[:, 1:].detach().double()
    x0, noise = x0.double(), noise.double()
    betas = beta_schedule("linear", T)
    a = torch.cumprod(1 - betas, 0)
    simple = ((eps - noise) ** 2).mean()
    # sample 0, t = 40 (0-based): q(x_39 | x_40, x_0) against p's mean from the predicted eps
    ab, ab_prev, b = a[40], a[39], betas[40]
    x_t = ab.sqrt() * x0[0] + (1 - ab).sqrt() * noise[0]
    x0_hat = (x_t - (1 - ab).sqrt() * eps[0]) / ab.sqrt()
    coef1, coef2 = b * ab_prev.sqrt() / (1 - ab), (1 - ab_prev) * (1 - b).sqrt() / (1 - ab)
    beta_tilde = b * (1 - ab_prev) / (1 - ab)
    log_var = (v[0] + 1) / 2 * math.log(b) + (1 - v[0]) / 2 * beta_tilde.log()
    kl = normal_kl(coef1 * x0[0] + coef2 * x_t, beta_tilde.log(), coef1 * x0_hat + coef2 * x_t, log_var)
    l40 = kl.mean() / math.log(2)
    # sample 1, t = 0: −log of the decoder's bins; both pixels are edge bins (x_0 = ±1)
    x_t = a[0].sqrt() * x0[1] + (1 - a[0]).sqrt() * noise[1]
    mean = (x_t - (1 - a[0]).sqrt() * eps[1]) / a[0].sqrt()  # at t = 0 the posterior mean is x̂_0
    sd = (betas[1] * (1 - a[0]) / (1 - a[1])).sqrt()  # both ends: beta~ of the next step
    upper = torch.tensor(norm.logcdf(((x0[1] - mean + 1 / 255) / sd).numpy()))
    lower = torch.tensor(norm.logsf(((x0[1] - mean - 1 / 255) / sd).numpy()))
    l0 = -torch.where(x0[1] < 0, upper, lower).mean() / math.log(2)
    torch.testing.assert_close(loss.double(), simple + 0.001 * T * (l40 + l0) / 2, rtol=1e-5, atol=0)

    (gradient,) = torch.autograd.grad(loss - torch.nn.functional.mse_loss(output[:, :1], noise.float()), output)
    assert gradient[:, :1].abs().max() == 0  # the stop-gradient: L_vlb leaves the mean alone
    assert gradient[0, 1:].abs().min() > 0  # and trains the variance
    assert gradient[1, 1:].abs().max() == 0  # but not at t = 0, where both ends are beta~ of the next step


def test_fixed_variance_keeps_the_plain_loss_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(2)
    x0, noise, output = (torch.randn(3, 3, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([0, 5, 99])
    loss = process(variance="fixed").training_loss(fixed_output(output), x0, t, noise)
    assert torch.equal(loss, torch.nn.functional.mse_loss(output, noise))


def test_min_snr_weights_only_the_simple_part() -> None:
    d = process("v")
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    output = torch.randn(2, 6, 4, 4, generator=g)
    t = torch.tensor([3, 80])
    plain, weighted = (d.training_loss(fixed_output(output), x0, t, noise, w) for w in ("none", "min_snr"))
    target = d.training_target(x0, t, noise)
    per_sample = (output[:, :3] - target).square().flatten(1).mean(1)
    weights = d.min_snr_weight(t, 5.0).float()
    torch.testing.assert_close(weighted - plain, (weights * per_sample).mean() - per_sample.mean())


def test_bound_term_with_learned_variance_equals_scipy_float64() -> None:
    """One KL term of the bound by numpy alone: the closed-form Gaussian KL with the learned variance."""
    d = process()
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(2, 3, 2, 2, generator=g) * 2 - 1
    x_t = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    output = torch.randn(2, 6, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([7, 7])
    ours = d.vb_term_bpd(fixed_output(output), x0, x_t, t, "fixed_large", "none").numpy()

    betas = beta_schedule("linear", T).numpy()
    a = np.cumprod(1 - betas)
    b, ab, ab_prev = betas[7], a[7], a[6]
    x0_, x_t_, eps, v = x0.double().numpy(), x_t.numpy(), output[:, :3].numpy(), output[:, 3:].numpy()
    posterior = lambda x: (b * np.sqrt(ab_prev) * x + (1 - ab_prev) * np.sqrt(1 - b) * x_t_) / (1 - ab)  # noqa: E731
    var_q = b * (1 - ab_prev) / (1 - ab)
    var_p = np.exp((v + 1) / 2 * np.log(b) + (1 - v) / 2 * np.log(var_q))
    mu_q, mu_p = posterior(x0_), posterior((x_t_ - np.sqrt(1 - ab) * eps) / np.sqrt(ab))
    kl = 0.5 * (np.log(var_p / var_q) + var_q / var_p + (mu_q - mu_p) ** 2 / var_p - 1)
    np.testing.assert_allclose(ours, kl.reshape(2, -1).mean(1) / np.log(2), rtol=1e-10)


def test_a_learned_range_run_records_it_and_samples_and_bounds_with_it(flowers16: Path, tmp_path: Path) -> None:
    """Trained for 2 steps (T = 10): the checkpoint says learned_range, DDPM and the bound ignore the
    fixed variance settings, DDIM reads the target's channels only, and DDIM at eta > 0 is refused."""
    diffusion = {"variance": "learned_range", "schedule": "cosine", "timesteps": 10}
    config = tiny_config(train={"steps": 2, "warmup_steps": 1}, diffusion=diffusion)
    result = train(config, flowers16, tmp_path, CPU, progress=False)
    assert all(math.isfinite(loss) for _, loss in result.losses)
    saved = torch.load(result.checkpoint, weights_only=True)
    assert saved["arch"]["learned_variance"] is True and saved["diffusion"]["variance"] == "learned_range"
    trained = load_trained(result.checkpoint, CPU)
    assert trained.model.conv_out.out_channels == 6

    ddpm = SampleConfig(sampler="ddpm", num_samples=2, batch_size=2, precision="fp32", channels_last=False)
    large, small = (generate(trained.model, trained.diffusion, ddpm.model_copy(update={"variance": v}), 16, CPU,
                             False)[0] for v in ("fixed_large", "fixed_small"))  # fmt: skip
    assert torch.equal(large, small)  # the learned variance ran, not sample.variance
    # DDIM (quality's, and `ddpm sample`'s) on the first three output channels: a UNet cut to them
    cut = UNet(**{**saved["arch"], "learned_variance": False})
    cut.load_state_dict({k: v[:3] if k.startswith("conv_out") else v for k, v in saved["ema"].items()})
    ddim = ddpm.model_copy(update={"sampler": "ddim", "steps": 5})
    fixed = GaussianDiffusion(beta_schedule("cosine", 10))
    ours, theirs = (generate(m, d, ddim, 16, CPU, False)[0] for m, d in ((trained.model, trained.diffusion),
                                                                            (cut.eval(), fixed)))  # fmt: skip
    assert torch.equal(ours, theirs)

    bounds = [likelihood(EvaluateConfig(nll_images=2, nll_variance=v), ddpm, trained, flowers16, CPU)[0]
              for v in ("fixed_small", "fixed_large")]  # fmt: skip
    assert bounds[0]["nll_variance"] == "learned_range" and bounds[0]["nll_bpd"] == bounds[1]["nll_bpd"]
    assert math.isfinite(bounds[0]["nll_bpd"])

    with pytest.raises(UserError) as said:
        check_learned_variance(ddim.model_copy(update={"eta": 0.5}), trained.diffusion, "model.pt")
    assert str(said.value) == ("sample.eta: DDIM at eta 0.5 draws its own variance, not the one the model "
                               "(model.pt) learned (diffusion.variance learned_range); expected sample.eta 0, or "
                               "sample.sampler ddpm, which samples with it")  # fmt: skip
    check_learned_variance(ddim.model_copy(update={"eta": 0.5}), fixed, "model.pt")  # a fixed variance: DDIM's own
    with pytest.raises(UserError, match=r"^sample.eta: DDIM at eta 0.5 draws its own variance, not the one"):
        check_sweep(SweepConfig(steps=[2]), ddim.model_copy(update={"eta": 0.5}), trained, flowers16)


def test_a_resume_that_learns_the_variance_names_both_keys() -> None:
    fixed, learned = tiny_config(), tiny_config(diffusion={"variance": "learned_range"})
    assert _differences(fixed, learned) == {"model.learned_variance": (None, True),
                                            "diffusion.variance": ("fixed", "learned_range")}  # fmt: skip
    assert _differences(learned, fixed) == {"diffusion.variance": ("learned_range", "fixed")}
