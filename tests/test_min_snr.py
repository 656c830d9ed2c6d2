"""Min-SNR-γ loss weighting (Hang et al. 2023): the weights against their closed forms and diffusers'
training examples, SNR = 0, the weighted loss written out, and a training run that records it."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import CPU, tiny_config

import ddpm.results
import ddpm.tracking
from ddpm.config import TrainConfig, load_config
from ddpm.diffusion import MIN_SNR_GAMMA, GaussianDiffusion
from ddpm.errors import UserError
from ddpm.knobs import check_knobs, knob_sentence
from ddpm.results import label
from ddpm.schedules import beta_schedule
from ddpm.train import train

PREDICTIONS = ["eps", "x0", "v"]


def zero_terminal_betas() -> torch.Tensor:
    """A hand-made T = 6 table whose last alphā is 0 (beta = 1 there): SNR runs from ~99 down to 0."""
    return torch.tensor([0.01, 0.05, 0.2, 0.5, 0.7, 1.0], dtype=torch.float64)


def closed_form(prediction: str, alpha_bar: float, gamma: float) -> float:
    """The paper's weights, one timestep at a time in Python floats: SNR = alphā/(1 − alphā)."""
    if alpha_bar == 0:  # SNR = 0: the limits, ε's min(SNR, γ)/SNR → 1
        return {"eps": 1.0, "x0": 0.0, "v": 0.0}[prediction]
    snr = alpha_bar / (1 - alpha_bar)
    return {"eps": min(snr, gamma) / snr, "x0": min(snr, gamma), "v": min(snr, gamma) / (snr + 1)}[prediction]


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("gamma", [0.5, 5.0])
def test_the_weights_are_the_closed_forms_at_every_timestep_snr_zero_included(prediction: str, gamma: float) -> None:
    betas = zero_terminal_betas()
    d = GaussianDiffusion(betas, prediction)
    alpha_bars = [math.prod(1 - b for b in betas.tolist()[: i + 1]) for i in range(len(betas))]
    expected = torch.tensor([closed_form(prediction, a, gamma) for a in alpha_bars], dtype=torch.float64)
    weights = d.min_snr_weight(torch.arange(len(betas)), gamma)
    assert weights.dtype == torch.float64 and torch.isfinite(weights).all()
    assert torch.allclose(weights, expected, rtol=1e-12, atol=0), (weights, expected)
    assert weights[-1].item() == {"eps": 1.0, "x0": 0.0, "v": 0.0}[prediction]  # SNR = 0, exactly


@pytest.mark.parametrize(("prediction", "prediction_type"), [("eps", "epsilon"), ("v", "v_prediction")])
@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_the_weights_equal_diffusers_training_examples(prediction: str, prediction_type: str, schedule: str) -> None:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    scheduler = DDPMScheduler(num_train_timesteps=200, beta_schedule=schedule, prediction_type=prediction_type)
    d = GaussianDiffusion(scheduler.betas.double(), prediction)
    t = torch.arange(200)
    # examples/text_to_image/train_text_to_image.py, the --snr_gamma branch, on the same table in float64
    # (diffusers' own float32 alphā loses 1 − alphā's digits near alphā = 1)
    snr = compute_snr(SimpleNamespace(alphas_cumprod=torch.cumprod(1 - scheduler.betas.double(), 0)), t)
    theirs = torch.stack([snr, 5.0 * torch.ones_like(t)], dim=1).min(dim=1)[0]
    theirs = theirs / snr if prediction_type == "epsilon" else theirs / (snr + 1)
    assert torch.allclose(d.min_snr_weight(t, 5.0).float(), theirs, rtol=1e-6, atol=0)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_the_weighted_loss_is_the_batch_mean_of_weight_times_each_samples_mse(prediction: str) -> None:
    betas = zero_terminal_betas()
    d = GaussianDiffusion(betas, prediction)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 2, 3, 3, generator=generator, dtype=torch.float64) * 2 - 1
    noise = torch.randn(6, 2, 3, 3, generator=generator, dtype=torch.float64)
    t = torch.tensor([5, 0, 3, 1, 4, 2])
    model = lambda x, t_: 0.5 * x + 0.1 * t_.double().reshape(-1, 1, 1, 1)
    total = 0.0
    for i in range(6):  # by hand, one sample at a time, the table written out again
        a = math.prod(1 - b for b in betas.tolist()[: t[i] + 1])
        x_t = math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i]
        target = {"eps": noise[i], "x0": x0[i], "v": math.sqrt(a) * noise[i] - math.sqrt(1 - a) * x0[i]}[prediction]
        out = 0.5 * x_t + 0.1 * t[i].item()
        total += closed_form(prediction, a, 2.0) * ((out - target) ** 2).mean().item()
    loss = d.training_loss(model, x0, t, noise, "min_snr", 2.0)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(total / 6, rel=1e-6)


def test_none_is_torchs_mse_exactly_and_eps_with_a_huge_gamma_gives_it_too() -> None:
    d = GaussianDiffusion(beta_schedule("linear", 100))
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(8, 3, 4, 4, generator=generator), torch.randn(8, 3, 4, 4, generator=generator)
    t = torch.randint(0, 100, (8,), generator=generator)
    model = lambda x, t_: 0.7 * x
    plain = torch.nn.functional.mse_loss(model(d.q_sample(x0, t, noise), t), noise)
    assert torch.equal(d.training_loss(model, x0, t, noise), plain)  # bit for bit: today's path
    assert torch.equal(d.training_loss(model, x0, t, noise, "none", 0.1), plain)  # γ unused
    # γ above every SNR (the largest here is ~1e4): every ε weight is 1
    assert d.training_loss(model, x0, t, noise, "min_snr", 1e9).item() == pytest.approx(plain.item(), rel=1e-6)
    assert d.training_loss(model, x0, t, noise, "min_snr", 5.0).item() < 0.5 * plain.item()  # and it does weigh


