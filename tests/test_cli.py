"""The `ddpm` command as a user runs it: a real subprocess of the installed console script."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import invoke, run
from typer.testing import CliRunner

from ddpm.cli import app
from ddpm.config import TrainConfig

TINY = ["--model", "tiny", "--image-size", "16", "--timesteps", "50", "--batch-size", "4", "--set", "train.log_every=5",
        "--set", "train.eval_every=0"]  # fmt: skip


def test_help_lists_every_command_with_a_description() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    descriptions = {
        "download": "Fetch and verify the source images (Flowers-102 or CIFAR-10).",
        "prepare": "Decode, crop and resize the images into one uint8 array.",
        "train": "Train the UNet (Algorithm 1); write a checkpoint.",
        "sample": "Draw samples (DDPM, DDIM or DPM-Solver++); write them + pictures.",
        "schedules": "Draw alphā(t), log-SNR(t) and the forward process per schedule.",
        "evaluate": "FID ± SD, FID_∞, KID ± SE; bits/dim of held-out images.",
        "sweep": "FID against network evaluations per sampler (DDIM, DPM-Solver++).",
        "compare": "Compare schedules over seeds: table, noise, curves, samples.",
        "import": "Bring published weights in as a ddpm checkpoint.",
    }
    for command, description in descriptions.items():
        assert re.search(rf"^  {command} +{re.escape(description)}$", result.output, re.MULTILINE), command


def test_every_command_takes_config_and_set() -> None:
    for command in ("download", "prepare", "train", "sample", "schedules", "evaluate", "sweep", "compare"):
        output = CliRunner().invoke(app, [command, "--help"]).output
        assert "--config" in output and "--set SECTION.KEY=VALUE" in output


def test_help_lists_the_allowed_values_and_version_prints_the_package_version() -> None:
    from importlib.metadata import version
    from typing import get_args

    from ddpm.config import SampleConfig, ScheduleName
    from ddpm.schedules import SCHEDULES
    from ddpm.unet import PRESETS

    assert list(get_args(ScheduleName)) == list(SCHEDULES)
    allowed = {"--beta-schedule": "|".join(SCHEDULES), "--model": "|".join(PRESETS)}
    allowed["--sampler"] = "|".join(get_args(SampleConfig.model_fields["sampler"].annotation))
    for command in ("train", "sample", "evaluate"):
        output = CliRunner().invoke(app, [command, "--help"]).output
        for option in [o for o in allowed if re.search(rf"^\s+{o}\b", output, re.MULTILINE)]:
            assert re.search(rf"^\s+{option} {re.escape(allowed[option])}\s", output, re.MULTILINE), (command, option)
    assert "--model ddpm-cifar10|" in CliRunner().invoke(app, ["train", "--help"]).output
    assert CliRunner().invoke(app, ["--version"]).output == f"ddpm {version('ddpm')}\n"


@pytest.mark.slow
def test_train_then_sample(flowers16: Path, tmp_path: Path) -> None:
    trained = invoke(
        "train", "--beta-schedule", "cosine", "--steps", "10", "--data", str(flowers16), *TINY, cwd=tmp_path
    )
    assert trained.exit_code == 0, trained.stderr
    checkpoint = tmp_path / "runs" / "cosine" / "seed0" / "model.pt"
    assert "trained 10 steps" in trained.stdout and str(Path("runs/cosine/seed0/model.pt")) in trained.stdout
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["diffusion"] == {
        "schedule": "cosine",
        "timesteps": 50,
        "prediction": "eps",
        "zero_terminal_snr": False,
        "input_scale": 1.0,
        "variance": "fixed",
    }
    assert saved["config"]["train"]["batch_size"] == 4 and saved["config"]["model"]["preset"] == "tiny"

    sampled = invoke("sample", "--beta-schedule", "cosine", "--num-samples", "3", "--sampler", "ddim", "--steps",
                     "5", cwd=tmp_path)  # fmt: skip
    assert sampled.exit_code == 0, sampled.stderr
    samples = np.load(tmp_path / "runs" / "cosine" / "seed0" / "samples" / "samples.npy")
    assert samples.shape == (3, 3, 16, 16) and samples.dtype == np.uint8
    assert (tmp_path / "runs" / "cosine" / "seed0" / "samples" / "grid.png").stat().st_size > 0

    # train logged the model's run, sample a child run under it, in ./mlflow.db
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ddpm-flowers")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    model = runs["cosine, seed 0"]
    recorded = json.loads((tmp_path / "runs" / "cosine" / "seed0" / "mlflow_run.json").read_text())
    assert model.info.run_id == recorded["run_id"] and saved["run_id"] == recorded["run_id"]
    assert model.info.status == "FINISHED" and model.data.tags["beta_schedule"] == "cosine"
    params = model.data.params
    assert (params["diffusion.schedule"], params["model.channels"]) == ("cosine", "32")  # resolved from the preset
    assert model.data.tags["train.steps"] == "10" and "steps" not in model.data.tags  # one name for the steps
    assert [m.step for m in client.get_metric_history(model.info.run_id, "train/loss")] == [5, 10]
    final_loss = json.loads((tmp_path / "runs" / "cosine" / "seed0" / "train.json").read_text())["final_loss"]
    assert model.data.metrics["final_loss"] == final_loss and "steps" not in model.data.metrics
    artifacts = {a.path for a in client.list_artifacts(model.info.run_id, "train")}
    assert {"train/model.pt", "train/train.json", "train/losses.csv"} <= artifacts
    assert any(a.path.endswith(".png") for a in client.list_artifacts(model.info.run_id, "images"))  # log_image
    [child] = [r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == model.info.run_id]
    assert (
        child.info.run_name
        == "cosine: DDIM 5 steps, linspace, clip x0, 3 samples"  # sampled, not yet scored by inception
        and child.info.status == "FINISHED"
    )
    assert (child.data.params["sample.sampler"], child.data.params["sample.num_samples"]) == ("ddim", "3")
    assert "samples/grid.png" in {a.path for a in client.list_artifacts(child.info.run_id, "samples")}
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.slow
def test_a_tracking_store_that_cannot_be_opened_stops_training_before_it_starts(
    flowers16: Path, tmp_path: Path
) -> None:
    result = run("train", "--data", str(flowers16), *TINY, "--set", "tracking.uri=bogus://nowhere", cwd=tmp_path)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ddpm: error: cannot use the MLflow tracking store bogus://nowhere (")
    assert not list((tmp_path / "runs" / "linear" / "seed0").glob("**/*.pt"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--batch-size", "abc"],
            'ddpm: error: --batch-size (train.batch_size): expected a positive integer, got "abc"',
        ),
        (
            ["--seed", "1180591620717411303424", "--image-size", "16"],  # 2^70: was torch's OverflowError, unhandled
            "ddpm: error: --seed (train.seed): expected a seed, an integer from 0 to 2^64 - 1, got "
            "1180591620717411303424",
        ),
        (
            ["--beta-schedule", "cosin"],
            "ddpm: error: --beta-schedule (diffusion.schedule): expected a schedule (linear, cosine, quadratic, "
            'sigmoid) or a variant (linear-minsnr, cosine-minsnr, linear-ztsnr-v), got "cosin"',
        ),
        (
            ["--set", "train.bach_size=4"],
            "ddpm: error: --set train.bach_size: unknown key; expected one of: " + ", ".join(TrainConfig.model_fields),
        ),
        (["--set", "train.steps"], "ddpm: error: --set: expected SECTION.KEY=VALUE, got 'train.steps'"),
        (["--device", "tpu"], "ddpm: error: --device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["--config", "missing.yaml"], "ddpm: error: missing.yaml: config file not found"),
    ],
)
def test_bad_values_give_one_clear_line_and_write_nothing(
    flowers16: Path, tmp_path: Path, args: list, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # in-process, as the console script runs it; the next test runs it for real
    result = CliRunner().invoke(app, ["train", "--data", str(flowers16), *args])
    assert result.exit_code == 2
    assert result.stderr.strip() == message
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_bad_params_file_names_file_and_key(flowers16: Path, tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("train:\n  batch_size: abc\n")
    result = run("train", "--data", str(flowers16), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == 'ddpm: error: params.yaml: train.batch_size: expected a positive integer, got "abc"'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.slow
def test_missing_data_and_checkpoint_are_clear_errors(tmp_path: Path) -> None:
    result = run("train", "--model", "tiny", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "ddpm: error: data/prepared/images.npy: not found; prepare the images first with `ddpm prepare` "
        "(offline: `bash pipeline/offline.sh` runs the whole pipeline on synthetic flowers)"
    )
    result = run("sample", "--beta-schedule", "cosine", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "ddpm: error: runs/cosine/seed0/model.pt: checkpoint not found; train first with `ddpm train`"
    )
    assert list(tmp_path.iterdir()) == []


def test_every_named_option_overrides_a_real_param() -> None:
    from ddpm import cli
    from ddpm.config import Config

    tables = [getattr(cli, name) for name in dir(cli) if name.endswith("_PARAMS")]
    assert len(tables) == 6
    for key in [key for table in tables for key in table.values()]:
        section, name = key.split(".")
        assert name in Config.model_fields[section].annotation.model_fields, key
