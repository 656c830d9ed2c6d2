"""Variants (ddpm/variants.py): named runs in params.yaml, resolved by --beta-schedule, run in their own
folders, checked and stated by compare (ddpm/knobs.py)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import invoke, tiny_params

from ddpm.checkpoint import describe
from ddpm.config import load_config
from ddpm.errors import UserError
from ddpm.knobs import check_knobs, check_variants_trained, knob_sentence, variant_keys
from ddpm.plots import process_specs
from ddpm.results import label

VARIANTS = {
    "cosine-minsnr": {"diffusion": {"schedule": "cosine"}, "train": {"loss_weighting": "min_snr", "min_snr_gamma": 2}},
    "linear-v": {"diffusion": {"prediction": "v"}},
}


def params(folder: Path, variants: dict = VARIANTS, **sections: dict) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({**tiny_params(**sections), "variants": variants}))
    return path


def test_a_variant_is_its_keys_over_the_file_under_its_own_name(tmp_path: Path) -> None:
    path = params(tmp_path, schedules=["linear", "cosine-minsnr"])
    chosen = load_config(path, [("--beta-schedule", "diffusion.schedule", "cosine-minsnr")])
    resolved = (chosen.run_name, chosen.diffusion.schedule, chosen.train.loss_weighting)
    assert resolved == ("cosine-minsnr", "cosine", "min_snr")
    assert chosen.train.min_snr_gamma == 2 and chosen.diffusion.prediction == "eps"
    # the command line comes after the variant, whichever order the flags came in
    last = load_config(path, [("--set train.min_snr_gamma", "train.min_snr_gamma", 7),
                              ("--beta-schedule", "diffusion.schedule", "cosine-minsnr")])  # fmt: skip
    assert (last.train.min_snr_gamma, last.train.loss_weighting) == (7, "min_snr")
    # a variant that leaves the schedule to the file takes the file's; a plain name is as it always was
    assert load_config(path, [("--beta-schedule", "diffusion.schedule", "linear-v")]).diffusion.schedule == "linear"
    plain = load_config(path, [("--beta-schedule", "diffusion.schedule", "cosine")])
    assert (plain.run_name, plain.train.loss_weighting, plain.model_dump() == load_config(path).model_dump()) == (
        "cosine", "none", False)  # fmt: skip
    assert load_config(path).run_name == "linear"  # no flag: the file's diffusion.schedule
    assert variant_keys(chosen.variants, ["linear", "cosine-minsnr"]) == {
        "diffusion.schedule", "train.loss_weighting", "train.min_snr_gamma"}  # fmt: skip
    assert variant_keys(chosen.variants, ["linear", "cosine"]) == set()
    # another γ is another weighting: the knob compare checks is train.loss_weighting, γ included
    assert variant_keys({"gamma2": {"train": {"min_snr_gamma": 2}}}, ["gamma2"]) == {
        "train.min_snr_gamma", "train.loss_weighting"}  # fmt: skip


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ({"train": {"loss_weightin": "min_snr"}}, "variants.bad.train.loss_weightin: unknown key; expected one of: "
                                                  "steps, batch_size,"),
        ({"sample": {"steps": 5}}, "variants.bad.sample: unknown key; expected one of: model, diffusion, train"),
        ({"train": {"min_snr_gamma": 0}}, "variants.bad.train.min_snr_gamma: expected a positive number, got 0"),
        ({"diffusion": {"schedule": "cosin"}}, "variants.bad.diffusion.schedule: expected one of linear, cosine, "
                                               'quadratic, sigmoid, got "cosin"'),
        ({"train": {"seed": 1}}, "variants.bad.train.seed: a variant is trained once per seed of `seeds`; expected no "
                                 "train.seed"),
        ({"train": 3}, "variants.bad.train: expected a mapping, got 3"),
    ],
)  # fmt: skip
def test_each_bad_variant_gives_its_pinned_line(tmp_path: Path, variant: dict, message: str) -> None:
    path = params(tmp_path, {"bad": variant})
    with pytest.raises(UserError) as error:
        load_config(path)  # every command checks every variant, whichever it runs
    assert str(error.value).startswith(f"{path}: {message}")
    assert "\n" not in str(error.value)


def test_variant_names_and_schedules_entries_are_checked(tmp_path: Path) -> None:
    named = 'variants.b ad: expected a name of letters, digits, _ . and -, got "b ad"'
    scheduled = "variants.cosine: a schedule's name; expected a name of its own"
    for variants, message in (({"b ad": {}}, named), ({"cosine": {}}, scheduled)):
        with pytest.raises(UserError, match=f"^{tmp_path / 'params.yaml'}: {message}$"):
            load_config(params(tmp_path, variants))
    with pytest.raises(UserError, match=r'^--set schedules \(schedules\[1\]\): expected .* or names of `variants`, got '
                                        r'"cosine-minsnr2"$'):  # fmt: skip
        load_config(params(tmp_path), [("--set schedules", "schedules", ["linear", "cosine-minsnr2"])])


def run(name: str, model: dict) -> SimpleNamespace:
    return SimpleNamespace(name=name, seed=0, model=model)


def test_compare_judges_a_declared_knob_and_refuses_an_undeclared_one() -> None:
    plain = {"diffusion": {"schedule": "linear", "prediction": "eps"}, "config": {"train": {"loss_weighting": "none"}}}
    v_ztsnr = {"diffusion": {"schedule": "linear", "prediction": "v", "zero_terminal_snr": True}, "config": None}
    runs = [run("linear", plain), run("linear-ztsnr-v", v_ztsnr)]
    with pytest.raises(UserError, match=r"different diffusion.prediction \(linear: eps, linear-ztsnr-v: v\)"):
        check_knobs(runs, {"diffusion.zero_terminal_snr"}, label)
    with pytest.raises(UserError, match=r"different diffusion.zero_terminal_snr \(linear: False, linear-ztsnr-v: True"):
        check_knobs(runs, {"diffusion.prediction"}, label)
    check_knobs(runs, {"diffusion.prediction", "diffusion.zero_terminal_snr"}, label)
    assert knob_sentence(runs, label) == (
        "Process and loss, every run: fixed variances; linear: predicts ε, loss unweighted (L_simple, Ho et al. eq. "
        "14); linear-ztsnr-v: predicts v (Salimans & Ho 2022), zero terminal SNR (Lin et al. 2023), loss weighting "
        "not recorded (imported).")  # fmt: skip


@pytest.mark.slow
def test_a_variant_trains_and_samples_in_its_own_folder(tmp_path: Path, flowers16: Path) -> None:
    params(tmp_path, schedules=["linear", "cosine-minsnr"], tracking={"enabled": False}, train={"steps": 2})
    trained = invoke("train", "--beta-schedule", "cosine-minsnr", "--data", str(flowers16), "--device", "cpu",
                     cwd=tmp_path)  # fmt: skip
    assert trained.exit_code == 0, trained.output
    model = tmp_path / "runs" / "cosine-minsnr" / "seed0" / "model.pt"
    described = describe(model)
    assert (described["variant"], described["diffusion"]["schedule"]) == ("cosine-minsnr", "cosine")
    assert (described["config"]["train"]["loss_weighting"], described["config"]["train"]["min_snr_gamma"]) == (
        "min_snr", 2)  # fmt: skip
    drawn = invoke("sample", "--beta-schedule", "cosine-minsnr", "--device", "cpu", cwd=tmp_path)
    assert drawn.exit_code == 0, drawn.output
    origin = json.loads((model.parent / "samples" / "samples.json").read_text())
    assert (origin["variant"], origin["schedule"]) == ("cosine-minsnr", "cosine")


def test_compare_refuses_a_variants_run_trained_otherwise_than_the_variant_says() -> None:
    variants = {"cosine-minsnr": {"diffusion": {"schedule": "cosine"}, "train": {"loss_weighting": "min_snr"}}}
    config = {"diffusion": {"schedule": "cosine"}, "train": {"loss_weighting": "none"}}
    stale = [run("linear", {"config": config}), run("cosine-minsnr", {"config": config})]
    with pytest.raises(UserError, match=r"^cosine-minsnr seed 0: trained with train.loss_weighting = none, but "
                                        r"variants.cosine-minsnr sets min_snr; retrain it \(`ddpm train "
                                        r"--beta-schedule cosine-minsnr --restart-if-changed`\)$"):  # fmt: skip
        check_variants_trained(stale, variants)
    config["train"]["loss_weighting"] = "min_snr"
    check_variants_trained(stale, variants)  # "linear" is no variant: its settings are the schedule's own
    check_variants_trained([run("cosine-minsnr", {})], variants)  # imported: nothing recorded to check


def test_a_variants_sampling_is_checked_only_when_it_is_run(tmp_path: Path) -> None:
    ztsnr = {"linear-ztsnr-v": {"diffusion": {"prediction": "v", "zero_terminal_snr": True}}}
    path = params(tmp_path, ztsnr)
    quadratic = [("--sampler", "sample.sampler", "ddim"), ("--spacing", "sample.spacing", "quadratic")]
    assert load_config(path, quadratic).sample.spacing == "quadratic"  # another run's sampling: not refused
    with pytest.raises(UserError, match=r"params.yaml: variants.linear-ztsnr-v.diffusion.zero_terminal_snr, --spacing: "
                                        r"sample.spacing quadratic never samples t = T − 1 with ddim"):  # fmt: skip
        load_config(path, [*quadratic, ("--beta-schedule", "diffusion.schedule", "linear-ztsnr-v")])
    eps = {"linear-ztsnr": {"diffusion": {"zero_terminal_snr": True}}}  # what is trained: refused on every command
    with pytest.raises(UserError, match=r"variants.linear-ztsnr.diffusion.zero_terminal_snr: diffusion.prediction eps "
                                        r"cannot go with diffusion.zero_terminal_snr"):  # fmt: skip
        load_config(params(tmp_path, eps))


def test_the_knobs_in_words_and_the_keys_of_several_variants() -> None:
    runs = [run("a", {"diffusion": {"schedule": "cosine", "input_scale": 0.5}, "config": {"train": {}}}),
            run("b", {"diffusion": {"schedule": "cosine", "prediction": "x0", "variance": "learned_range"},
                      "config": {"train": {"loss_weighting": "min_snr", "min_snr_gamma": 2.0}}})]  # fmt: skip
    assert knob_sentence(runs, label) == (
        "Process and loss: a: predicts ε, input scale b = 0.5 (Chen 2023), fixed variances, loss unweighted "
        "(L_simple, Ho et al. eq. 14); b: predicts x_0, learned variances (Nichol & Dhariwal 2021), loss Min-SNR-γ "
        "weighted, γ = 2 (Hang et al. 2023).")  # fmt: skip
    variants = {"a": {"diffusion": {"input_scale": 0.5}}, "b": {"diffusion": {"variance": "learned_range"}}}
    assert variant_keys(variants, ["a", "b", "linear"]) == {"diffusion.input_scale", "diffusion.variance"}
    with pytest.raises(UserError) as refused:
        check_knobs(runs, {"diffusion.input_scale"}, label)
    assert str(refused.value) == (
        "the runs were trained with different diffusion.prediction (a: eps, b: x0) and no compared variant sets it; "
        "compare like with like, or declare the difference as a variant (params.yaml's `variants`)")  # fmt: skip


def test_a_stale_variant_run_of_another_seed_is_named_with_its_retraining(tmp_path: Path) -> None:
    variants = load_config(params(tmp_path)).variants  # Variant models, as compare passes them
    config = {"diffusion": {"schedule": "cosine"}, "train": {"loss_weighting": "none", "min_snr_gamma": 2}}
    stale = SimpleNamespace(name="cosine-minsnr", seed=3, model={"config": config})
    retrain = r"--beta-schedule cosine-minsnr --seed 3 --restart-if-changed`\)$"
    with pytest.raises(
        UserError, match=r"^cosine-minsnr seed 3: trained with train.loss_weighting = none, .*" + retrain
    ):
        check_variants_trained([stale], variants)


def test_zero_terminal_snr_checks_the_sweeps_samplers_after_a_ddpm_sampler(tmp_path: Path) -> None:
    knobs = {"prediction": "v", "zero_terminal_snr": True}
    path = params(tmp_path, {}, diffusion=knobs, sample={"sampler": "ddpm", "spacing": "leading"})
    with pytest.raises(UserError, match=r"sample.spacing leading never samples t = T − 1 with ddim"):
        load_config(path)  # DDPM runs every timestep; the sweep's DDIM would skip T − 1


def test_ddpm_schedules_draws_a_variants_own_process(tmp_path: Path) -> None:
    config = load_config(
        params(tmp_path, {"linear-ztsnr-v": {"diffusion": {"prediction": "v", "zero_terminal_snr": True}}})
    )
    specs = process_specs(["cosine", "linear-ztsnr-v"], config)
    assert list(specs) == ["cosine", "linear-ztsnr-v"]  # a variant is labelled by its name alone
    assert (specs["cosine"]["schedule"], specs["cosine"]["zero_terminal_snr"]) == ("cosine", False)
    chosen = specs["linear-ztsnr-v"]
    assert (chosen["schedule"], chosen["prediction"], chosen["zero_terminal_snr"]) == ("linear", "v", True)


def test_the_reports_process_pictures_draw_each_runs_own_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import ddpm.report

    drawn = {}
    for name in ("plot_processes", "forward_processes", "plot_nll_terms", "plot_sweep", "plot_losses", "plot_quality",
                 "plot_sample_grids"):  # fmt: skip
        monkeypatch.setattr(ddpm.report, name, lambda *args, name=name: drawn.setdefault(name, args))
    ztsnr = {"schedule": "linear", "timesteps": 50, "prediction": "v", "zero_terminal_snr": True}
    results = [run("linear-ztsnr-v", {"diffusion": ztsnr}), SimpleNamespace(name="x", seed=1, model={})]
    ddpm.report._draw_pictures(["linear-ztsnr-v"], [0], results, [], None, Path("out"), lambda path: path)
    assert drawn["plot_processes"][0] == drawn["forward_processes"][0] == {"linear-ztsnr-v": ztsnr}  # seed 0's only


def test_a_name_that_is_neither_says_what_is_allowed_and_the_defaults_variants_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed = r"a schedule \(linear, cosine, quadratic, sigmoid\) or a variant \(cosine-minsnr, linear-v\)"
    with pytest.raises(UserError, match=rf'^--beta-schedule \(diffusion.schedule\): expected {allowed}, got "cosin"$'):
        load_config(params(tmp_path), [("--beta-schedule", "diffusion.schedule", "cosin")])
    monkeypatch.chdir(tmp_path / "..")  # no params.yaml: the built-in defaults, params.yaml's three variants
    assert (
        load_config(None, [("--beta-schedule", "diffusion.schedule", "cosine-minsnr")]).train.loss_weighting
        == "min_snr"
    )


def test_the_other_variants_are_checked_over_the_file_not_over_the_variant_being_run(tmp_path: Path) -> None:
    variants = {"ztsnr-v": {"diffusion": {"prediction": "v", "zero_terminal_snr": True}},
                "plain-eps": {"diffusion": {"prediction": "eps"}}}  # fmt: skip
    path = params(tmp_path, variants)
    chosen = load_config(path, [("--beta-schedule", "diffusion.schedule", "ztsnr-v")])  # plain-eps over it: ZTSNR + ε
    assert (chosen.run_name, chosen.diffusion.prediction, chosen.diffusion.zero_terminal_snr) == ("ztsnr-v", "v", True)
    assert load_config(path, [("--beta-schedule", "diffusion.schedule", "plain-eps")]).diffusion.prediction == "eps"
