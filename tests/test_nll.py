"""The variational bound of Ho et al. 2020 (eq. 5) in bits per dimension: each piece against a closed
form or a numerical integral, and the whole bound against a plain float64 loop written out here."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import nn

from ddpm.data import synthetic_flowers, to_unit_range
from ddpm.diffusion import GaussianDiffusion, discretized_gaussian_log_likelihood, normal_kl
from ddpm.schedules import beta_schedule
from ddpm.unet import UNet

F64 = torch.float64
LEVELS = torch.arange(256, dtype=F64) / 127.5 - 1  # the 8-bit grid in [-1, 1]


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """n random float64 images (n, 3, size, size) on the 8-bit grid, holding both 0 and 255."""
    pixels = torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed))
    pixels[:, 0, 0, 0], pixels[:, 1, 0, 0] = 0, 255
    return LEVELS[pixels]


def bin_mass(k: int, mean: float, scale: float) -> float:
    """∫ N(y; mean, scale²) dy over pixel value k's bin [x − 1/255, x + 1/255], the two outer bins
    reaching ±∞, by quadrature. In the standard variable z = (y − mean)/scale, split at z = 0 so
    that a peak narrower than the bin is an end point of the integral, not missed between nodes."""
    x = LEVELS[k].item()
    lo = -math.inf if k == 0 else (x - 1 / 255 - mean) / scale
    hi = math.inf if k == 255 else (x + 1 / 255 - mean) / scale
    pieces = [(lo, 0.0), (0.0, hi)] if lo < 0 < hi else [(lo, hi)]
    return sum(integrate.quad(standard_normal_pdf, a, b, epsabs=0, epsrel=1e-13)[0] for a, b in pieces)


def standard_normal_pdf(z: float) -> float:
    return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


# --- normal_kl -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mean1", "var1", "mean2", "var2"),
    [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.2, 2.0), (1.0, 1e-4, 0.99, 2e-4), (-2.0, 3.0, 0.5, 0.1)],
)
def test_normal_kl_is_the_closed_form(mean1: float, var1: float, mean2: float, var2: float) -> None:
    p = torch.distributions.Normal(torch.tensor(mean1, dtype=F64), torch.tensor(var1, dtype=F64).sqrt())
    q = torch.distributions.Normal(torch.tensor(mean2, dtype=F64), torch.tensor(var2, dtype=F64).sqrt())
    got = normal_kl(p.mean, torch.tensor(var1, dtype=F64).log(), q.mean, torch.tensor(var2, dtype=F64).log())
    assert got.item() == pytest.approx(torch.distributions.kl_divergence(p, q).item(), rel=1e-12, abs=1e-15)


def test_normal_kl_is_zero_between_equal_gaussians_and_broadcasts() -> None:
    mean, logvar = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    assert normal_kl(mean, logvar, mean, logvar).abs().max() < 1e-15
    assert normal_kl(mean, logvar, torch.zeros(()), torch.zeros(())).shape == (4, 3)


# --- the discretized decoder, eq. 13 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("mean", "scale"),
    [(0.0, 0.5), (0.1, 0.02), (-0.997, 0.004), (0.996, 0.003), (0.3, 1e-3), (0.0039, 1e-4), (-0.5, 3.0)],
)
def test_discretized_likelihood_is_the_integral_over_each_bin(mean: float, scale: float) -> None:
    # both ends, the middle, and the mean's bin and its neighbours; where the mass underflows float64
    # (tens of standard deviations out) only that the log is finite and tiny: the far-tail test has values
    nearest = int(round((mean + 1) * 127.5))
    pixels = sorted({0, 1, 127, 128, 254, 255, max(nearest - 1, 0), nearest, min(nearest + 1, 255)})
    x = LEVELS[pixels]
    got = discretized_gaussian_log_likelihood(
        x, torch.tensor(mean, dtype=F64), torch.tensor(math.log(scale), dtype=F64)
    )
    for pixel, log_p in zip(pixels, got.tolist(), strict=True):
        mass = bin_mass(pixel, mean, scale)
        if mass > 1e-300:
            assert log_p == pytest.approx(math.log(mass), rel=1e-9, abs=1e-10), pixel
        else:
            assert math.isfinite(log_p) and log_p < math.log(1e-290), pixel


@pytest.mark.parametrize("side", [-1, 1])
def test_the_discretized_likelihood_of_a_far_tail_bin_is_finite_and_right(side: int) -> None:
    # about 400 standard deviations from the mean a bin's mass is e^-80000 or so: the tail beyond its
    # edge nearer the mean times 1 − e^-3000 (the tail beyond the other edge). log(Φ(upper) − Φ(lower))
    # would be log 0, and a clamp at 1e-12 would say e^-27.6
    mean, scale = 0.5, 1e-3
    x = LEVELS[round((mean + side * 400 * scale + 1) * 127.5)]
    inner_edge = (x.item() - side / 255 - mean) / scale
    expected = stats.norm.logcdf(-abs(inner_edge))
    got = discretized_gaussian_log_likelihood(
        x, torch.tensor(mean, dtype=F64), torch.tensor(math.log(scale), dtype=F64)
    )
    assert expected < -70_000
    assert got.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("mean", "scale"), [(0.0, 0.3), (-1.0, 1e-3), (0.7, 1e-5), (1.4, 0.05), (0.2, 10.0)])
def test_the_discretized_likelihood_sums_to_one_over_the_bins(mean: float, scale: float) -> None:
    log_p = discretized_gaussian_log_likelihood(
        LEVELS, torch.tensor(mean, dtype=F64), torch.tensor(math.log(scale), dtype=F64)
    )
    assert log_p.exp().sum().item() == pytest.approx(1, abs=1e-12)


# --- the prior term L_T ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_the_prior_term_vanishes_when_the_chain_ends_in_noise(name: str) -> None:
    prior = GaussianDiffusion(beta_schedule(name, 1000)).prior_bpd(images(3, 4))
    assert prior.shape == (3,) and (prior >= 0).all() and (prior < 1e-3).all()


def test_the_prior_term_of_a_chain_cut_short_is_the_closed_form() -> None:
    # the first 100 of the 1000 linear betas: alphā_T ≈ 0.9, far from noise
    betas = beta_schedule("linear", 1000)[:100]
    x0 = images(3, 4)
    ab = torch.prod(1 - betas)
    var = 1 - ab
    kl = 0.5 * (-var.log() + var + ab * x0**2 - 1)  # KL(N(√alphā·x_0, 1 − alphā) || N(0, 1))
    expected = kl.flatten(1).sum(1) / (x0[0].numel() * math.log(2))
    prior = GaussianDiffusion(betas).prior_bpd(x0)
    assert ab > 0.85 and (prior > 0.5).all()
    assert torch.allclose(prior, expected, rtol=1e-12)


# --- the whole bound -----------------------------------------------------------------------------------


class TinyEps(nn.Module):
    """A fixed random ε-predictor in float64: a 1×1 convolution, squashed, plus an offset per timestep."""

    def __init__(self, timesteps: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.weight = nn.Parameter(torch.randn(3, 3, generator=generator, dtype=F64))
        self.offset = nn.Parameter(0.3 * torch.randn(timesteps, 3, 1, 1, generator=generator, dtype=F64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.einsum("oc,bchw->bohw", self.weight, x)) + self.offset[t]


def reference_posterior(betas: torch.Tensor, t: int) -> tuple[float, float, float]:
    """q(x_{t-1} | x_t, x_0) at 0-based t, eq. 7: the mean's coefficients of x_0 and of x_t, and beta~_t."""
    ab = torch.cumprod(1 - betas, 0).tolist()
    beta, ab_t, ab_prev = betas[t].item(), ab[t], ab[t - 1] if t else 1.0
    return (
        math.sqrt(ab_prev) * beta / (1 - ab_t),
        math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t),
        (1 - ab_prev) / (1 - ab_t) * beta,
    )


