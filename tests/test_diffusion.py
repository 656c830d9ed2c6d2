import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.schedules import beta_schedule


@pytest.fixture
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(beta_schedule("linear", 1000))


def full(t: int, n: int) -> torch.Tensor:
    return torch.full((n,), t, dtype=torch.long)


@pytest.mark.parametrize("t", [0, 10, 500, 999])
def test_q_sample_has_the_closed_form_mean_and_variance(diffusion: GaussianDiffusion, t: int) -> None:
    n, x0 = 200_000, torch.tensor([-1.0, -0.3, 0.5, 1.0], dtype=torch.float64)
    x = x0.expand(n, 4)
    samples = diffusion.q_sample(x, full(t, n), torch.randn(n, 4, dtype=torch.float64))
    ab = diffusion.alphas_cumprod[t]
    std_err = ((1 - ab) / n).sqrt()
    assert torch.allclose(samples.mean(0), ab.sqrt() * x0, atol=5 * std_err.item())
    assert torch.allclose(samples.var(0), (1 - ab).expand(4), rtol=0.02)


def test_iterating_single_steps_matches_the_closed_form(diffusion: GaussianDiffusion) -> None:
    # x_t = √(1 − beta_t)·x_{t-1} + √beta_t·z, step by step (eq. 2), against q(x_t | x_0) (eq. 4).
    n, t, x0 = 100_000, 300, torch.tensor([0.8, -0.6], dtype=torch.float64)
    x = x0.expand(n, 2).clone()
    for beta in diffusion.betas[: t + 1]:
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn_like(x)
    closed = diffusion.q_sample(x0.expand(n, 2), full(t, n), torch.randn(n, 2, dtype=torch.float64))
    ab = diffusion.alphas_cumprod[t]
    assert torch.allclose(x.mean(0), ab.sqrt() * x0, atol=0.02)
    assert torch.allclose(x.mean(0), closed.mean(0), atol=0.02)
    assert torch.allclose(x.var(0), closed.var(0), rtol=0.03)
    assert torch.allclose(x.var(0), (1 - ab).expand(2), rtol=0.03)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("t", [1, 2, 100, 999])
def test_posterior_is_the_gaussian_product(name: str, t: int) -> None:
    # q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) · q(x_{t-1} | x_0), two Gaussians in x_{t-1}.
    d = GaussianDiffusion(beta_schedule(name, 1000))
    x0, x_t = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    beta, ab_prev = d.betas[t].item(), d.alphas_cumprod[t - 1].item()
    alpha = 1 - beta
    precision = alpha / beta + 1 / (1 - ab_prev)
    mean = (alpha**0.5 / beta * x_t + ab_prev**0.5 / (1 - ab_prev) * x0) / precision
    got_mean, got_var = d.q_posterior_mean_variance(x0, x_t, full(t, 3))
    assert torch.allclose(got_mean, mean, rtol=1e-10, atol=1e-12)
    assert torch.allclose(got_var, torch.full_like(got_var, 1 / precision), rtol=1e-10)


def test_posterior_at_the_first_step_is_x0(diffusion: GaussianDiffusion) -> None:
    x0, x_t = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    mean, var = diffusion.q_posterior_mean_variance(x0, x_t, full(0, 2))
    assert torch.allclose(mean, x0) and (var == 0).all()


def test_fixed_posterior_variance(diffusion: GaussianDiffusion) -> None:
    # Pinned: beta~_t = beta_t (1 − alphā_{t-1}) / (1 − alphā_t) for the linear schedule.
    assert diffusion.posterior_variance[1].item() == pytest.approx(5.4531876613021935e-05, rel=1e-12)
    assert diffusion.posterior_variance[500].item() == pytest.approx(0.010051335778909595, rel=1e-12)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_target_round_trips_to_x0_and_eps(prediction: str) -> None:
    d = GaussianDiffusion(beta_schedule("cosine", 1000), prediction)
    x0, noise = torch.rand(4, 3, 2, 2, dtype=torch.float64) * 2 - 1, torch.randn(4, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 998])
    x_t = d.q_sample(x0, t, noise)
    x0_hat = d.predict_x0(d.training_target(x0, t, noise), x_t, t)
    assert torch.allclose(x0_hat, x0, atol=1e-9)
    assert torch.allclose(d.predict_eps_from_x0(x_t, t, x0), noise, atol=1e-6)


