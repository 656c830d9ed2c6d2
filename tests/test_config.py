import math
from pathlib import Path

import pytest
import yaml

from ddpm.config import Config, load_config, parse_value
from ddpm.config_errors import describe_error
from ddpm.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SEED = "a seed, an integer from 0 to 2^64 - 1"  # what torch's and numpy's generators both take
SEEDS = "a list of distinct seeds, integers from 0 to 2^64 - 1"
BOOTSTRAP = (
    "0 (no SDs) or from 40 to 10000 resamples: an SD from fewer is itself uncertain by more than 11 %; "
    "past 10000 the resamples' indices cost memory, not precision"
)


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
        ("sample:\n  clip_mode: clip\n", 'sample.clip_mode: expected one of recompute, x0, dynamic, none, got "clip"'),
        ("compare:\n  primary: is\n", 'compare.primary: expected one of fid, fid_inf, kid, kid_holdout, nll, got "is"'),
        ("data:\n  holdout: -1\n", "params.yaml: data.holdout: expected a non-negative integer, got -1"),
        ("data:\n  holdout_seed: -1\n", f"params.yaml: data.holdout_seed: expected {SEED}, got -1"),
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


DUPLICATE = "the second would silently replace the first; keep one"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  batch_size: 4\nsample: {}\ntrain:\n  lr: 0.1\n", "train: set twice, at lines 1 and 4"),
        ("train:\n  batch_size: 4\n  lr: 0.1\n  batch_size: 8\n", "train.batch_size: set twice, at lines 2 and 4"),
        ("train: {lr: 0.1, steps: 3, lr: 0.2}\n", "train.lr: set twice, at lines 1 and 1"),
        ("model:\n  channel_mult: [{a: 1,\n    a: 2}]\n", "model.channel_mult[0].a: set twice, at lines 2 and 3"),
    ],
)  # fmt: skip
def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path: Path, text: str, message: str) -> None:
    # YAML keeps the last of two equal keys: a second train: section dropped the first one's batch_size
    with pytest.raises(UserError) as error:
        load_config(write(tmp_path, text))
    assert str(error.value) == f"{tmp_path / 'params.yaml'}: {message}; {DUPLICATE}"


def test_a_key_that_overrides_a_merged_one_is_not_a_key_given_twice(tmp_path: Path) -> None:
    text = "train: &common {seed: 3, batch_size: 8}\nsample:\n  <<: *common\n  batch_size: 4\n"  # YAML's merge key
    sample = load_config(write(tmp_path, text)).sample
    assert (sample.seed, sample.batch_size) == (3, 4)


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


def test_the_bootstrap_takes_0_or_enough_resamples_for_an_sd(tmp_path: Path) -> None:
    for resamples in (0, 40, 200, 10_000):
        assert load_config(write(tmp_path, f"evaluate:\n  bootstrap: {resamples}\n")).evaluate.bootstrap == resamples


def test_schedules_is_a_list_of_distinct_known_names(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "schedules: [cosine, sigmoid]\n")).schedules == ["cosine", "sigmoid"]
    for text, shown in (("[linear, linear]", '["linear", "linear"]'), ("[linear, cosin]", '"cosin"'), ("[]", "[]")):
        with pytest.raises(UserError) as error:
            load_config(write(tmp_path, f"schedules: {text}\n"))
        assert str(error.value).startswith(f"{tmp_path / 'params.yaml'}: schedules")
        expected = "a list of distinct schedule names (linear, cosine, quadratic, sigmoid) or names of `variants`"
        assert f"expected {expected}, got {shown}" in str(error.value)
    overridden = load_config(write(tmp_path, "train: {}\n"), [("--set schedules", "schedules", ["quadratic"])])
    assert overridden.schedules == ["quadratic"]


