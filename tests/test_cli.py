"""The `ddpm` command as a user runs it: a real subprocess of the installed console script."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ddpm.cli import app
from ddpm.config import TrainConfig

DDPM = str(Path(sys.executable).parent / "ddpm")
TINY = ["--model", "tiny", "--image-size", "16", "--timesteps", "50", "--batch-size", "4", "--set", "train.log_every=5"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`ddpm *args` in `cwd`, with MLflow's store at its default: cwd/mlflow.db."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    return subprocess.run([DDPM, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_help_lists_every_command_with_a_description() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    descriptions = {
        "download": "Fetch and verify the source images (Flowers-102).",
        "prepare": "Decode, crop and resize the images into one uint8 array.",
        "train": "Train the UNet (Algorithm 1); write a checkpoint.",
        "sample": "Draw samples (DDPM or DDIM); write them + pictures.",
        "schedules": "Draw alphā(t), log-SNR(t) and the forward process per schedule.",
        "evaluate": "FID and KID of the samples against the real images.",
        "compare": "Compare trained schedules: table, curves, samples.",
    }
    for command, description in descriptions.items():
        assert re.search(rf"^  {command} +{re.escape(description)}$", result.output, re.MULTILINE), command


def test_every_command_takes_config_and_set() -> None:
    for command in ("download", "prepare", "train", "sample", "schedules", "evaluate", "compare"):
        output = CliRunner().invoke(app, [command, "--help"]).output
        assert "--config" in output and "--set SECTION.KEY=VALUE" in output


@pytest.mark.slow
def test_train_then_sample_from_the_shell(flowers16: Path, tmp_path: Path) -> None:
    trained = run("train", "--beta-schedule", "cosine", "--steps", "10", "--data", str(flowers16), *TINY, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    checkpoint = tmp_path / "runs" / "cosine" / "model.pt"
    assert "trained 10 steps" in trained.stdout and str(Path("runs/cosine/model.pt")) in trained.stdout
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["config"]["diffusion"] == {"schedule": "cosine", "timesteps": 50, "prediction": "eps"}
    assert saved["config"]["train"]["batch_size"] == 4 and saved["config"]["model"]["preset"] == "tiny"

    sampled = run(
        "sample",
        "--beta-schedule",
        "cosine",
        "--num-samples",
        "3",
        "--sampler",
        "ddim",
        "--ddim-steps",
        "5",
        cwd=tmp_path,
    )
    assert sampled.returncode == 0, sampled.stderr
    samples = np.load(tmp_path / "runs" / "cosine" / "samples" / "samples.npy")
    assert samples.shape == (3, 3, 16, 16) and samples.dtype == np.uint8
    assert (tmp_path / "runs" / "cosine" / "samples" / "grid.png").stat().st_size > 0

    # both commands logged to one MLflow run, in ./mlflow.db
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [logged] = client.search_runs([client.get_experiment_by_name("ddpm-flowers").experiment_id])
    recorded = json.loads((tmp_path / "runs" / "cosine" / "mlflow_run.json").read_text())
    assert logged.info.run_id == recorded["run_id"] and logged.info.run_name == "cosine"
    assert logged.info.status == "FINISHED" and logged.data.tags["beta_schedule"] == "cosine"
    params = logged.data.params
    assert (params["train.steps"], params["diffusion.schedule"], params["sample.sampler"]) == ("10", "cosine", "ddim")
    assert params["model.channels"] == "32"  # resolved from the preset, not null
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "train/loss")] == [5, 10]
    final_loss = json.loads((tmp_path / "runs" / "cosine" / "train.json").read_text())["final_loss"]
    assert logged.data.metrics["final_loss"] == final_loss
    artifacts = {a.path for folder in ("train", "samples") for a in client.list_artifacts(logged.info.run_id, folder)}
    assert {"train/model.pt", "train/train.json", "train/losses.csv", "samples/grid.png"} <= artifacts
    assert any(a.path.endswith(".png") for a in client.list_artifacts(logged.info.run_id, "images"))  # log_image


def test_a_tracking_store_that_cannot_be_opened_stops_training_before_it_starts(
    flowers16: Path, tmp_path: Path
) -> None:
    result = run("train", "--data", str(flowers16), *TINY, "--set", "tracking.uri=bogus://nowhere", cwd=tmp_path)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ddpm: error: cannot open the MLflow tracking store bogus://nowhere (")
    assert not list((tmp_path / "runs" / "linear").glob("**/*.pt"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--batch-size", "abc"],
            'ddpm: error: --batch-size (train.batch_size): expected a positive integer, got "abc"',
        ),
        (
            ["--beta-schedule", "cosin"],
            "ddpm: error: --beta-schedule (diffusion.schedule): expected one of linear, cosine, "
            'quadratic, sigmoid, got "cosin"',
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
    flowers16: Path, tmp_path: Path, args: list, message: str
) -> None:
    result = run("train", "--data", str(flowers16), *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert "Traceback" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_bad_params_file_names_file_and_key(flowers16: Path, tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("train:\n  batch_size: abc\n")
    result = run("train", "--data", str(flowers16), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == 'ddpm: error: params.yaml: train.batch_size: expected a positive integer, got "abc"'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_missing_data_and_checkpoint_are_clear_errors(tmp_path: Path) -> None:
    result = run("train", "--model", "tiny", cwd=tmp_path)
    assert result.returncode == 2
    assert "data/prepared/images.npy: not found; expected a .npy file of uint8 images" in result.stderr
    result = run("sample", "--beta-schedule", "cosine", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "ddpm: error: runs/cosine/model.pt: checkpoint not found; train first with `ddpm train`"
    )
    assert list(tmp_path.iterdir()) == []


def test_every_named_option_overrides_a_real_param() -> None:
    from ddpm import cli
    from ddpm.config import Config

    tables = [getattr(cli, name) for name in dir(cli) if name.endswith("_PARAMS")]
    assert len(tables) == 7
    for key in [key for table in tables for key in table.values()]:
        section, name = key.split(".")
        assert name in Config.model_fields[section].annotation.model_fields, key
