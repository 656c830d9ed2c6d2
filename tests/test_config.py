from pathlib import Path

import pytest
import yaml

from ddpm.config import Config, load_config, parse_value
from ddpm.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_params_yaml_is_the_default_experiment() -> None:
    # The built-in defaults and params.yaml describe the same experiment, key for key.
    assert load_config(REPO / "params.yaml") == Config()
    assert set(yaml.safe_load((REPO / "params.yaml").read_text())) == set(Config.model_fields)


def test_default_experiment_is_flowers_at_64_not_the_offline_preset() -> None:
    config = Config()
    assert config.data.image_size == 64 and config.model.preset != "tiny"
    assert config.diffusion.timesteps == 1000 and config.diffusion.prediction == "eps"


def test_overrides_take_precedence_and_are_typed(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  lr: 1e-4\n  steps: 10\n")
    config = load_config(
        path, [("--steps", "train.steps", parse_value("25")), ("--set x", "model.dropout", parse_value("0.2"))]
    )
    assert config.train.steps == 25 and config.train.lr == 1e-4 and config.model.dropout == 0.2


def test_model_architecture_is_the_preset_with_overrides() -> None:
    config = Config.model_validate({"data": {"image_size": 32}, "model": {"preset": "ddpm-cifar10", "dropout": 0.0}})
    arch = config.model.architecture(32)
    assert arch == dict(
        channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,), dropout=0.0
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  batch_size: abc\n", 'params.yaml: train.batch_size: expected a positive integer, got "abc"'),
        ("train:\n  batch_size: 0\n", "params.yaml: train.batch_size: expected a positive integer, got 0"),
        ("train:\n  steps: 1.5\n", "params.yaml: train.steps: expected a positive integer, got 1.5"),
        ("train:\n  lr: true\n", "params.yaml: train.lr: expected a positive number, got true"),
        ("train:\n  bach_size: 3\n", "params.yaml: train.bach_size: unknown key; expected one of: steps, batch_size,"),
        ("trian: {}\n", "params.yaml: trian: unknown key; expected one of: data, model, diffusion, train, sample"),
        (
            "diffusion:\n  schedule: cosin\n",
            'diffusion.schedule: expected one of linear, cosine, quadratic, sigmoid, got "cosin"',
        ),
        ("model:\n  preset: huge\n", 'model.preset: expected one of ddpm-cifar10, learnopencv, tiny, got "huge"'),
        (
            "model:\n  channel_mult: [1, x]\n",
            'model.channel_mult[1]: expected a list of positive integers or null, got "x"',
        ),
        ("model:\n  dropout: 1.0\n", "model.dropout: expected a number in [0, 1) or null, got 1.0"),
        ("sample:\n  clip_denoised: maybe\n", 'sample.clip_denoised: expected true or false, got "maybe"'),
        ("data:\n  holdout: -1\n", "params.yaml: data.holdout: expected a non-negative integer, got -1"),
        ("data:\n  holdout_seed: -1\n", "params.yaml: data.holdout_seed: expected a non-negative integer, got -1"),
        ("train: 5\n", "params.yaml: train: expected a mapping with keys steps,"),
        ("- 1\n", "params.yaml: expected a mapping of sections"),
        ("train: [\n", "params.yaml: invalid YAML at line 2"),
        (
            "model:\n  attention_resolutions: [7]\n",
            "attention resolutions [7] are not among the UNet's resolutions [64, 32, 16, 8]",
        ),
    ],
)
def test_file_errors_name_the_file_key_expectation_and_value(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UserError) as error:
        load_config(write(tmp_path, text))
    assert message in str(error.value)
    assert str(error.value).startswith(str(tmp_path / "params.yaml"))


def test_override_errors_name_the_option(tmp_path: Path) -> None:
    path = write(tmp_path, "train: {}\n")
    with pytest.raises(UserError, match=r'^--batch-size \(train.batch_size\): expected a positive integer, got "abc"$'):
        load_config(path, [("--batch-size", "train.batch_size", "abc")])
    with pytest.raises(UserError, match="^--set train.lx: unknown key; expected one of: steps"):
        load_config(path, [("--set train.lx", "train.lx", 1)])
    with pytest.raises(UserError, match="^--set lr: expected section.key=value"):
        load_config(path, [("--set lr", "lr", 1)])


def test_missing_config_file_is_an_error_but_no_default_file_means_defaults(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(UserError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    monkeypatch.chdir(tmp_path)
    assert load_config() == Config()


def test_yaml_exponents_without_a_dot_are_numbers(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-4 as a string; a learning rate written so must still work.
    assert load_config(write(tmp_path, "train:\n  lr: 1e-4\n")).train.lr == 1e-4


def test_config_round_trips_through_json() -> None:
    config = Config.model_validate({"model": {"preset": "tiny", "channel_mult": [1, 2]}})
    assert Config.model_validate(config.model_dump(mode="json")) == config


def test_schedules_is_a_list_of_distinct_known_names(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "schedules: [cosine, sigmoid]\n")).schedules == ["cosine", "sigmoid"]
    for text, shown in (("[linear, linear]", '["linear", "linear"]'), ("[linear, cosin]", '"cosin"'), ("[]", "[]")):
        with pytest.raises(UserError) as error:
            load_config(write(tmp_path, f"schedules: {text}\n"))
        assert str(error.value).startswith(f"{tmp_path / 'params.yaml'}: schedules")
        assert f"expected a list of distinct schedule names (linear, cosine, quadratic, sigmoid), got {shown}" in str(
            error.value
        )
    overridden = load_config(write(tmp_path, "train: {}\n"), [("--set schedules", "schedules", ["quadratic"])])
    assert overridden.schedules == ["quadratic"]
