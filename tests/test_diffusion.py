"""The diffusion math against closed forms, hand-written formulas and pinned full chains
(tests/test_reference.py checks it against diffusers)."""

import numpy as np
import pytest
import torch

from ddpm.data import InMemoryImages
from ddpm.diffusion import GaussianDiffusion, dynamic_threshold
from ddpm.schedules import beta_schedule
from ddpm.spacing import sampling_name, timesteps
from ddpm.train import draw_batch


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


@pytest.mark.parametrize("t", [1, 2, 500, 999])
def test_the_reverse_mean_is_eq_11(diffusion: GaussianDiffusion, t: int) -> None:
    # mu_theta(x_t, t) = (x_t − beta_t/√(1 − alphā_t)·eps_theta) / √alpha_t, Ho et al. eq. 11 (no clipping)
    x_t = torch.randn(3, 2, dtype=torch.float64)
    model = lambda x, t_: 0.4 * x - 0.2
    beta, ab = diffusion.betas[t].item(), diffusion.alphas_cumprod[t].item()
    expected = (x_t - beta / (1 - ab) ** 0.5 * model(x_t, None)) / (1 - beta) ** 0.5
    for variance, table in (("fixed_large", diffusion.betas), ("fixed_small", diffusion.posterior_variance)):
        mean, var = diffusion.p_mean_variance(model, x_t, full(t, 3), variance, clip_mode="none")
        assert torch.allclose(mean, expected, rtol=1e-10, atol=1e-12)
        assert torch.allclose(var, table[t].expand_as(var), rtol=1e-12)


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


def test_the_training_draw_covers_every_timestep_both_ends_included() -> None:
    dataset = InMemoryImages(np.zeros((2, 3, 4, 4), np.uint8), torch.device("cpu"))
    _, t, noise = draw_batch(dataset, 25, 5000, torch.Generator().manual_seed(0))
    assert set(t.tolist()) == set(range(25))
    assert abs(noise.mean().item()) < 0.02 and noise.std().item() == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_the_loss_is_the_mse_against_the_target_written_out(prediction: str) -> None:
    betas = beta_schedule("linear", 100)
    d = GaussianDiffusion(betas, prediction)
    x0, noise = torch.rand(6, 3, 4, 4, dtype=torch.float64) * 2 - 1, torch.randn(6, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 30, 50, 98, 99])
    model = lambda x, t_: 0.3 * x + 0.01 * t_.double().reshape(-1, 1, 1, 1)
    ab = torch.cumprod(1 - betas, 0)[t].reshape(-1, 1, 1, 1)  # alphā_t, written out here, not taken from d
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    target = {"eps": noise, "x0": x0, "v": ab.sqrt() * noise - (1 - ab).sqrt() * x0}[prediction]
    expected = ((model(x_t, t) - target) ** 2).mean()
    assert d.training_loss(model, x0, t, noise).item() == pytest.approx(expected.item(), rel=1e-6)


def test_loss_is_zero_for_a_perfect_model() -> None:
    d = GaussianDiffusion(beta_schedule("linear", 100))
    x0, noise, t = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4), torch.randint(0, 100, (8,))
    assert d.training_loss(lambda x, t_: noise, x0, t, noise).item() == 0.0


def test_ddim_with_eta_1_over_all_steps_uses_the_ddpm_fixed_small_variances(diffusion: GaussianDiffusion) -> None:
    t = torch.arange(1000)
    x = torch.zeros(1000, 1, dtype=torch.float64)
    sigma = diffusion.ddim_sigma(t, t - 1, 1.0, x).flatten()
    assert torch.allclose(sigma**2, diffusion.posterior_variance, rtol=1e-10, atol=1e-20)
    assert timesteps("ddim", "linspace", 1000, 1000) == list(range(999, -1, -1))