def reference_bound(
    betas: torch.Tensor, model: nn.Module, x0: torch.Tensor, variance: str, clip: bool, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prior (B,), terms (B, T)) in bits per dimension, one timestep and one pixel at a time, from the
    formulas of Ho et al. written out; the noise as nll_bpd draws it: randn(x0.shape) for t = 0, 1, ..."""
    generator = torch.Generator().manual_seed(seed)
    n, dims, timesteps = x0.shape[0], x0[0].numel(), len(betas)
    ab = torch.cumprod(1 - betas, 0)
    terms = torch.zeros(n, timesteps, dtype=F64)
    for t in range(timesteps):
        noise = torch.randn(x0.shape, generator=generator, dtype=F64)
        x_t = ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * noise  # eq. 4
        eps = model(x_t, torch.full((n,), t))
        x0_hat = (x_t - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
        if clip:
            x0_hat = x0_hat.clamp(-1, 1)
        coef_x0, coef_xt, posterior_var = reference_posterior(betas, t)
        model_mean = coef_x0 * x0_hat + coef_xt * x_t
        if t == 0:  # L_0 = −log p(x_0 | x_1), eq. 13, with sigma² = beta~ of the next step (beta~ = 0 here)
            scale = math.sqrt(reference_posterior(betas, 1)[2])
            pixels = ((x0 + 1) * 127.5).round().long()
            for i in range(n):
                pairs = zip(pixels[i].flatten().tolist(), model_mean[i].flatten().tolist(), strict=True)
                terms[i, 0] = -sum(math.log(bin_mass(k, mean, scale)) for k, mean in pairs)
        else:  # KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), eq. 5, by hand
            sigma2 = posterior_var if variance == "fixed_small" else betas[t].item()
            true_mean = coef_x0 * x0 + coef_xt * x_t
            ratio = posterior_var / sigma2
            kl = 0.5 * (-math.log(ratio) + ratio + (true_mean - model_mean) ** 2 / sigma2 - 1)
            terms[:, t] = kl.flatten(1).sum(1)
    var_T = 1 - ab[-1]
    prior = (0.5 * (-var_T.log() + var_T + ab[-1] * x0**2 - 1)).flatten(1).sum(1)
    return prior / (dims * math.log(2)), terms / (dims * math.log(2))


BETAS = torch.linspace(0.02, 0.4, 6, dtype=F64)  # T = 6: a short chain that still ends far from x_0


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip", [False, True])
def test_the_bound_equals_the_formulas_written_out(variance: str, clip: bool) -> None:
    model, x0 = TinyEps(len(BETAS)), images(2, 4)
    got = GaussianDiffusion(BETAS).nll_bpd(
        model, x0, variance, "recompute" if clip else "none", torch.Generator().manual_seed(7), batch_size=5
    )
    prior, terms = reference_bound(BETAS, model, x0, variance, clip, seed=7)
    assert got.terms.dtype == F64 and got.terms.shape == (2, len(BETAS))
    assert torch.allclose(got.prior, prior, rtol=1e-10, atol=0)
    assert torch.allclose(got.terms, terms, rtol=1e-10, atol=0)
    assert torch.allclose(got.total, prior + terms.sum(1), rtol=1e-10, atol=0)


def test_batching_does_not_change_the_bound() -> None:
    diffusion, model, x0 = GaussianDiffusion(BETAS), TinyEps(len(BETAS)), images(2, 4)
    runs = [
        diffusion.nll_bpd(model, x0, "fixed_large", "recompute", torch.Generator().manual_seed(3), batch_size)
        for batch_size in (1, 3, 4, 1000)
    ]
    for run in runs[1:]:
        assert torch.allclose(run.terms, runs[0].terms, rtol=1e-13, atol=0)
        assert torch.allclose(run.total, runs[0].total, rtol=1e-13, atol=0)


def test_the_model_sees_chunks_of_stacked_timesteps() -> None:
    calls: list[torch.Tensor] = []
    model = TinyEps(len(BETAS))

    def recording(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(t)
        return model(x, t)

    GaussianDiffusion(BETAS).nll_bpd(recording, images(2, 4), "fixed_small", "none", torch.Generator(), 5)
    assert [len(t) for t in calls] == [5, 5, 2]  # 12 pairs
    assert torch.cat(calls).tolist() == [t for t in range(len(BETAS)) for _ in range(2)]


def test_a_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        GaussianDiffusion(BETAS).nll_bpd(TinyEps(len(BETAS)), images(1, 4), "fixed_small", "none", torch.Generator(), 0)


def test_a_trained_model_has_a_finite_positive_bound_below_the_untrained_one() -> None:
    # the tiny UNet at 8×8, T = 50 (the test config's), trained by 20 steps of plain gradient descent on
    # L_simple (torch.optim would import torch._dynamo: seconds), in float32
    diffusion = GaussianDiffusion(beta_schedule("linear", 50))
    model = UNet.from_preset("tiny", 8)
    x0 = to_unit_range(torch.from_numpy(synthetic_flowers(4, 8, seed=0)))
    before = diffusion.nll_bpd(model, x0[:2], "fixed_large", "recompute", torch.Generator().manual_seed(0), 128)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        t = torch.randint(0, 50, (4,), generator=generator)
        model.zero_grad()
        diffusion.training_loss(model, x0, t, torch.randn(x0.shape, generator=generator)).backward()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter -= 0.1 * parameter.grad
    after = diffusion.nll_bpd(model.eval(), x0[:2], "fixed_large", "recompute", torch.Generator().manual_seed(0), 128)
    assert np.isfinite(after.terms.numpy()).all() and np.isfinite(after.prior.numpy()).all()
    assert (after.total > 0).all() and (after.total < before.total).all()


# --- the decoder's floor -----------------------------------------------------------------------------


def beta_tilde_2(betas: torch.Tensor) -> float:
    """The decoder's variance at the paper's t = 1: β̃ of t = 2 (β̃₁ is 0), as improved-diffusion clips
    it, from eq. 7 written out: β̃₂ = (1 − ᾱ₁)/(1 − ᾱ₂)·β₂ with ᾱ₁ = 1 − β₁, ᾱ₂ = (1 − β₁)(1 − β₂)."""
    b1, b2 = betas[0].item(), betas[1].item()
    return b1 / (1 - (1 - b1) * (1 - b2)) * b2


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("timesteps", [50, 1000])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_the_decoder_floor_is_the_mass_of_a_bin_centred_on_its_mean(name: str, timesteps: int, variance: str) -> None:
    betas = beta_schedule(name, timesteps)
    sigma = math.sqrt(beta_tilde_2(betas))  # both variances take β̃₂ at t = 1, so that their decoders agree
    expected = -math.log2(stats.norm.cdf(1 / (255 * sigma)) - stats.norm.cdf(-1 / (255 * sigma)))
    assert GaussianDiffusion(betas).decoder_floor_bpd(variance) == pytest.approx(expected, rel=1e-12)


def test_the_decoder_floor_is_what_the_issue_says_for_linear_and_cosine() -> None:
    # issue 23: the width √β̃ alone costs a perfect model 1.30 bits/dim (linear) and 0.74 (cosine) at T = 1000
    linear = GaussianDiffusion(beta_schedule("linear", 1000)).decoder_floor_bpd("fixed_small")
    cosine = GaussianDiffusion(beta_schedule("cosine", 1000)).decoder_floor_bpd("fixed_small")
    assert linear == pytest.approx(1.30538, abs=1e-5) and cosine == pytest.approx(0.73900, abs=1e-5)
    assert linear - cosine == pytest.approx(0.566, abs=1e-3)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_a_model_that_knows_x0_pays_the_floor_on_interior_pixels(variance: str) -> None:
    # with x_0 predicted exactly the decoder's mean is x_0; the edge bins (0, 255) reach ±∞ and hold more
    diffusion = GaussianDiffusion(beta_schedule("linear", 50), prediction="x0")
    pixels = torch.randint(1, 255, (3, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    x0 = LEVELS[pixels]
    t = torch.zeros(3, dtype=torch.long)
    x_1 = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=F64))
    decoder = diffusion.vb_term_bpd(lambda x_t, t: x0, x0, x_1, t, variance, clip_mode="recompute")
    assert decoder.tolist() == pytest.approx([diffusion.decoder_floor_bpd(variance)] * 3, rel=1e-12)
    edges = LEVELS[torch.tensor([0, 255])].repeat(3, 3, 4, 2)  # every pixel at an edge: less than the floor
    at_edges = diffusion.vb_term_bpd(lambda x_t, t: edges, edges, edges, t, variance, clip_mode="recompute")
    assert (at_edges < diffusion.decoder_floor_bpd(variance)).all()