# Every kind of value pydantic refuses, one line each, pinned word for word: the messages are read
# from pydantic's public error fields and our models' fields, and must not move when pydantic does.
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.batch_size", "abc", '--set train.batch_size: expected a positive integer, got "abc"'),
        ("train.batch_size", True, "--set train.batch_size: expected a positive integer, got true"),
        ("train.steps", 1.5, "--set train.steps: expected a positive integer, got 1.5"),
        ("train.steps", None, "--set train.steps: expected a positive integer, got null"),
        ("train.warmup_steps", -1, "--set train.warmup_steps: expected a non-negative integer, got -1"),
        ("train.seed", 1.0, f"--set train.seed: expected {SEED}, got 1.0"),
        ("train.seed", 2**70, f"--set train.seed: expected {SEED}, got 1180591620717411303424"),  # torch overflowed
        ("sample.seed", 2**64, f"--set sample.seed: expected {SEED}, got 18446744073709551616"),
        ("data.synthetic_seed", "0", f'--set data.synthetic_seed: expected {SEED}, got "0"'),
        ("data.synthetic_seed", -1, f"--set data.synthetic_seed: expected {SEED}, got -1"),  # numpy's ValueError
        ("train.lr", True, "--set train.lr: expected a positive number, got true"),
        ("train.lr", math.inf, "--set train.lr: expected a positive number, got inf"),
        ("train.lr", "inf", '--set train.lr: expected a positive number, got "inf"'),
        ("train.lr", math.nan, "--set train.lr: expected a positive number, got nan"),
        ("train.lr", {"a": 1}, '--set train.lr: expected a positive number, got {"a": 1}'),
        ("train.ema_decay", 1.0, "--set train.ema_decay: expected a number in [0, 1), got 1.0"),
        ("train.ema_warmup", "maybe", '--set train.ema_warmup: expected true or false, got "maybe"'),
        ("train.precision", "fp16", '--set train.precision: expected one of auto, fp32, bf16, got "fp16"'),
        ("train.channels_last", "yes", '--set train.channels_last: expected one of auto or true or false, got "yes"'),
        ("train.compile", 1, "--set train.compile: expected one of auto or true or false, got 1"),
        ("sample.compile", None, "--set sample.compile: expected one of auto or true or false, got null"),
        (
            "sample.channels_last",
            {"x": 1},
            '--set sample.channels_last: expected one of auto or true or false, got {"x": 1}',
        ),
        ("model.channels", "x", '--set model.channels: expected a positive integer or null, got "x"'),
        ("model.dropout", 1.0, "--set model.dropout: expected a number in [0, 1) or null, got 1.0"),
        ("model.dropout", math.inf, "--set model.dropout: expected a number in [0, 1) or null, got inf"),
        ("model.channel_mult", "x", '--set model.channel_mult: expected a list of positive integers or null, got "x"'),
        ("model.channel_mult", [], "--set model.channel_mult: expected a list of positive integers or null, got []"),
        (
            "model.channel_mult",
            [1, "x"],
            '--set model.channel_mult (model.channel_mult[1]): expected a list of positive integers or null, got "x"',
        ),
        (
            "model.channel_mult",
            [1, 2.5, 0],
            (
                "--set model.channel_mult (model.channel_mult[1]): expected a list of positive integers or null, "
                "got 2.5\n"
                "--set model.channel_mult (model.channel_mult[2]): expected a list of positive integers or null, got 0"
            ),
        ),
        (
            "model.attention_resolutions",
            [0],
            (
                "--set model.attention_resolutions (model.attention_resolutions[0]): expected a list of positive "
                "integers or null, got 0"
            ),
        ),
        ("train.adam_betas", [0.9], "--set train.adam_betas: expected a list of numbers in [0, 1), got [0.9]"),
        (
            "train.adam_betas",
            [0.9, 1.0],
            "--set train.adam_betas (train.adam_betas[1]): expected a list of numbers in [0, 1), got 1.0",
        ),
        (
            "train.adam_betas",
            [0.9, True],
            "--set train.adam_betas (train.adam_betas[1]): expected a list of numbers in [0, 1), got true",
        ),
        (
            "train.adam_betas",
            [0.9, math.nan],
            "--set train.adam_betas (train.adam_betas[1]): expected a list of numbers in [0, 1), got nan",
        ),
        (
            "data.checksum",
            "md5:xyz",
            '--set data.checksum: expected "algorithm:hex" with a hashlib algorithm, or null, got "md5:xyz"',
        ),
        ("data.url", "ftp://x", '--set data.url: expected an http:// or https:// URL, or null, got "ftp://x"'),
        (
            "evaluate.inception_checksum",
            None,
            (
                '--set evaluate.inception_checksum: expected "algorithm:hex" with a hashlib algorithm, e.g. '
                '"md5:5280…", got null'
            ),
        ),
        (
            "data.source",
            "imagenet",
            '--set data.source: expected one of flowers102, cifar10, folder, synthetic, got "imagenet"',
        ),
        ("data.folder", 5, "--set data.folder: expected a string or null, got 5"),
        ("tracking.experiment", None, "--set tracking.experiment: expected a string, got null"),
        ("tracking.enabled", "no", '--set tracking.enabled: expected true or false, got "no"'),
        ("sweep.steps", [10, 10], "--set sweep.steps: expected a list of distinct positive integers, got [10, 10]"),
        (
            "sweep.steps",
            [0],
            "--set sweep.steps (sweep.steps[0]): expected a list of distinct positive integers, got 0",
        ),
        ("evaluate.bootstrap", 1, f"--set evaluate.bootstrap: expected {BOOTSTRAP}, got 1"),  # was an interval
        ("evaluate.bootstrap", 39, f"--set evaluate.bootstrap: expected {BOOTSTRAP}, got 39"),
        ("evaluate.bootstrap", -1, f"--set evaluate.bootstrap: expected {BOOTSTRAP}, got -1"),
        ("evaluate.bootstrap", 10**12, f"--set evaluate.bootstrap: expected {BOOTSTRAP}, got 1000000000000"),
        ("sample.eta", -1, "--set sample.eta: expected a non-negative number, got -1"),
        (
            "train.foo",
            1,
            (
                "--set train.foo: unknown key; expected one of: steps, batch_size, lr, warmup_steps, grad_clip, "
                "adam_betas, adam_eps, weight_decay, ema_decay, ema_warmup, hflip, checkpoint_every, keep_checkpoints, "
                "max_nonfinite, loss_weighting, min_snr_gamma, seed, log_every, sample_every, eval_every, "
                "eval_samples, eval_steps, precision, channels_last, compile"
            ),
        ),
        (
            "model.preset.x",
            1,
            (
                "--set model.preset.x: unknown key; expected one of: preset, channels, channel_mult, num_res_blocks, "
                "attention_resolutions, dropout"
            ),
        ),
        (
            "trian.steps",
            3,
            (
                "--set trian.steps: unknown key; expected one of: data, model, diffusion, train, sample, evaluate, "
                "sweep, compare, tracking, schedules, variants, seeds"
            ),
        ),
        (
            "schedules",
            "linear",
            (
                "--set schedules: expected a list of distinct schedule names (linear, cosine, quadratic, sigmoid) or "
                'names of `variants`, got "linear"'
            ),
        ),
        (
            "schedules",
            ["cosin"],
            (
                "--set schedules (schedules[0]): expected a list of distinct schedule names (linear, cosine, "
                'quadratic, sigmoid) or names of `variants`, got "cosin"'
            ),
        ),
        ("seeds", [0, 0], f"--set seeds: expected {SEEDS}, got [0, 0]"),
        ("seeds", ["a"], f'--set seeds (seeds[0]): expected {SEEDS}, got "a"'),
        ("seeds", [True], f"--set seeds (seeds[0]): expected {SEEDS}, got true"),
        ("seeds", [-1], f"--set seeds (seeds[0]): expected {SEEDS}, got -1"),
        ("data.image_size", {"a": 1}, '--set data.image_size: expected a positive integer, got {"a": 1}'),
        (
            "sample.sampler",
            "dpmsolver",
            '--set sample.sampler: expected one of ddpm, ddim, dpmsolver++, got "dpmsolver"',
        ),
        ("sample.steps", 0, "--set sample.steps: expected a positive integer, got 0"),
        (
            "sample.spacing",
            "trail",
            '--set sample.spacing: expected one of linspace, leading, trailing, quadratic, got "trail"',
        ),
        (
            "sweep.samplers",
            ["ddim", "ddim"],
            '--set sweep.samplers: expected a list of distinct samplers: ddim, dpmsolver++, got ["ddim", "ddim"]',
        ),
        (
            "sweep.samplers",
            ["ddpm"],  # DDPM is always in the sweep, at full length
            "--set sweep.samplers (sweep.samplers[0]): expected a list of distinct samplers: ddim, dpmsolver++, "
            'got "ddpm"',
        ),
    ],
)
def test_each_bad_override_gives_its_pinned_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: object, message: str
) -> None:
    monkeypatch.chdir(tmp_path)  # no params.yaml: the built-in defaults
    with pytest.raises(UserError) as error:
        load_config(None, [(f"--set {key}", key, value)])
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "train: 5\n",
            (
                "params.yaml: train: expected a mapping with keys steps, batch_size, lr, warmup_steps, grad_clip, "
                "adam_betas, adam_eps, weight_decay, ema_decay, ema_warmup, hflip, checkpoint_every, keep_checkpoints, "
                "max_nonfinite, loss_weighting, min_snr_gamma, seed, log_every, sample_every, eval_every, "
                "eval_samples, eval_steps, precision, channels_last, compile, got 5"
            ),
        ),
        ("train:\n  lr:\n    x: 1\n", 'params.yaml: train.lr: expected a positive number, got {"x": 1}'),
        (
            "model: {foo: {bar: 1}}\n",
            (
                "params.yaml: model.foo: unknown key; expected one of: preset, channels, channel_mult, num_res_blocks, "
                "attention_resolutions, dropout"
            ),
        ),
        ("seeds: [0, x]\n", f'params.yaml: seeds[1]: expected {SEEDS}, got "x"'),
        (
            "train:\n  adam_betas: [0.9, 2]\n",
            "params.yaml: train.adam_betas[1]: expected a list of numbers in [0, 1), got 2",
        ),
        ("train:\n  lr: .inf\n", "params.yaml: train.lr: expected a positive number, got inf"),
        ("train:\n  lr: .nan\n", "params.yaml: train.lr: expected a positive number, got nan"),
        (
            "train:\n  compile: yes please\n",
            'params.yaml: train.compile: expected one of auto or true or false, got "yes please"',
        ),
        (
            "train:\n  steps: 0\n  lr: x\n",
            (
                "params.yaml: train.steps: expected a positive integer, got 0\n"
                'params.yaml: train.lr: expected a positive number, got "x"'
            ),
        ),
        (
            "data:\n  checksum: md5:abc\n  url: example.com\n",
            (
                'params.yaml: data.url: expected an http:// or https:// URL, or null, got "example.com"\n'
                'params.yaml: data.checksum: expected "algorithm:hex" with a hashlib algorithm, or null, got "md5:abc"'
            ),
        ),
    ],
)
def test_each_bad_params_file_gives_its_pinned_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(UserError) as error:
        load_config()
    assert str(error.value) == message