def test_one_ddim_step_with_eta_1_is_one_ddpm_step(diffusion: GaussianDiffusion) -> None:
    model = lambda x, t: 0.3 * x + 0.1
    x_t, z = torch.randn(6, 3, 4, 4, dtype=torch.float64), torch.randn(6, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([1, 5, 50, 300, 700, 999])
    ddim = diffusion.ddim_step(model, x_t, t, t - 1, z, 1.0, clip_mode="none")
    ddpm = diffusion.p_sample(model, x_t, t, z, "fixed_small", clip_mode="none")
    assert torch.allclose(ddim, ddpm, atol=1e-9)


def test_ddpm_sampling_ends_in_the_data_range_and_visits_every_step() -> None:
    d = GaussianDiffusion(beta_schedule("linear", 50))
    steps = list(
        d.p_sample_loop_progressive(lambda x, t: -x, torch.randn(4, 3, 8, 8) * 3, None, "fixed_large", "recompute")
    )
    assert [t for t, _ in steps] == list(reversed(range(50)))
    x = steps[-1][1]
    assert x.abs().max() <= 1 and x.shape == (4, 3, 8, 8)


def test_ddpm_adds_no_noise_at_the_last_step(diffusion: GaussianDiffusion) -> None:
    model = lambda x, t: torch.zeros_like(x)
    x = torch.randn(3, 2)
    assert torch.equal(
        diffusion.p_sample(model, x, full(0, 3), torch.randn(3, 2), "fixed_large", "recompute"),
        diffusion.p_sample(model, x, full(0, 3), torch.zeros(3, 2), "fixed_large", "recompute"),
    )


def test_ddim_timesteps_span_the_chain() -> None:
    ts = timesteps("ddim", "linspace", 50, 1000)
    assert ts[0] == 999 and ts[-1] == 0 and len(set(ts)) == 50
    with pytest.raises(ValueError, match="1001 steps: expected from 1 to the model's T = 1000"):
        timesteps("ddim", "linspace", 1001, 1000)


def test_one_ddim_step_starts_from_pure_noise_and_lands_on_the_predicted_x0(diffusion: GaussianDiffusion) -> None:
    assert timesteps("ddim", "linspace", 1, 1000) == [999]  # not t = 0, where the "sample" would be the noise
    model = lambda x, t: 0.5 * x + 0.1
    x_T = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    [(t, x0)] = list(diffusion.ddim_sample_loop_progressive(model, x_T, [999], 0.0, None, "recompute"))
    expected = diffusion.denoise(model, x_T, full(999, 2), "recompute")[0]
    assert t == 999 and torch.allclose(x0, expected, atol=1e-12)


def stand_in(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic "model" for the pinned chains: it depends on x_t and t, and its x_0 leaves [-1, 1]."""
    return torch.tanh(0.8 * x) * (0.5 + t.to(x.dtype).reshape(-1, 1, 1, 1) / 100) + 0.05


# (prediction, sampler, clip mode): (sum, mean) of |x_0| after the whole chain: cosine, T = 100, DDIM in
# 10 steps, x_T and every z from one CPU generator seeded 0. Any change to the sampling math changes
# these; re-pin them only on purpose. DDPM's mean uses x̂_0 alone, so there recompute and x0 agree.
PINNED_CHAINS = {
    ("eps", "ddpm/fixed_large", "recompute"): (423.80138518949457, 0.551824720298821),
    ("eps", "ddpm/fixed_small", "recompute"): (420.8843069470488, 0.5480264413373032),
    ("eps", "ddim/0", "recompute"): (413.1824194508399, 0.5379979419932811),
    ("eps", "ddim/1", "recompute"): (411.0472603139191, 0.5352177868670821),
    ("x0", "ddpm/fixed_large", "recompute"): (64.35846090816855, 0.08380007930751114),
    ("x0", "ddpm/fixed_small", "recompute"): (64.4642619595065, 0.08393784109310742),
    ("x0", "ddim/0", "recompute"): (101.60101271499542, 0.13229298530598363),
    ("x0", "ddim/1", "recompute"): (71.27721969924865, 0.09280887981673001),
    ("v", "ddpm/fixed_large", "recompute"): (313.9905179639187, 0.40884182026551913),
    ("v", "ddpm/fixed_small", "recompute"): (303.82639582719503, 0.39560728623332686),
    ("v", "ddim/0", "recompute"): (167.5148742670993, 0.21811832586861887),
    ("v", "ddim/1", "recompute"): (261.3458746113321, 0.34029410756683864),
    ("eps", "ddpm/fixed_large", "x0"): (423.80138518949457, 0.551824720298821),
    ("eps", "ddpm/fixed_small", "x0"): (420.8843069470488, 0.5480264413373032),
    ("eps", "ddim/0", "x0"): (422.1721872668413, 0.549703368837033),
    ("eps", "ddim/1", "x0"): (384.2841235978795, 0.5003699526014056),
    ("x0", "ddpm/fixed_large", "x0"): (64.35846090816855, 0.08380007930751114),
    ("x0", "ddpm/fixed_small", "x0"): (64.4642619595065, 0.08393784109310742),
    ("x0", "ddim/0", "x0"): (100.88271391513518, 0.13135770041033226),
    ("x0", "ddim/1", "x0"): (71.15196382461974, 0.09264578622997362),
    ("v", "ddpm/fixed_large", "x0"): (313.9905179639187, 0.40884182026551913),
    ("v", "ddpm/fixed_small", "x0"): (303.82639582719503, 0.39560728623332686),
    ("v", "ddim/0", "x0"): (167.5258983531496, 0.21813268014733023),
    ("v", "ddim/1", "x0"): (261.18209633165685, 0.3400808545985115),
    ("eps", "ddpm/fixed_large", "dynamic"): (231.6986436959486, 0.30169094231243304),
    ("eps", "ddpm/fixed_small", "dynamic"): (227.85380185628702, 0.2966846378337071),
    ("eps", "ddim/0", "dynamic"): (324.0548625669031, 0.4219464356339884),
    ("eps", "ddim/1", "dynamic"): (232.99322548479822, 0.30337659568333103),
    ("x0", "ddpm/fixed_large", "dynamic"): (64.3922532046, 0.08384407969348957),
    ("x0", "ddpm/fixed_small", "dynamic"): (64.50120854709577, 0.08398594862903096),
    ("x0", "ddim/0", "dynamic"): (89.32086402942221, 0.1163032083716435),
    ("x0", "ddim/1", "dynamic"): (70.20532382645715, 0.09141318206569941),
    ("v", "ddpm/fixed_large", "dynamic"): (235.9575631789159, 0.3072364103892134),
    ("v", "ddpm/fixed_small", "dynamic"): (230.6191439558699, 0.30028534369253895),
    ("v", "ddim/0", "dynamic"): (157.2703334879701, 0.20477908006246107),
    ("v", "ddim/1", "dynamic"): (225.55881233026986, 0.2936963702217055),
    ("eps", "ddpm/fixed_large", "none"): (147924.53071630243, 192.61006603685212),
    ("eps", "ddpm/fixed_small", "none"): (147910.49428839955, 192.59178943802024),
    ("eps", "ddim/0", "none"): (215117.78806548496, 280.1012865436002),
    ("eps", "ddim/1", "none"): (211841.72244340656, 275.83557609818564),
    ("x0", "ddpm/fixed_large", "none"): (64.38708462056924, 0.0838373497663662),
    ("x0", "ddpm/fixed_small", "none"): (64.49238414580016, 0.0839744585231773),
    ("x0", "ddim/0", "none"): (102.45262597959966, 0.13340185674427038),
    ("x0", "ddim/1", "none"): (71.52944867189677, 0.09313730295819893),
    ("v", "ddpm/fixed_large", "none"): (335.3039336503979, 0.4365936636072889),
    ("v", "ddpm/fixed_small", "none"): (321.45188933264893, 0.4185571475685533),
    ("v", "ddim/0", "none"): (164.88962964457397, 0.21470003859970568),
    ("v", "ddim/1", "none"): (265.2998380549437, 0.3454424974673746),
}


@pytest.mark.parametrize(("prediction", "sampler", "mode"), PINNED_CHAINS)
def test_pinned_full_chains(prediction: str, sampler: str, mode: str) -> None:
    d = GaussianDiffusion(beta_schedule("cosine", 100), prediction)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    kind, setting = sampler.split("/")
    if kind == "ddpm":
        *_, (_, x0) = d.p_sample_loop_progressive(stand_in, x_T, g, setting, mode)
    else:
        *_, (_, x0) = d.ddim_sample_loop_progressive(
            stand_in, x_T, timesteps("ddim", "linspace", 10, 100), float(setting), g, mode
        )
    total, mean = PINNED_CHAINS[(prediction, sampler, mode)]
    assert x0.abs().sum().item() == pytest.approx(total, rel=1e-6)
    assert x0.abs().mean().item() == pytest.approx(mean, rel=1e-6)


# (prediction, spacing, clip mode): (sum, mean) of |x_0| after a DPM-Solver++(2M) chain: cosine, T = 100,
# 10 steps, x_T from a CPU generator seeded 0, as PINNED_CHAINS. Only x̂_0 enters its step, so there
# recompute and x0 agree.
PINNED_DPM_SOLVER_CHAINS = {
    ("eps", "linspace", "recompute"): (427.5020874903958, 0.5566433430864529),
    ("eps", "linspace", "x0"): (427.5020874903958, 0.5566433430864529),
    ("eps", "linspace", "dynamic"): (183.4523275117211, 0.23887021811422018),
    ("eps", "linspace", "none"): (214508.77026779007, 279.30829461951834),
    ("x0", "linspace", "recompute"): (186.20845252613526, 0.24245892256007195),
    ("x0", "linspace", "x0"): (186.20845252613526, 0.24245892256007195),
    ("x0", "linspace", "dynamic"): (175.02894551963365, 0.227902272812023),
    ("x0", "linspace", "none"): (187.81568117766687, 0.24455166820008709),
    ("v", "linspace", "recompute"): (208.5394603573345, 0.2715357556736126),
    ("v", "linspace", "x0"): (208.5394603573345, 0.2715357556736126),
    ("v", "linspace", "dynamic"): (175.47899648734705, 0.22848827667623314),
    ("v", "linspace", "none"): (208.97255730151602, 0.272099683986349),
    ("eps", "leading", "x0"): (457.1744370940431, 0.595279214966202),
    ("eps", "trailing", "x0"): (427.9546066585997, 0.557232560753385),
}


@pytest.mark.parametrize(("prediction", "spacing", "mode"), PINNED_DPM_SOLVER_CHAINS)
def test_pinned_dpm_solver_chains(prediction: str, spacing: str, mode: str) -> None:
    d = GaussianDiffusion(beta_schedule("cosine", 100), prediction)
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    *_, (_, x0) = d.dpm_solver_sample_loop_progressive(stand_in, x_T, timesteps("dpmsolver++", spacing, 10, 100), mode)
    total, mean = PINNED_DPM_SOLVER_CHAINS[(prediction, spacing, mode)]
    assert x0.abs().sum().item() == pytest.approx(total, rel=1e-6)
    assert x0.abs().mean().item() == pytest.approx(mean, rel=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("mode", ["recompute", "none"])
def test_the_first_dpm_solver_step_is_a_ddim_step_with_eta_0(prediction: str, mode: str) -> None:
    # DPM-Solver++ to first order is DDIM (Lu et al. 2022, section 4.1) where epŝ is the one of x̂_0:
    # recompute, or no clipping at all
    d = GaussianDiffusion(beta_schedule("cosine", 100), prediction)
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    listed = timesteps("dpmsolver++", "trailing", 10, 100)
    (t, x), *_ = d.dpm_solver_sample_loop_progressive(stand_in, x_T, listed, mode)
    ddim = d.ddim_step(stand_in, x_T, full(listed[0], 4), full(listed[1], 4), torch.zeros_like(x_T), 0.0, mode)
    assert t == listed[0] and torch.allclose(x, ddim, rtol=0, atol=1e-12)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_dpm_solver_steps_are_the_papers_formulas_written_out(prediction: str, spacing: str) -> None:
    # Lu et al. 2022, Algorithm 2 (DPM-Solver++(2M)), with alpha, sigma, lambda from the betas here:
    # x_t = sigma_t/sigma_s·x_s − alpha_t·(e^(−h) − 1)·D, h = lambda_t − lambda_s; D = x̂_0(s) at the
    # first step, x̂_0(s) + (x̂_0(s) − x̂_0(s'))·h/(2h') after it (h' = lambda_s − lambda_s'); the last
    # step lands on x̂_0 itself. n = 3: the second step is the one second-order step.
    betas = beta_schedule("cosine", 100)
    d = GaussianDiffusion(betas, prediction)
    alphas_cumprod = np.cumprod(1 - betas.numpy())
    alpha, sigma = np.sqrt(alphas_cumprod), np.sqrt(1 - alphas_cumprod)
    lam = np.log(alpha / sigma)
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for n in (3, 10):
        listed = timesteps("dpmsolver++", spacing, n, 100)
        x, x0_before = x_T, None
        for i, (t, got) in enumerate(d.dpm_solver_sample_loop_progressive(stand_in, x_T, listed, "recompute")):
            x0 = d.denoise(stand_in, x, full(t, 4), "recompute")[0]
            if i == n - 1:
                expected = x0
            else:
                s, t_next = listed[i], listed[i + 1]
                h = lam[t_next] - lam[s]
                extrapolated = x0 if i == 0 else x0 + (x0 - x0_before) * h / (2 * (lam[s] - lam[listed[i - 1]]))
                expected = sigma[t_next] / sigma[s] * x - alpha[t_next] * (np.exp(-h) - 1) * extrapolated
            assert torch.allclose(got, expected, rtol=0, atol=1e-12), (n, i)
            x, x0_before = expected, x0


def test_the_math_keeps_the_datas_dtype_and_its_tables_in_float64() -> None:
    # the tables are float64 whatever the betas came as; each value is cast to the data's dtype, and a
    # bfloat16 model output (autocast) is taken back to it, so x_t never changes precision mid-chain
    d = GaussianDiffusion(beta_schedule("linear", 100).float())
    assert all(b.dtype == torch.float64 for b in d.buffers())
    x, t, z = torch.randn(2, 3, 4, 4), torch.tensor([0, 50]), torch.randn(2, 3, 4, 4)
    bf16_model = lambda x_, t_: (0.5 * x_).bfloat16()
    assert d.q_sample(x, t, z).dtype == torch.float32
    assert d.p_sample(bf16_model, x, t, z, "fixed_large", "recompute").dtype == torch.float32
    assert d.ddim_step(bf16_model, x, t, t - 1, z, 1.0, "none").dtype == torch.float32


def test_ddim_with_eta_0_draws_nothing_from_the_generator(diffusion: GaussianDiffusion) -> None:
    # the next batch's x_T comes from the same generator: a deterministic chain must leave it alone
    for eta, drawn in ((0.0, False), (1.0, True)):
        g = torch.Generator().manual_seed(0)
        list(
            diffusion.ddim_sample_loop_progressive(
                lambda x, t: 0.5 * x, torch.zeros(2, 3, 4, 4), [999, 500, 300, 100, 0], eta, g, "recompute"
            )
        )
        assert (not torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())) == drawn


def test_an_unknown_prediction_target_is_named() -> None:
    with pytest.raises(ValueError, match="unknown prediction target 'noise'; expected one of: eps, x0, v"):
        GaussianDiffusion(beta_schedule("linear", 100), "noise")


def test_dynamic_thresholding_is_imagens_against_numpys_percentile() -> None:
    # per sample s = max(the 99.5th percentile of |x_0| (linear interpolation, numpy's default), 1),
    # then clip to [-s, s] and divide by s; a sample whose percentile is below 1 is only clipped
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64) * torch.tensor([3.0, 0.2, 1.5]).reshape(3, 1, 1, 1)
    got = dynamic_threshold(x0)
    for image, out in zip(x0.numpy(), got.numpy(), strict=True):
        s = max(np.percentile(np.abs(image), 99.5), 1.0)
        np.testing.assert_allclose(out, np.clip(image, -s, s) / s, rtol=0, atol=1e-15)
    assert got[0].abs().max() == 1 and (got[0].abs() == 1).float().mean() > 0  # the top 0.5 % saturate at ±1
    assert torch.equal(got[1], x0[1].clamp(-1, 1))  # s = 1: plain clipping


def test_a_sampler_and_spacing_pair_that_is_not_defined_is_named_with_the_samplers_spacings() -> None:
    with pytest.raises(ValueError) as refused:
        timesteps("dpmsolver++", "quadratic", 5, 100)
    assert str(refused.value) == "dpmsolver++ has no quadratic spacing; it has linspace, leading, trailing"
    with pytest.raises(ValueError) as refused:
        timesteps("ddpm", "linspace", 5, 100)  # DDPM takes every timestep: no spacing
    assert str(refused.value) == "ddpm has no linspace spacing; it has none"


def test_a_samplings_name_says_its_chain_steps_and_spacing() -> None:
    assert sampling_name({"sampler": "ddpm", "steps": 20, "spacing": "trailing"}) == "DDPM"
    assert sampling_name({"sampler": "ddim", "steps": 50, "spacing": "linspace"}) == "DDIM 50 steps, linspace"
    assert sampling_name({"sampler": "dpmsolver++", "steps": 20, "spacing": "trailing"}) == (
        "DPM-Solver++ 20 steps, trailing"
    )
    # samples.json from before the spacing was a setting: DDIM's steps were ddim_steps, its spacing linspace
    assert sampling_name({"sampler": "ddim", "ddim_steps": 10}) == "DDIM 10 steps, linspace"
