"""`ddpm evaluate` and `ddpm compare` on two tiny trained schedules, into a real MLflow store
(SQLite, at the folder's root as in the pipeline). The commands run in this process (typer's
CliRunner) to spare each one the seconds of importing torch and MLflow; tests/test_pipeline.py
runs them as real processes through DVC."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import CPU, invoke, run, write_params
from PIL import Image

from ddpm.config import load_config
from ddpm.data import save_images, synthetic_flowers
from ddpm.sample import sample
from ddpm.train import train

EVALUATION = {"sample": {"num_samples": 40, "batch_size": 40}, "evaluate": {"kid_subset_size": 20}}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, trained: Path) -> Path:
    """A folder with params.yaml, prepared data and two schedules trained and sampled (in-process):
    linear is the session's model, cosine is trained here."""
    root = tmp_path_factory.mktemp("project")
    write_params(root, schedules=["linear", "cosine"], **EVALUATION)
    data = root / "data" / "prepared" / "images.npy"
    save_images(data, synthetic_flowers(64, 16))
    shutil.copytree(trained, root / "runs" / "linear")
    cosine = load_config(root / "params.yaml", [("test", "diffusion.schedule", "cosine")])
    train(cosine, data, root / "runs" / "cosine", CPU, progress=False)
    for schedule in ("linear", "cosine"):
        sample(cosine.sample, root / "runs" / schedule / "model.pt", root / "runs" / schedule / "samples", CPU, False)
    return root


def mlflow_runs(root: Path, every: bool = False):  # noqa: ANN201
    """The runs of the store at `root`, by name, but for the models' runs (or every run, as a list)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ddpm-flowers")
    found = client.search_runs([experiment.experiment_id])
    return found if every else {r.info.run_name: r for r in found if r.data.tags.get("ddpm.kind") != "model"}


@pytest.mark.slow
def test_evaluate_then_compare_write_every_file_and_log_to_mlflow(project: Path) -> None:
    for schedule in ("linear", "cosine"):
        evaluated = invoke("evaluate", "--beta-schedule", schedule, "--device", "cpu", cwd=project)
        assert evaluated.exit_code == 0, evaluated.stderr
        assert "fid_randconv" in evaluated.stdout and str(Path("runs", schedule, "eval.json")) in evaluated.stdout
    metrics = json.loads((project / "runs" / "linear" / "eval.json").read_text())
    assert metrics["feature_extractor"] == "randconv" and metrics["num_samples"] == 40
    assert "fid" not in metrics and metrics["fid_randconv"] > 0

    compared = invoke("compare", cwd=project)
    assert compared.exit_code == 0, compared.stderr
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
    assert header in compared.stdout and compared.stdout.count("\n| linear |") == 1  # the table, in the terminal too
    assert all(f"]({name})" in text for name in sizes)
    rows = list(csv.DictReader((report / "comparison.csv").open()))
    assert [r["schedule"] for r in rows] == ["linear", "cosine"]
    assert float(rows[0]["fid_randconv"]) == pytest.approx(metrics["fid_randconv"])
    assert rows[0]["steps"] == "20"

    runs = mlflow_runs(project)
    assert set(runs) == {"linear: DDIM 5 steps, 40 samples, randconv", "cosine: DDIM 5 steps, 40 samples, randconv",
                         "compare"}  # fmt: skip
    linear = runs["linear: DDIM 5 steps, 40 samples, randconv"]
    assert linear.data.metrics["fid_randconv"] == pytest.approx(metrics["fid_randconv"])
    assert linear.data.tags["feature_extractor"] == "randconv" and linear.data.tags["num_samples"] == "40"
    assert linear.data.params["evaluate.kid_subset_size"] == "20" and linear.data.params["sample.num_samples"] == "40"
    assert "num_samples" not in linear.data.metrics  # counts are tags, not metrics drawn as bar charts
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert {a.path for a in client.list_artifacts(linear.info.run_id)} == {"eval.json", "samples"}
    # the samples were drawn outside MLflow here, so evaluate made the model's run: one per checkpoint
    parent = client.get_run(linear.data.tags["mlflow.parentRunId"])
    assert parent.info.run_name == "linear/model.pt" and parent.data.tags["ddpm.checkpoint"].endswith("model.pt")
    logged = {a.path for a in client.list_artifacts(runs["compare"].info.run_id, "report")}
    assert {f"report/{name}" for name in [*sizes, "report.md", "comparison.csv"]} <= logged
    assert runs["compare"].data.metrics["fid_randconv.cosine"] == pytest.approx(float(rows[1]["fid_randconv"]))
    assert runs["compare"].data.tags["compared.linear"] == linear.info.run_id

    # a second evaluate reuses the cached real features and the same child run
    again = invoke("evaluate", "--beta-schedule", "linear", "--device", "cpu", cwd=project)
    assert "real features from the cache" in again.stdout
    assert len(mlflow_runs(project)) == 3
    # another evaluation configuration of the same samples is a new child, beside the first
    other = invoke("evaluate", "--beta-schedule", "linear", "--set", "evaluate.kid_subsets=5", cwd=project)
    assert other.exit_code == 0, other.stderr
    children = [
        r for r in mlflow_runs(project, every=True) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    assert sorted(r.data.params["evaluate.kid_subsets"] for r in children) == ["10", "5"]


@pytest.mark.slow
def test_evaluate_and_compare_errors_are_one_line_and_write_nothing(project: Path, tmp_path: Path) -> None:
    bad_store = run("evaluate", "--set", "tracking.uri=bogus://nowhere", "--out", str(tmp_path / "e.json"), cwd=project)
    assert bad_store.returncode == 2
    assert bad_store.stderr.startswith("ddpm: error: cannot use the MLflow tracking store bogus://nowhere (")
    assert not (tmp_path / "e.json").exists()

    missing = run("compare", "quadratic", "--out", str(tmp_path / "r"), cwd=project)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        f"ddpm: error: {Path('runs/quadratic/model.pt')}: not found; run `ddpm train --beta-schedule quadratic` first"
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("key", "value", "what"),
    [
        ("resize", "antialias", "resizes (evaluate.resize) (linear: legacy, cosine: antialias)"),
        ("num_samples", 50000, "sample counts (sample.num_samples) (linear: 40, cosine: 50000)"),
        ("weights_sha256", "ab12", "extractor weights (sha256) (linear: 6726, cosine: ab12)"),
        ("feature_extractor", "randconv", "feature extractors (evaluate.feature_extractor)"),
    ],
)
def test_compare_refuses_scores_that_are_not_comparable(
    project: Path, tmp_path: Path, key: str, value: object, what: str
) -> None:
    root = tmp_path / "project"
    shutil.copytree(project / "runs", root / "runs")
    scores = {"fid": 30.0, "kid_mean": 0.01, "kid_std": 0.001, "num_samples": 40, "num_real": 64,
              "real_sha256": "cd34", "feature_extractor": "inception", "feature_dim": 2048, "weights": "test",
              "weights_sha256": "6726", "resize": "legacy"}  # fmt: skip
    (root / "runs" / "linear" / "eval.json").write_text(json.dumps(scores))
    (root / "runs" / "cosine" / "eval.json").write_text(json.dumps({**scores, key: value}))
    refused = invoke("compare", "linear", "cosine", "--set", "tracking.enabled=false", cwd=root)
    assert refused.exit_code == 2
    assert f"the schedules were run with different {what}" in refused.output
    assert not (root / "reports").exists()
