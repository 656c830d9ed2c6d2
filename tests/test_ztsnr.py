"""Zero terminal SNR (Lin et al. 2023) and the input scale b (Chen 2023): the betas against diffusers and
the closed forms, the refusals, and every sampler, loss and bound finite where alphā_T = 0."""

import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import CPU, invoke, tiny_config
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as diffusers_rescale

import ddpm.plots
import ddpm.tracking
from ddpm.checkpoint import load_trained
from ddpm.config import SampleConfig, load_config
from ddpm.diffusion import CLIP_MODES, GaussianDiffusion
from ddpm.errors import UserError
from ddpm.plots import log_snr_curve, process_specs
from ddpm.sample import chain_timesteps
from ddpm.schedules import SCHEDULES, beta_schedule, process_betas, rescale_zero_terminal_snr, shift_log_snr
from ddpm.spacing import timesteps
from ddpm.train import train


def log_snr(betas: torch.Tensor) -> torch.Tensor:
    """log(alphā/(1 − alphā)), with 1 − alphā = −expm1(log alphā): no cancellation where alphā ≈ 1."""
    log_alphas_cumprod = torch.cumsum(torch.log1p(-betas), 0)
    return log_alphas_cumprod - torch.log(-torch.expm1(log_alphas_cumprod))


@pytest.mark.parametrize("name", SCHEDULES)
def test_the_rescale_is_diffusers_and_ends_at_exactly_zero_snr(name: str) -> None:
    betas = beta_schedule(name, 1000)
    rescaled = rescale_zero_terminal_snr(betas)
    torch.testing.assert_close(rescaled, diffusers_rescale(betas.clone()), rtol=0, atol=1e-12)
    assert rescaled.dtype == torch.float64 and rescaled[-1].item() == 1.0
    assert (rescaled[:-1] > 0).all() and (rescaled[:-1] < 1).all()
    # √alphā_1 kept: the first beta too
    assert rescaled[0].item() == pytest.approx(betas[0].item(), rel=1e-12)


def test_the_defaults_give_the_schedules_betas_bit_for_bit() -> None:
    for name in SCHEDULES:
        assert torch.equal(process_betas(name, 1000), beta_schedule(name, 1000))
    betas = beta_schedule("cosine", 50)
    assert shift_log_snr(betas, 1.0) is betas


@pytest.mark.parametrize("b", [0.5, 2.0])
def test_the_input_scale_shifts_log_snr_by_2_log_b_and_is_the_normalised_scaled_input(b: float) -> None:
    for name in ("linear", "cosine"):
        betas = beta_schedule(name, 1000)
        shifted = shift_log_snr(betas, b)
        torch.testing.assert_close(log_snr(shifted) - log_snr(betas), torch.full_like(betas, 2 * math.log(b)),
                                   rtol=0, atol=1e-12)  # fmt: skip
    # q(x_t | x_0) of the shifted process = (√alphā·b·x_0 + √(1 − alphā)·eps)/√(b²alphā + 1 − alphā), same eps
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 10, 200, 500, 900, 999])
    a = torch.cumprod(1 - beta_schedule("linear", 1000), 0)[t].reshape(-1, 1, 1, 1)
    expected = (a.sqrt() * b * x0 + (1 - a).sqrt() * eps) / (b**2 * a + 1 - a).sqrt()
    ours = GaussianDiffusion(process_betas("linear", 1000, input_scale=b)).q_sample(x0, t, eps)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    # with zero terminal SNR: alphā'_T is still exactly 0
    assert torch.cumprod(1 - process_betas("cosine", 1000, True, b), 0)[-1].item() == 0.0


