"""What the MLflow record holds and how it is named (issue 27): the learning rate in units that
MLflow's charts show, one name for the steps, a sampling-only run not named after an extractor it
has not used, and no Inception settings on a run that randconv scored. In a real SQLite store."""

from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from conftest import copy_store, tiny_config

import ddpm.tracking
from ddpm.config import EvaluateConfig, SampleConfig, TrackingConfig
from ddpm.layout import NLL_TERMS, sample_pictures
from ddpm.tracking import LR_METRIC, ModelTracker, evaluate_params, log_evaluation, log_samples, open_store


@pytest.fixture
def store_uri(empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    copy_store(empty_store, tmp_path)
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_the_model_run_logs_lr_times_1e4_and_names_its_steps_once(store_uri: str, tmp_path: Path) -> None:
    config = tiny_config(tracking={"uri": store_uri})
    run_dir = tmp_path / "runs" / "linear" / "seed0"
    run_dir.mkdir(parents=True)
    with ModelTracker(config, run_dir) as tracker:
        run_id = tracker.start(None)
        tracker.log(5, {"train/lr": 1e-3, "train/loss": 0.5})
        metrics = {"final_loss": 0.25, "steps": 20, "train_seconds": 2.0, "images_per_second": 40.0}
        metrics["nonfinite_steps"] = 0
        tracker.finish(SimpleNamespace(metrics=lambda: dict(metrics), steps=20), [])

    client = mlflow.MlflowClient(store_uri)
    [lr] = client.get_metric_history(run_id, LR_METRIC)
    assert (lr.value, lr.step) == (10.0, 5)  # 1e-3 = 10 × 1e-4
    run = client.get_run(run_id).data
    assert "train/lr" not in run.metrics and run.metrics["train/loss"] == 0.5
    assert run.tags["train.steps"] == str(config.train.steps) and run.tags["nonfinite_steps"] == "0"
    assert "steps" not in run.tags and "steps" not in run.metrics and "train.steps" not in run.params


def _samples_and_scores(store_uri: str, tmp_path: Path, evaluate: dict) -> tuple[str, str, dict[str, str]]:
    """The child run's name after `sample`, then after `evaluate`, and its params."""
    folder = tmp_path / "runs" / "cosine" / "seed0" / "samples"
    folder.mkdir(parents=True)
    for picture in sample_pictures(folder):
        picture.write_bytes(b"picture")
    (folder.parent / "model.pt").write_bytes(b"weights")
    (folder.parent / NLL_TERMS).write_text("t,bpd\n1,0.5\n")
    (folder.parent / "eval.json").write_text("{}")
    sample = SampleConfig(sampler="ddim", steps=5, num_samples=3, clip_mode="dynamic").model_dump(mode="json")
    checkpoint = str(folder.parent / "model.pt")
    origin = {"checkpoint": checkpoint, "model_run_id": None, "schedule": "cosine", "sample": sample}
    store = open_store(TrackingConfig(uri=store_uri))
    log_samples(store, origin, evaluate, folder)
    store.outbox.flush(now=True)
    client = mlflow.MlflowClient(store_uri)
    experiment = [store.experiment_id]
    [child] = client.search_runs(experiment, "tags.`ddpm.kind` = 'evaluation'")
    sampled = child.info.run_name
    log_evaluation(store, origin, evaluate, {"fid_randconv": 1.5}, folder, folder.parent / "eval.json")
    store.outbox.flush(now=True)
    [child] = client.search_runs(experiment, "tags.`ddpm.kind` = 'evaluation'")  # the same run, renamed
    assert child.data.metrics == {"fid_randconv": 1.5}
    return sampled, child.info.run_name, child.data.params


def test_the_sample_run_is_named_after_its_sampling_and_randconv_runs_show_no_inception_params(
    store_uri: str, tmp_path: Path
) -> None:
    evaluate = EvaluateConfig(feature_extractor="randconv").model_dump(mode="json")
    sampled, evaluated, params = _samples_and_scores(store_uri, tmp_path, evaluate)
    assert sampled == "cosine: DDIM 5 steps, linspace, clip dynamic, 3 samples"
    assert evaluated == "cosine: DDIM 5 steps, linspace, clip dynamic, 3 samples, randconv"
    assert params["evaluate.feature_extractor"] == "randconv" and params["sample.steps"] == "5"
    assert params["sample.clip_mode"] == "dynamic"  # issue 28: the mode is part of the sampling's identity
    assert not [key for key in params if key.startswith(("evaluate.inception", "evaluate.resize"))]


def test_inception_runs_keep_the_inception_params() -> None:
    evaluate = EvaluateConfig().model_dump(mode="json")
    params = evaluate_params(evaluate)
    assert params["evaluate.resize"] == "legacy" and params["evaluate.inception_checksum"].startswith("sha256:")
    assert set(params) == {f"evaluate.{key}" for key in evaluate}
    randconv = evaluate_params({**evaluate, "feature_extractor": "randconv"})
    dropped = {"evaluate.inception_weights", "evaluate.inception_checksum", "evaluate.resize"}
    assert set(params) - set(randconv) == dropped


@pytest.mark.parametrize(
    ("folder", "name"),
    [
        ("runs/linear/seed0", "linear, seed 0"),  # the run of record, where dvc.yaml and compare look
        ("runs/quickstart", "linear, seed 0, runs/quickstart"),  # --out: never a second "linear, seed 0"
    ],
)
def test_a_model_trained_elsewhere_is_named_after_its_folder(
    folder: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = []

    def model_run(store: None, name: str, *rest: object) -> None:
        named.append(name)
        raise LookupError  # the name is all this test needs of the run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ddpm.tracking, "open_store", lambda cfg, run_dir: None)
    monkeypatch.setattr(ddpm.tracking, "model_run", model_run)
    with pytest.raises(LookupError):
        ModelTracker(tiny_config(), Path(folder)).start(None)
    assert named == [name]


def test_the_sweep_run_logs_a_metric_per_sampler_at_step_nfe(store_uri: str, tmp_path: Path) -> None:
    """One history per sampler, named without the "+" MLflow refuses, its steps the NFE; the spacing a param."""
    from ddpm.tracking import sweep_run

    folder = tmp_path / "runs" / "cosine" / "seed0"
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"weights")
    (folder / "sweep.json").write_text("{}")
    results = {"metric": "fid_randconv", "samplers": ["dpmsolver++", "ddim"], "ddim": {"5": 30.0, "10": 20.0},
               "dpmsolver++": {"5": 25.0, "10": 15.0}, "ddpm": {"50": 12.0}, "num_samples": 8,
               "feature_extractor": "randconv"}  # fmt: skip
    config = tiny_config(tracking={"uri": store_uri}, sample={"spacing": "trailing"})
    trained = SimpleNamespace(spec={"schedule": "cosine"}, path=folder / "model.pt", run_id=None, name="cosine")
    store = open_store(config.tracking)
    run = sweep_run(store, trained, config, results, folder / "sweep.json")
    store.outbox.flush(now=True)
    client = mlflow.MlflowClient(store_uri)
    [swept] = client.search_runs([store.experiment_id], "tags.`ddpm.kind` = 'sweep'")
    assert set(swept.data.metrics) == {"fid_randconv_ddim", "fid_randconv_dpmsolverpp", "fid_randconv_ddpm"}
    histories = {key: [(m.step, m.value) for m in client.get_metric_history(swept.info.run_id, key)]
                 for key in swept.data.metrics}  # fmt: skip
    assert histories == {"fid_randconv_ddim": [(5, 30.0), (10, 20.0)],
                         "fid_randconv_dpmsolverpp": [(5, 25.0), (10, 15.0)],
                         "fid_randconv_ddpm": [(50, 12.0)]}  # fmt: skip
    assert swept.data.params["sample.spacing"] == "trailing" and swept.info.run_id == run.id