def test_a_gamma_not_above_zero_is_one_line_naming_the_key() -> None:
    assert TrainConfig().min_snr_gamma == MIN_SNR_GAMMA  # the config's default is the loss's
    for gamma in ("0", "-1"):
        with pytest.raises(UserError) as error:
            load_config(overrides=[("--set", "train.min_snr_gamma", float(gamma))])
        assert str(error.value) == f"--set (train.min_snr_gamma): expected a positive number, got {gamma}.0"


def test_a_min_snr_run_trains_records_it_and_refuses_a_resume_without_it(
    flowers16: Path, tmp_path: Path, trained_result, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, asked = GaussianDiffusion.training_loss, set()

    def training_loss(self, *args):  # noqa: ANN001, ANN202
        asked.add(args[4:])  # the weighting and γ the loop passed
        return real(self, *args)

    monkeypatch.setattr(GaussianDiffusion, "training_loss", training_loss)
    config = tiny_config(train={"steps": 10, "loss_weighting": "min_snr", "min_snr_gamma": 2.0})
    result = train(config, flowers16, tmp_path, CPU, progress=False)
    assert asked == {("min_snr", 2.0)}
    (step, loss), plain = result.losses[0], dict(trained_result.losses)
    assert step == 10 and math.isfinite(loss) and loss != pytest.approx(plain[10], rel=1e-3)  # same batches
    saved = torch.load(result.checkpoint, weights_only=True)["config"]["train"]
    assert (saved["loss_weighting"], saved["min_snr_gamma"]) == ("min_snr", 2.0)
    with pytest.raises(UserError, match=r"train.loss_weighting \(min_snr → none\), train.min_snr_gamma \(2.0 → 5.0\)"):
        train(tiny_config(train={"steps": 20}), flowers16, tmp_path, CPU, progress=False)


def run(name: str, seed: int, train: dict | None) -> SimpleNamespace:
    """What `compare` reads of a run here: its name, seed and model.pt's config (None: an imported model)."""
    return SimpleNamespace(name=name, seed=seed, model={"config": {"train": train}} if train else {})


WEIGHTED = {"loss_weighting": "min_snr", "min_snr_gamma": 5.0}


def test_the_reports_conditions_say_how_each_run_weighed_its_loss() -> None:
    same = [run("linear", 0, WEIGHTED), run("cosine", 0, WEIGHTED)]
    assert knob_sentence(same, label) == ("Process and loss, every run: predicts ε, fixed variances, loss Min-SNR-γ "
                                          "weighted, γ = 5 (Hang et al. 2023).")  # fmt: skip
    mixed = [run("linear", 1, {"loss_weighting": "none"}), run("cosine", 1, {"lr": 1e-3}), run("imported", 0, None)]
    plain = "loss unweighted (L_simple, Ho et al. eq. 14)"
    expected = (f"Process and loss, every run: predicts ε, fixed variances; linear seed 1: {plain}; cosine seed 1: "
                f"{plain}; imported: loss weighting not recorded (imported).")  # fmt: skip
    assert knob_sentence(mixed, label) == expected


def test_the_weighting_is_an_mlflow_param_of_the_run_not_a_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params: dict[str, str] = {}
    fake = SimpleNamespace(id="run-1", log_params=params.update, set_tags=lambda tags: None)
    monkeypatch.setattr(ddpm.tracking, "open_store", lambda cfg, folder: None)
    monkeypatch.setattr(ddpm.tracking, "model_run", lambda *args: fake)
    config = tiny_config(train={"loss_weighting": "min_snr", "min_snr_gamma": 2.0})
    ddpm.tracking.ModelTracker(config, tmp_path).start(None)
    assert (params["train.loss_weighting"], params["train.min_snr_gamma"]) == ("min_snr", "2.0")


def test_compare_refuses_schedules_trained_with_different_weightings_unless_a_variant_declares_it() -> None:
    other = {"loss_weighting": "min_snr", "min_snr_gamma": 2}
    check_knobs([run("linear", 0, WEIGHTED), run("cosine", 0, dict(WEIGHTED)), run("imported", 0, None)], set(), label)
    check_knobs([run("linear", 0, {"lr": 1e-3}), run("cosine", 0, {**other, "loss_weighting": "none"})], set(), label)
    pair = [run("linear", 0, WEIGHTED), run("cosine", 0, other)]
    with pytest.raises(UserError, match=r"^the runs were trained with different train.loss_weighting "
                                        r"\(linear: min_snr, γ = 5, cosine: min_snr, γ = 2\) and no compared variant "
                                        r"sets it; compare like with like, or declare"):  # fmt: skip
        check_knobs(pair, set(), label)
    check_knobs(pair, {"train.loss_weighting"}, label)  # a variant sets it: the difference is what is compared
    mixed = [run("linear", 0, {"loss_weighting": "none"}), run("cosine", 1, WEIGHTED)]
    for r in mixed:  # what the rest of compare's comparability check reads: all alike
        r.__dict__.update(evaluation={}, sweep=None, drawn=None, name=r.name)
        r.model |= {"diffusion": {"timesteps": 50}, "arch": {"image_size": 16}}
    with pytest.raises(UserError, match=r"linear: none, cosine seed 1: min_snr, γ = 5\)"):
        ddpm.results.check_knobs(mixed, set(), label)  # read_results' check, which compare runs first