def test_training_draws_every_timestep_including_zero() -> None:
    d = GaussianDiffusion(beta_schedule("linear", 25))
    seen = []

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return torch.zeros_like(x)

    loss = d.training_loss(model, torch.zeros(5000, 1))
    assert set(torch.cat(seen).tolist()) == set(range(25))
    assert loss.item() == pytest.approx(1.0, rel=0.05)  # E[eps²] with a zero prediction


def test_loss_is_zero_for_a_perfect_model() -> None:
    d = GaussianDiffusion(beta_schedule("linear", 100))
    x0, noise, t = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4), torch.randint(0, 100, (8,))
    assert d.training_loss(lambda x, t_: noise, x0, t, noise).item() == 0.0


def test_ddim_with_eta_1_over_all_steps_uses_the_ddpm_fixed_small_variances(diffusion: GaussianDiffusion) -> None:
    t = torch.arange(1000)
    x = torch.zeros(1000, 1, dtype=torch.float64)
    sigma = diffusion.ddim_sigma(t, t - 1, 1.0, x).flatten()
    assert torch.allclose(sigma**2, diffusion.posterior_variance, rtol=1e-10, atol=1e-20)
    assert diffusion.ddim_timesteps(1000).tolist() == list(range(1000))


def test_one_ddim_step_with_eta_1_is_one_ddpm_step(diffusion: GaussianDiffusion) -> None:
    model = lambda x, t: 0.3 * x + 0.1
    x_t, z = torch.randn(6, 3, 4, 4, dtype=torch.float64), torch.randn(6, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([1, 5, 50, 300, 700, 999])
    ddim = diffusion.ddim_step(model, x_t, t, t - 1, z, eta=1.0, clip=False)
    ddpm = diffusion.p_sample(model, x_t, t, z, variance="fixed_small", clip=False)
    assert torch.allclose(ddim, ddpm, atol=1e-9)


def test_ddim_with_eta_0_is_deterministic_given_the_noise(diffusion: GaussianDiffusion) -> None:
    model = lambda x, t: 0.5 * x
    noise = torch.randn(2, 3, 4, 4)
    runs = [
        list(diffusion.ddim_sample_loop_progressive(model, noise, 20, 0.0, torch.Generator().manual_seed(seed)))[-1][1]
        for seed in (1, 2)
    ]
    assert torch.equal(runs[0], runs[1])


def test_ddpm_sampling_ends_in_the_data_range_and_visits_every_step() -> None:
    d = GaussianDiffusion(beta_schedule("linear", 50))
    steps = list(d.p_sample_loop_progressive(lambda x, t: -x, torch.randn(4, 3, 8, 8) * 3))
    assert [t for t, _ in steps] == list(reversed(range(50)))
    x = steps[-1][1]
    assert x.abs().max() <= 1 and x.shape == (4, 3, 8, 8)


def test_ddpm_adds_no_noise_at_the_last_step(diffusion: GaussianDiffusion) -> None:
    model = lambda x, t: torch.zeros_like(x)
    x = torch.randn(3, 2)
    assert torch.equal(
        diffusion.p_sample(model, x, full(0, 3), torch.randn(3, 2)),
        diffusion.p_sample(model, x, full(0, 3), torch.zeros(3, 2)),
    )


def test_ddim_timesteps_span_the_chain(diffusion: GaussianDiffusion) -> None:
    ts = diffusion.ddim_timesteps(50)
    assert ts[0] == 0 and ts[-1] == 999 and len(set(ts.tolist())) == 50
    with pytest.raises(ValueError, match="between 1 and 1000"):
        diffusion.ddim_timesteps(1001)


def test_buffers_follow_the_module_and_stay_float64(diffusion: GaussianDiffusion) -> None:
    names = {name for name, _ in diffusion.named_buffers()}
    assert {"betas", "alphas_cumprod", "posterior_variance", "posterior_mean_coef1"} <= names
    assert all(b.dtype == torch.float64 for b in diffusion.buffers())
