"""`ddpm evaluate` and `ddpm compare` from the shell, on two tiny trained schedules, into a real
MLflow store (SQLite, at the folder's root as in the pipeline)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from ddpm.config import load_config
from ddpm.data import save_images, synthetic_flowers
from ddpm.sample import sample
from ddpm.train import train

DDPM = str(Path(sys.executable).parent / "ddpm")
TINY_PARAMS = {
    "schedules": ["linear", "cosine"],
    "data": {"image_size": 16},
    "model": {"preset": "tiny"},
    "diffusion": {"timesteps": 50},
    "train": {"steps": 20, "batch_size": 8, "warmup_steps": 5, "log_every": 5},
    "sample": {"num_samples": 40, "batch_size": 40},
    "evaluate": {"feature_extractor": "randconv", "kid_subsets": 10, "kid_subset_size": 20},
}


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    return subprocess.run([DDPM, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with params.yaml, prepared data and two schedules trained and sampled (in-process)."""
    root = tmp_path_factory.mktemp("project")
    (root / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    save_images(root / "data" / "prepared" / "images.npy", synthetic_flowers(64, 16))
    for schedule in TINY_PARAMS["schedules"]:
        config = load_config(root / "params.yaml", [("test", "diffusion.schedule", schedule)])
        runs = root / "runs" / schedule
        result = train(config, root / "data" / "prepared" / "images.npy", runs, torch.device("cpu"), progress=False)
        sample(config.sample, result.checkpoint, runs / "samples", torch.device("cpu"), progress=False)
    return root


def mlflow_runs(root: Path) -> dict[str, "mlflow.entities.Run"]:  # noqa: F821
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ddpm-flowers")
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


@pytest.mark.slow
def test_evaluate_then_compare_write_every_file_and_log_to_mlflow(project: Path) -> None:
    for schedule in ("linear", "cosine"):
        evaluated = run("evaluate", "--beta-schedule", schedule, "--device", "cpu", cwd=project)
        assert evaluated.returncode == 0, evaluated.stderr
        assert "fid_randconv" in evaluated.stdout and str(Path("runs", schedule, "eval.json")) in evaluated.stdout
    metrics = json.loads((project / "runs" / "linear" / "eval.json").read_text())
    assert metrics["feature_extractor"] == "randconv" and metrics["num_samples"] == 40
    assert "fid" not in metrics and metrics["fid_randconv"] > 0

    compared = run("compare", cwd=project)
    assert compared.returncode == 0, compared.stderr
    report = project / "reports" / "compare"
    sizes = {"schedules.png": (1000, 400), "forward.png": (1250, 320), "losses.png": (800, 450)}
    sizes["samples.png"] = (900, 500)  # two grids side by side
    for name, size in sizes.items():
        with Image.open(report / name) as picture:
            picture.load()
            assert picture.size == size, name
    text = (report / "report.md").read_text()
    header = "| schedule | fid_randconv | kid_randconv_mean (± std) | final loss | steps | training time | img/s |"
    assert header in text
    assert all(f"]({name})" in text for name in sizes)
    rows = list(csv.DictReader((report / "comparison.csv").open()))
    assert [r["schedule"] for r in rows] == ["linear", "cosine"]
    assert float(rows[0]["fid_randconv"]) == pytest.approx(metrics["fid_randconv"])
    assert rows[0]["steps"] == "20"

    runs = mlflow_runs(project)
    assert set(runs) == {"linear", "cosine", "compare"}
    linear = runs["linear"]
    assert linear.data.metrics["fid_randconv"] == pytest.approx(metrics["fid_randconv"])
    assert linear.data.tags["beta_schedule"] == "linear" and linear.data.tags["feature_extractor"] == "randconv"
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert [a.path for a in client.list_artifacts(linear.info.run_id)] == ["eval.json"]
    logged = {a.path for a in client.list_artifacts(runs["compare"].info.run_id, "report")}
    assert {f"report/{name}" for name in [*sizes, "report.md", "comparison.csv"]} <= logged
    assert runs["compare"].data.metrics["fid_randconv.cosine"] == pytest.approx(float(rows[1]["fid_randconv"]))

    # a second evaluate reuses the cached real features and the schedule's run
    again = run("evaluate", "--beta-schedule", "linear", "--device", "cpu", cwd=project)
    assert "real features from the cache" in again.stdout
    assert set(mlflow_runs(project)) == {"linear", "cosine", "compare"}


@pytest.mark.slow
def test_evaluate_and_compare_errors_are_one_line_and_write_nothing(project: Path, tmp_path: Path) -> None:
    bad_store = run("evaluate", "--set", "tracking.uri=bogus://nowhere", "--out", str(tmp_path / "e.json"), cwd=project)
    assert bad_store.returncode == 2
    assert bad_store.stderr.startswith("ddpm: error: cannot open the MLflow tracking store bogus://nowhere (")
    assert not (tmp_path / "e.json").exists()

    missing = run("compare", "linear", "quadratic", "--out", str(tmp_path / "r"), cwd=project)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        f"ddpm: error: {Path('runs/quadratic/train.json')}: not found; run `ddpm train --beta-schedule quadratic` first"
    )
    assert not (tmp_path / "r").exists()