def test_error_locations_are_read_through_our_fields_not_pydantics_branch_names() -> None:
    # pydantic names a union's branch in the location ("bool", "literal['auto']"); however a later
    # version spells it, the line names the field and what the field's annotation accepts.
    for tag in ("bool", "literal['auto']", "a-spelling-from-the-future"):
        error = {"loc": ("train", "compile", tag), "type": "bool_type", "msg": "", "input": 2}
        assert describe_error(error, "params.yaml", [], Config) == (
            "params.yaml: train.compile: expected one of auto or true or false, got 2"
        )
    error = {"loc": ("train", "adam_betas", 1), "type": "float_type", "msg": "", "input": "x"}
    assert describe_error(error, "params.yaml", [], Config).startswith("params.yaml: train.adam_betas[1]: expected")


def test_a_spacing_is_checked_against_the_sampler_that_uses_it(tmp_path: Path) -> None:
    # the sweep's samplers are the sweep stage's to check (tests/test_sweep.py): `ddpm sample --sampler ddim
    # --spacing quadratic` must load with the default sweep.samplers, which include DPM-Solver++
    path = write(tmp_path, "sample:\n  spacing: quadratic\n")
    assert load_config(path, [("--sampler", "sample.sampler", "ddim")]).sample.spacing == "quadratic"
    assert load_config(path).sample.spacing == "quadratic"  # sample.sampler ddpm takes every timestep
    with pytest.raises(UserError) as error:
        load_config(path, [("--sampler", "sample.sampler", "dpmsolver++")])
    assert str(error.value) == (
        "--sampler: sample.spacing: quadratic is not defined for dpmsolver++ (sample.sampler); "
        "expected one of: linspace, leading, trailing"
    )
    with pytest.raises(UserError) as error:
        load_config(
            None, [("--sampler", "sample.sampler", "dpmsolver++"), ("--spacing", "sample.spacing", "quadratic")]
        )
    assert str(error.value).startswith("--sampler, --spacing: sample.spacing: quadratic is not defined for dpmsolver++")