def test_bad_knobs_are_one_line_naming_the_keys() -> None:
    with pytest.raises(UserError) as error:
        load_config(overrides=[("--set", "diffusion.input_scale", 0)])
    assert str(error.value) == "--set (diffusion.input_scale): expected a positive number, got 0"
    with pytest.raises(UserError) as error:
        load_config(overrides=[("--set", "diffusion.zero_terminal_snr", True)])
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(
        "--set: diffusion.prediction eps cannot go with diffusion.zero_terminal_snr: at t = T x_T"
    )
    assert "x̂_0 = (x_T − eps)/0" in str(error.value) and str(error.value).endswith("use diffusion.prediction: v")
    ztsnr_v = [("--set", "diffusion.zero_terminal_snr", True), ("--set", "diffusion.prediction", "v")]
    for sampler, spacing in (("ddim", "leading"), ("ddim", "quadratic"), ("dpmsolver++", "leading")):
        with pytest.raises(
            UserError,
            match=rf"^--set: sample.spacing {spacing} never samples t = T − 1 with {re.escape(sampler)},.*trailing$",
        ):
            load_config(
                overrides=[*ztsnr_v, ("--set", "sample.sampler", sampler), ("--set", "sample.spacing", spacing)]
            )
    for spacing in ("trailing", "linspace"):  # both start at T − 1, for DDIM and DPM-Solver++ (the sweep's)
        config = load_config(
            overrides=[*ztsnr_v, ("--set", "sample.sampler", "ddim"), ("--set", "sample.spacing", spacing)]
        )
        assert config.diffusion.zero_terminal_snr and timesteps("dpmsolver++", spacing, 50, 1000)[0] == 999

    # a zero-terminal-SNR checkpoint sampled with a spacing that skips T − 1: refused at sampling too
    model = GaussianDiffusion(process_betas("linear", 100, True), "v")
    for sampler in ("ddim", "dpmsolver++"):
        with pytest.raises(
            UserError, match=r"^sample.spacing \(.*, m.pt\): leading never samples t = T − 1, .*trailing$"
        ):
            chain_timesteps(SampleConfig(sampler=sampler, spacing="leading", steps=10), model, "m.pt")
        assert chain_timesteps(SampleConfig(sampler=sampler, spacing="trailing", steps=10), model, "m.pt")[0] == 99
    plain = GaussianDiffusion(beta_schedule("linear", 100), "v")  # without ZTSNR leading is the user's choice
    assert chain_timesteps(SampleConfig(sampler="ddim", spacing="leading", steps=10), plain, "m.pt")[0] == 90


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_every_sampler_clip_mode_loss_and_the_bound_are_finite_at_zero_terminal_snr(prediction: str) -> None:
    diffusion = GaussianDiffusion(process_betas("linear", 50, True, 0.5), prediction)
    assert diffusion.alphas_cumprod[-1].item() == 0 and math.isinf(diffusion.sqrt_recip_alphas_cumprod[-1].item())
    model = lambda x, t: 0.7 * x.tanh() + 0.01 * t.reshape(-1, 1, 1, 1)  # noqa: E731
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 3, 4, 4, generator=generator)
    listed = timesteps("ddim", "trailing", 5, 50)
    for clip_mode in CLIP_MODES:
        chains = [diffusion.p_sample_loop_progressive(model, noise, generator, "fixed_large", clip_mode),
                  diffusion.ddim_sample_loop_progressive(model, noise, listed, 1.0, generator, clip_mode),
                  diffusion.dpm_solver_sample_loop_progressive(model, noise, listed, clip_mode)]  # fmt: skip
        for chain in chains:
            assert all(torch.isfinite(x).all() for _, x in chain)
    x0 = (torch.rand(2, 3, 4, 4, generator=generator) * 255).round() / 127.5 - 1
    t = torch.tensor([49, 3])
    for weighting in ("none", "min_snr"):
        assert math.isfinite(diffusion.training_loss(model, x0, t, torch.randn_like(x0), weighting).item())
    # the closed form of eps from x_0 at the last step: x_T is eps itself
    x_t = torch.randn_like(x0)
    torch.testing.assert_close(diffusion.predict_eps_from_x0(x_t, t[:1].repeat(2), x0), x_t)
    terms = diffusion.nll_bpd(model, x0, "fixed_small", "x0", generator, batch_size=16)
    assert (terms.prior == 0).all()  # q(x_T | x_0) = N(0, I) exactly
    assert torch.isfinite(terms.terms).all() and torch.isfinite(terms.total).all()


def process(spec: dict) -> torch.Tensor:
    return process_betas(spec["schedule"], spec["timesteps"], spec["zero_terminal_snr"], spec["input_scale"])


def test_the_plotted_log_snr_leaves_out_the_terminal_point_and_shows_the_shift() -> None:
    knobs = {"timesteps": 100, "zero_terminal_snr": True, "input_scale": 0.5, "prediction": "v"}
    (label, spec), (plain_label, plain) = (
        *process_specs(["cosine"], tiny_config(diffusion=knobs)).items(),
        *process_specs(["cosine"], tiny_config(diffusion={"timesteps": 100})).items(),
    )
    assert (label, plain_label) == ("cosine, zero terminal SNR, b = 0.5", "cosine")
    t, shifted = log_snr_curve(torch.cumprod(1 - process(spec), 0).numpy())
    assert len(t) == 99 and t[-1] == 0.99 and np.isfinite(shifted).all()  # alphā_T = 0: log-SNR −inf, left out
    _, curve = log_snr_curve(torch.cumprod(1 - process({**spec, "input_scale": 1.0}), 0).numpy())
    np.testing.assert_allclose(shifted - curve[:99], 2 * math.log(0.5), rtol=0, atol=1e-9)
    t, curve = log_snr_curve(torch.cumprod(1 - process(plain), 0).numpy())
    assert len(t) == 100


def test_a_trained_run_records_the_knobs_and_is_rebuilt_from_them(
    flowers16: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    knobs = {"prediction": "v", "zero_terminal_snr": True, "input_scale": 0.5}
    config = tiny_config(train={"steps": 2}, diffusion=knobs)
    result = train(config, flowers16, tmp_path, CPU, progress=False)
    described = torch.load(result.checkpoint, weights_only=True)["diffusion"]
    assert {key: described[key] for key in knobs} == knobs
    rebuilt = load_trained(result.checkpoint, CPU).diffusion  # what `ddpm sample` samples
    assert torch.equal(rebuilt.betas, process_betas(described["schedule"], described["timesteps"], True, 0.5))
    params: dict[str, str] = {}
    fake = SimpleNamespace(id="run-1", log_params=params.update, set_tags=lambda tags: None)
    monkeypatch.setattr(ddpm.tracking, "open_store", lambda cfg, folder: None)
    monkeypatch.setattr(ddpm.tracking, "model_run", lambda *args: fake)
    ddpm.tracking.ModelTracker(config, tmp_path).start(None)
    assert (params["diffusion.zero_terminal_snr"], params["diffusion.input_scale"]) == ("true", "0.5")


def test_the_schedules_command_draws_each_schedule_with_the_configs_knobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn = []
    monkeypatch.setattr(ddpm.plots, "schedule_pictures", lambda specs, *args: drawn.append(specs) or ["a", "b"])
    knobs = ["--set", "diffusion.zero_terminal_snr=true", "--set", "diffusion.prediction=v"]
    result = invoke("schedules", "linear", "cosine", *knobs, "--set", "diffusion.input_scale=0.5", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    spec = {"timesteps": 1000, "prediction": "v", "zero_terminal_snr": True, "input_scale": 0.5}
    assert [{label: {k: s[k] for k in ("schedule", *spec)} for label, s in specs.items()} for specs in drawn] == [
        {f"{name}, zero terminal SNR, b = 0.5": {"schedule": name, **spec} for name in ("linear", "cosine")}
    ]
