"""`ddpm evaluate` and `ddpm compare` on two tiny trained schedules, into a real MLflow store
(SQLite, at the folder's root as in the pipeline). The commands run in this process (typer's
CliRunner) to spare each one the seconds of importing torch and MLflow; tests/test_pipeline.py
runs them as real processes through DVC. The real pipeline runs for one seed; the means and spreads
over seeds are checked on run folders written here with known numbers."""

import csv
import errno
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CPU, copy_store, invoke, tiny_config, write_params
from PIL import Image
from scipy import stats

from ddpm.comparable import Measured, check_comparable
from ddpm.config import SampleConfig, load_config
from ddpm.data import save_images, synthetic_flowers
from ddpm.errors import UserError
from ddpm.report import verdicts_section
from ddpm.results import read_results
from ddpm.sample import sample
from ddpm.train import train
from ddpm.verdicts import ONE_SEED, judge

EVALUATION = {
    "sample": {"num_samples": 40, "batch_size": 40},
    "evaluate": {"bootstrap": 50, "nll_images": 4},
    "sweep": {"steps": [2, 5], "num_samples": 20},
    "seeds": [0],
}
RUNS = [(schedule, 0) for schedule in ("linear", "cosine")]  # one seed: test_seeds_* checks the aggregation


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, trained: Path, empty_store: Path) -> Path:
    """A folder with params.yaml, prepared data (and held-out images), an empty MLflow store and two
    schedules trained and sampled (in-process) with seed 0: linear is the session's model, cosine is
    trained here."""
    root = tmp_path_factory.mktemp("project")
    copy_store(empty_store, root)
    write_params(root, schedules=["linear", "cosine"], **EVALUATION)
    data = root / "data" / "prepared" / "images.npy"
    save_images(data, synthetic_flowers(64, 16))
    save_images(data.parent / "holdout.npy", synthetic_flowers(6, 16, seed=1))
    shutil.copytree(trained, root / "runs" / "linear" / "seed0")
    for schedule, seed in RUNS:
        config = load_config(
            root / "params.yaml", [("test", "diffusion.schedule", schedule), ("test", "train.seed", seed)]
        )
        folder = root / "runs" / schedule / f"seed{seed}"
        if not folder.exists():
            train(config, data, folder, CPU, progress=False)
        sample(config.sample, folder / "model.pt", folder / "samples", CPU, False)
    return root


# What each run's stages write, with numbers chosen here: two schedules, two seeds each. The sweep's
# FIDs are ddim2, ddim5, dpm2, dpm5 and ddpm50 (sweep.json's "ddim", "dpmsolver++" and "ddpm"); train.json's
# steps are 20 in all.
KNOWN = {
    ("linear", 0): {"fid_randconv": 10.0, "fid_randconv_ci_low": 8.0, "fid_randconv_ci_high": 13.0,
                    "kid_randconv_mean": 0.010, "kid_randconv_se": 0.002, "fid_randconv_sd": 1.0, "nll_bpd": 3.0,
                    "nll_bpd_sem": 0.01,
                    "nll_prior_bpd": 0.001, "ddim2": 40.0, "ddim5": 20.0, "ddpm50": 15.0,
                    "dpm2": 30.0, "dpm5": 20.5, "final_loss": 0.08,
                    "train_seconds": 10.0, "images_per_second": 16.0},
    ("linear", 1): {"fid_randconv": 14.0, "fid_randconv_ci_low": 11.0, "fid_randconv_ci_high": 18.0,
                    "kid_randconv_mean": 0.014, "kid_randconv_se": 0.004, "fid_randconv_sd": 2.0, "nll_bpd": 3.5,
                    "nll_bpd_sem": 0.03,
                    "nll_prior_bpd": 0.003, "ddim2": 44.0, "ddim5": 22.0, "ddpm50": 17.0,
                    "dpm2": 34.0, "dpm5": 22.5, "final_loss": 0.06,
                    "train_seconds": 12.0, "images_per_second": 14.0},
    ("cosine", 0): {"fid_randconv": 20.0, "fid_randconv_ci_low": 17.0, "fid_randconv_ci_high": 24.0,
                    "kid_randconv_mean": 0.014, "kid_randconv_se": 0.002, "fid_randconv_sd": 1.5, "nll_bpd": 2.0,
                    "nll_bpd_sem": 0.02,
                    "nll_prior_bpd": 0.001, "ddim2": 50.0, "ddim5": 30.0, "ddpm50": 25.0,
                    "dpm2": 45.0, "dpm5": 26.0, "final_loss": 0.10,
                    "train_seconds": 11.0, "images_per_second": 15.0},
    ("cosine", 1): {"fid_randconv": 26.0, "fid_randconv_ci_low": 22.0, "fid_randconv_ci_high": 31.0,
                    "kid_randconv_mean": 0.018, "kid_randconv_se": 0.002, "fid_randconv_sd": 2.5, "nll_bpd": 2.5,
                    "nll_bpd_sem": 0.02,
                    "nll_prior_bpd": 0.001, "ddim2": 60.0, "ddim5": 36.0, "ddpm50": 29.0,
                    "dpm2": 55.0, "dpm5": 30.0, "final_loss": 0.12,
                    "train_seconds": 13.0, "images_per_second": 13.0},
}  # fmt: skip
S = 2**0.5  # two seeds: the standard deviation (ddof = 1) of a and b is |a - b| / √2
# The table's row of each schedule: the mean over its two seeds and, as <key>_std_seeds, their spread.
MEANS = {
    "linear": {"fid_randconv": (12.0, 4 / S), "kid_randconv_mean": (0.012, 0.004 / S),
               "kid_randconv_se": (0.003, 0.002 / S), "fid_randconv_sd": (1.5, 1 / S),
               "fid_randconv_ci_low": (9.5, 3 / S),
               "fid_randconv_ci_high": (15.5, 5 / S), "nll_bpd": (3.25, 0.5 / S), "nll_bpd_sem": (0.02, 0.02 / S),
               "nll_prior_bpd": (0.002, 0.002 / S), "fid_randconv_ddim2": (42.0, 4 / S),
               "fid_randconv_ddim5": (21.0, 2 / S), "fid_randconv_ddpm50": (16.0, 2 / S),
               "fid_randconv_dpmsolverpp2": (32.0, 4 / S), "fid_randconv_dpmsolverpp5": (21.5, 2 / S),
               "sweep_num_samples": (20.0, 0.0), "final_loss": (0.07, 0.02 / S), "steps": (20.0, 0.0),
               "train_seconds": (11.0, 2 / S),
               "images_per_second": (15.0, 2 / S)},
    "cosine": {"fid_randconv": (23.0, 6 / S), "kid_randconv_mean": (0.016, 0.004 / S),
               "kid_randconv_se": (0.002, 0.0), "fid_randconv_sd": (2.0, 1 / S), "fid_randconv_ci_low": (19.5, 5 / S),
               "fid_randconv_ci_high": (27.5, 7 / S), "nll_bpd": (2.25, 0.5 / S), "nll_bpd_sem": (0.02, 0.0),
               "nll_prior_bpd": (0.001, 0.0), "fid_randconv_ddim2": (55.0, 10 / S),
               "fid_randconv_ddim5": (33.0, 6 / S), "fid_randconv_ddpm50": (27.0, 4 / S),
               "fid_randconv_dpmsolverpp2": (50.0, 10 / S), "fid_randconv_dpmsolverpp5": (28.0, 4 / S),
               "sweep_num_samples": (20.0, 0.0), "final_loss": (0.11, 0.02 / S), "steps": (20.0, 0.0),
               "train_seconds": (12.0, 2 / S),
               "images_per_second": (14.0, 2 / S)},
}  # fmt: skip
# The sweep's bootstrap SDs (sweep.json's ddim_sd, dpmsolver++_sd, ddpm_sd) are each run's point / 20: their
# mean and spread over the seeds are the point's / 20.
MEANS = {name: known | {f"{k}_sd": (m / 20, s / 20) for k, (m, s) in known.items() if k.startswith("fid_randconv_d")}
         for name, known in MEANS.items()}  # fmt: skip


def resamples(schedule: str, seed: int, numbers: dict[str, float]) -> dict[str, np.ndarray]:
    """resamples.npz of a run, as evaluate writes it: 50 bootstrap resamples of FID and KID, each the
    run's score plus a part every schedule of this seed shares (the same resampled rows) and its own; and
    each of the 4 held-out images' bits/dim, the image's shared difficulty plus the run's own."""
    shared, own = np.random.default_rng(seed), np.random.default_rng([seed, *map(ord, schedule)])
    fid, kid, images = shared.normal(0, 3, 50), shared.normal(0, 0.003, 50), shared.normal(0, 0.5, 4)
    return {"fid_randconv": numbers["fid_randconv"] + fid + own.normal(0, 0.5, 50),
            "kid_randconv_mean": numbers["kid_randconv_mean"] + kid + own.normal(0, 0.001, 50),
            "nll_bpd": numbers["nll_bpd"] + images - images.mean() + own.normal(0, 0.05, 4)}  # fmt: skip


def write_run(folder: Path, model: Path, numbers: dict[str, float], seed: int) -> None:
    """A run folder as train, sample, evaluate and sweep leave it, holding `numbers` and a copy of `model`."""
    (folder / "samples").mkdir(parents=True)
    shutil.copy(model, folder / "model.pt")
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    n = numbers
    train_json = {"final_loss": n["final_loss"], "steps": 20, "train_seconds": n["train_seconds"],
                  "images_per_second": n["images_per_second"], "nonfinite_steps": 0}  # fmt: skip
    (folder / "train.json").write_text(json.dumps(train_json))
    (folder / "losses.csv").write_text(f"step,loss\n10,{2 * n['final_loss']!r}\n20,{n['final_loss']!r}\n")
    real = {"num_real": 64, "real_sha256": "ab" * 32, "feature_extractor": "randconv", "weights_sha256": None,
            "resize": "none"}  # fmt: skip
    scored = ("fid_randconv", "fid_randconv_sd", "fid_randconv_ci_low", "fid_randconv_ci_high", "kid_randconv_mean",
              "kid_randconv_se", "nll_bpd", "nll_bpd_sem", "nll_prior_bpd")  # fmt: skip
    scores = {key: n[key] for key in scored}
    draws = resamples(folder.parent.name, seed, n)
    np.savez(folder / "resamples.npz", **draws)
    scores["resamples_sha256"] = hashlib.sha256((folder / "resamples.npz").read_bytes()).hexdigest()
    evaluation = {**scores, "bootstrap": 50, "num_samples": 40, **real, "feature_dim": 224, "weights": "fixed seed",
                  "nll_images": 4, "nll_variance": "fixed_small", "nll_clip_mode": "recompute",
                  "checkpoint_sha256": digest}  # fmt: skip
    (folder / "eval.json").write_text(json.dumps(evaluation))
    tables = {"ddim": {"2": n["ddim2"], "5": n["ddim5"]}, "dpmsolver++": {"2": n["dpm2"], "5": n["dpm5"]},
              "ddpm": {"50": n["ddpm50"]}}  # fmt: skip
    swept = {"metric": "fid_randconv", "samplers": ["ddim", "dpmsolver++"], "spacing": "linspace", "clip_mode": "x0",
             **tables,
             **{f"{s}_sd": {k: v / 20 for k, v in points.items()} for s, points in tables.items()},
             "bootstrap": 50, "ddpm_reused": False, "num_samples": 20, "eta": 0.0, "variance": "fixed_large", "seed": 0,
             **real,
             "checkpoint_sha256": digest}  # fmt: skip
    (folder / "sweep.json").write_text(json.dumps(swept))
    terms = np.full(50, (n["nll_bpd"] - n["nll_prior_bpd"]) / 50)  # T = 50 terms that sum to the bound
    (folder / "nll_terms.csv").write_text("t,bpd\n" + "".join(f"{t},{v!r}\n" for t, v in enumerate(terms.tolist(), 1)))
    Image.new("RGB", (36, 36), (40 * seed, 90, 160)).save(folder / "samples" / "grid.png")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, flowers16: Path) -> Path:
    """A folder with params.yaml (seeds 0 and 1) and the four run folders of KNOWN, each holding a copy
    of one model of the tiny config trained for a single step; nothing sampled or scored."""
    root = tmp_path_factory.mktemp("seeded")
    write_params(root, schedules=["linear", "cosine"], **EVALUATION | {"seeds": [0, 1]})
    one_step = {"steps": 1, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 1}
    model = train(tiny_config(train=one_step), flowers16, root / "model", CPU, progress=False).checkpoint
    for (schedule, seed), numbers in KNOWN.items():
        write_run(root / "runs" / schedule / f"seed{seed}", model, numbers, seed)
    return root


def mlflow_runs(root: Path, every: bool = False):  # noqa: ANN201
    """The runs of the store at `root`, by name, but for the models' runs (or every run, as a list)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ddpm-flowers")
    found = client.search_runs([experiment.experiment_id])
    return found if every else {r.info.run_name: r for r in found if r.data.tags.get("ddpm.kind") != "model"}


@pytest.mark.slow
def test_evaluate_sweep_then_compare_write_every_file_and_log_to_mlflow(project: Path) -> None:
    for schedule, seed in RUNS:
        chosen = ["--beta-schedule", schedule, "--set", f"train.seed={seed}", "--device", "cpu"]
        evaluated = invoke("evaluate", *chosen, cwd=project)
        assert evaluated.exit_code == 0, evaluated.stderr
        assert "fid_randconv" in evaluated.stdout and "nll_bpd" in evaluated.stdout
        assert str(Path("runs", schedule, f"seed{seed}", "eval.json")) in evaluated.stdout
        swept = invoke("sweep", *chosen, cwd=project)
        assert swept.exit_code == 0, swept.stderr
        assert "fid_randconv (N = 20, linspace spacing) by NFE: DDIM 2: " in swept.stdout  # sweep.num_samples
        assert "; DPM-Solver++ 2: " in swept.stdout
    folder = project / "runs" / "linear" / "seed0"
    metrics = json.loads((folder / "eval.json").read_text())
    assert metrics["feature_extractor"] == "randconv" and metrics["num_samples"] == 40
    assert "fid" not in metrics and metrics["fid_randconv"] > 0
    assert metrics["fid_randconv_ci_low"] < metrics["fid_randconv_ci_high"] and metrics["bootstrap"] == 50
    assert metrics["nll_images"] == 4 and metrics["nll_variance"] == "fixed_small" and metrics["nll_bpd"] > 0
    assert 0 <= metrics["memorized_fraction"] <= 1 and len(metrics["closest_pairs"]) == 8  # tests/test_memorization.py
    terms = list(csv.DictReader((folder / "nll_terms.csv").open()))
    assert [int(row["t"]) for row in terms] == list(range(1, 51))  # T = 50, the decoder first
    total = sum(float(row["bpd"]) for row in terms) + metrics["nll_prior_bpd"]
    assert total == pytest.approx(metrics["nll_bpd"], rel=1e-9)
    parts = metrics["nll_decoder_bpd"] + metrics["nll_diffusion_bpd"] + metrics["nll_prior_bpd"]  # L_0, middle, L_T
    assert parts == pytest.approx(metrics["nll_bpd"], abs=1e-9) and metrics["nll_precision"] == "fp32"
    resamples = (folder / "resamples.npz").read_bytes()
    assert metrics["resamples_sha256"] == hashlib.sha256(resamples).hexdigest()
    per_image = np.load(folder / "resamples.npz")["nll_bpd"]  # each held-out image's bound, for paired verdicts
    assert per_image.shape == (4,) and per_image.dtype == np.float64
    assert per_image.mean() == pytest.approx(metrics["nll_bpd"], rel=1e-12)
    model_sha256 = hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()
    assert metrics["checkpoint_sha256"] == model_sha256  # what compare checks against model.pt
    sweep = json.loads((folder / "sweep.json").read_text())
    assert sweep["checkpoint_sha256"] == model_sha256
    assert sweep["metric"] == "fid_randconv" and list(sweep["ddim"]) == ["2", "5"] and list(sweep["ddpm"]) == ["50"]
    assert sweep["samplers"] == ["ddim", "dpmsolver++"] and list(sweep["dpmsolver++"]) == ["2", "5"]

    compared = invoke("compare", cwd=project)
    assert compared.exit_code == 0, compared.stderr
    report = project / "reports" / "compare"
    sizes = {"schedules.png": (1000, 400), "forward.png": (1250, 320), "losses.png": (800, 450)}
    sizes |= {"samples.png": (900, 500), "nll_terms.png": (800, 450), "sweep.png": (800, 450)}  # two grids
    sizes |= {"nearest.png": (1140, 610)}  # 8 pairs of each schedule's first seed
    for name, size in sizes.items():
        with Image.open(report / name) as picture:
            picture.load()
            assert picture.size == size, name
    text = (report / "report.md").read_text()
    header = ("| schedule | seeds | fid_randconv (N = 40) ± sd | fid_randconv_inf [95 %] | kid_randconv_mean ± SE "
              "| kid_randconv_holdout_mean ± SE | NLL (bits/dim) ± SE | fid_randconv (N = 20) @ DDIM 2 "
              "| fid_randconv (N = 20) @ DDIM 5 | fid_randconv (N = 20) @ DPM-Solver++ 2 "
              "| fid_randconv (N = 20) @ DPM-Solver++ 5 | final loss |")  # fmt: skip
    assert header in text  # one seed: each estimate with its bootstrap spread (test_seeds_*: the spread over seeds)
    assert "\n| NFE | linear | cosine |\n|---:|---|---|\n| 2 | " in text  # the best sampler per schedule and NFE
    assert header in compared.stdout and compared.stdout.count("\n| linear | 0 |") == 2  # the tables, in the terminal
    assert "\n| schedule | seeds | steps | training time | img/s |\n" in text  # the timing, apart
    assert all(f"]({name})" in text for name in sizes)
    assert "Training seeds: 0 (" in text and "on 4 held-out images" in text and "Bootstrap: 50 resamples" in text
    assert ("Process and loss, every run: predicts ε, fixed variances, loss unweighted (L_simple, Ho et al. eq. 14)."
            in text)  # fmt: skip
    # one seed: each metric judged on evaluate's resamples.npz, paired, and said to be sampling noise only
    judged = [line.split(" | ")[6] for line in text.splitlines() if line.startswith("| linear − cosine |")]
    assert judged == ["paired bootstrap over 50 resamples"] * 4 + ["paired t over 4 held-out images"], judged
    assert "**One training seed**" in text
    rows = list(csv.DictReader((report / "comparison.csv").open()))
    assert [r["schedule"] for r in rows] == ["linear", "cosine"] and rows[0]["seeds"] == "0"
    linear = json.loads((project / "runs" / "linear" / "seed0" / "eval.json").read_text())
    assert float(rows[0]["fid_randconv"]) == pytest.approx(linear["fid_randconv"])
    assert float(rows[0]["nll_bpd"]) == pytest.approx(linear["nll_bpd"]) and "nll_bpd_std_seeds" not in rows[0]
    assert rows[0]["steps"] == "20.0"
    # the decoder's floor, each schedule's, and the bound in its three parts (T = 50: floors of 3.711 and 3.464)
    cosine = json.loads((project / "runs" / "cosine" / "seed0" / "eval.json").read_text())
    assert [linear["nll_decoder_floor_bpd"], cosine["nll_decoder_floor_bpd"]] == pytest.approx(
        [3.7106, 3.4641], abs=1e-4
    )
    assert "even a network predicting x_0 exactly pays, −log₂(2Φ(1/(255σ₁)) − 1)" in text
    assert "which the schedule's first steps set (at T = 50): linear 3.711, cosine 3.464 bits/dim;" in text
    parts = ("nll_decoder_bpd", "nll_decoder_floor_bpd", "nll_diffusion_bpd", "nll_prior_bpd", "nll_bpd")
    assert "| linear | " + " | ".join(f"{linear[k]:.3f}" for k in parts) + " |" in text

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    found = mlflow_runs(project, every=True)
    kinds = [r.data.tags.get("ddpm.kind") for r in found]
    assert sorted(kinds) == ["compare", "evaluation", "evaluation", "model", "model", "sweep", "sweep"]
    child = json.loads((folder / "mlflow_eval_run.json").read_text())["run_id"]
    scored = client.get_run(child)
    assert scored.info.run_name == "linear: DDIM 5 steps, linspace, clip x0, 40 samples, randconv"
    assert scored.data.metrics["fid_randconv"] == pytest.approx(metrics["fid_randconv"])
    assert scored.data.metrics["nll_bpd"] == pytest.approx(metrics["nll_bpd"])
    assert scored.data.metrics["fid_randconv_ci_high"] == pytest.approx(metrics["fid_randconv_ci_high"])
    assert scored.data.tags["feature_extractor"] == "randconv" and scored.data.tags["num_samples"] == "40"
    assert scored.data.params["evaluate.bootstrap"] == "50" and scored.data.params["sample.num_samples"] == "40"
    assert "num_samples" not in scored.data.metrics  # counts are tags, not metrics drawn as bar charts
    assert {a.path for a in client.list_artifacts(child)} == {"eval.json", "nll_terms.csv", "samples"}
    # the samples were drawn outside MLflow here, so evaluate made the model's run: one per checkpoint
    parent = client.get_run(scored.data.tags["mlflow.parentRunId"])
    assert parent.info.run_name == "seed0/model.pt" and parent.data.tags["ddpm.checkpoint"].endswith("model.pt")
    sweeps = [r for r in found if r.data.tags.get("ddpm.kind") == "sweep"]
    mine = next(r for r in sweeps if r.data.tags["mlflow.parentRunId"] == parent.info.run_id)
    history = client.get_metric_history(mine.info.run_id, "fid_randconv_ddim")
    assert [(m.step, m.value) for m in history] == [(2, pytest.approx(sweep["ddim"]["2"])),
                                                    (5, pytest.approx(sweep["ddim"]["5"]))]  # fmt: skip
    history = client.get_metric_history(mine.info.run_id, "fid_randconv_dpmsolverpp")  # MLflow refuses "+"
    assert [(m.step, m.value) for m in history] == [(2, pytest.approx(sweep["dpmsolver++"]["2"])),
                                                    (5, pytest.approx(sweep["dpmsolver++"]["5"]))]  # fmt: skip
    assert mine.data.params["sweep.steps"] == "[2, 5]"
    compare = next(r for r in found if r.data.tags.get("ddpm.kind") == "compare")
    logged = {a.path for a in client.list_artifacts(compare.info.run_id, "report")}
    assert {f"report/{name}" for name in [*sizes, "report.md", "comparison.csv"]} <= logged
    assert compare.data.metrics["fid_randconv.cosine"] == pytest.approx(float(rows[1]["fid_randconv"]))
    assert compare.data.tags["compared.linear"] == child

    # a second evaluate reuses the cached real features and the same child run
    again = invoke("evaluate", "--beta-schedule", "linear", "--device", "cpu", cwd=project)
    assert "real features from the cache" in again.stdout
    assert len(mlflow_runs(project, every=True)) == len(found)
    # another evaluation configuration of the same samples is a new child, beside the first
    other = invoke("evaluate", "--beta-schedule", "linear", "--set", "evaluate.bootstrap=40", cwd=project)
    assert other.exit_code == 0, other.stderr
    children = [
        r for r in mlflow_runs(project, every=True)
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id and r.data.tags["ddpm.kind"] == "evaluation"
    ]  # fmt: skip
    assert sorted(r.data.params["evaluate.bootstrap"] for r in children) == ["40", "50"]


@pytest.mark.slow
def test_evaluate_and_compare_errors_are_one_line_and_write_nothing(project: Path, tmp_path: Path) -> None:
    bad_store = invoke(
        "evaluate", "--set", "tracking.uri=bogus://nowhere", "--out", str(tmp_path / "e.json"), cwd=project
    )
    assert bad_store.exit_code == 2
    assert bad_store.stderr.startswith("ddpm: error: cannot use the MLflow tracking store bogus://nowhere (")
    assert not (tmp_path / "e.json").exists()

    # the likelihood without held-out images, or too few of them: one line, before any work, nothing written
    nowhere, empty = tmp_path / "holdout.npy", tmp_path / "empty.npy"
    save_images(empty, np.zeros((0, 3, 16, 16), np.uint8))  # what data.holdout: 0 writes
    for args, said in (
        (["--holdout", str(empty)], f"{empty}: 0 held-out images, fewer than evaluate.nll_images = 4; raise "
         "data.holdout and run `ddpm prepare` again, or lower evaluate.nll_images (0 skips the likelihood)"),
        (["--holdout", str(nowhere)], f"{nowhere}: not found; `ddpm prepare` writes the held-out images there "
                                      "(data.holdout), or set evaluate.nll_images: 0 to skip the likelihood"),
        (["--set", "evaluate.nll_images=10"], f"{Path('data/prepared/holdout.npy')}: 6 held-out images, fewer than "
         "evaluate.nll_images = 10; raise data.holdout and run `ddpm prepare` again, or lower evaluate.nll_images "
         "(0 skips the likelihood)"),
    ):  # fmt: skip
        refused = invoke("evaluate", *args, "--out", str(tmp_path / "e.json"), cwd=project)
        assert refused.exit_code == 2 and refused.stderr.strip() == f"ddpm: error: {said}"
        assert not (tmp_path / "e.json").exists()

    missing = invoke("compare", "quadratic", "--out", str(tmp_path / "r"), cwd=project)
    assert missing.exit_code == 2
    assert missing.stderr.strip() == (
        f"ddpm: error: {Path('runs/quadratic/seed0/model.pt')}: not found; "
        "run `ddpm train --beta-schedule quadratic` first"
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
    seeded: Path, tmp_path: Path, key: str, value: object, what: str
) -> None:
    root = tmp_path / "project"
    shutil.copytree(seeded / "runs", root / "runs")
    scores = {"fid": 30.0, "kid_mean": 0.01, "kid_se": 0.001, "num_samples": 40, "num_real": 64,
              "real_sha256": "cd34", "feature_extractor": "inception", "feature_dim": 2048, "weights": "test",
              "weights_sha256": "6726", "resize": "legacy"}  # fmt: skip
    (root / "runs" / "linear" / "seed0" / "eval.json").write_text(json.dumps(scores))
    (root / "runs" / "cosine" / "seed0" / "eval.json").write_text(json.dumps({**scores, key: value}))
    for name in ("linear", "cosine"):  # scores without resamples
        (root / "runs" / name / "seed0" / "resamples.npz").unlink()
    refused = invoke("compare", "linear", "cosine", "--set", "tracking.enabled=false", cwd=root)
    assert refused.exit_code == 2
    assert f"the schedules were run with different {what}" in refused.output
    assert not (root / "reports").exists()


def drawn_as(folder: Path, schedule: str, **sample: object) -> None:
    """samples.json in `folder` as `ddpm sample` writes it (without sha256s), drawn with `sample`."""
    record = {"checkpoint": str(folder / "model.pt"), "run_dir": str(folder), "model_run_id": None, "step": 1,
              "image_size": 16, "schedule": schedule, "timesteps": 50,
              "sample": SampleConfig(**{"num_samples": 40} | sample).model_dump(mode="json")}  # fmt: skip
    (folder / "samples" / "samples.json").write_text(json.dumps(record))


def test_compare_reads_samples_json_and_refuses_runs_sampled_otherwise(seeded: Path, tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(seeded / "runs", root / "runs")
    shutil.copy(seeded / "params.yaml", root)  # seeds 0 and 1
    drawn_as(root / LINEAR, "linear", sampler="ddim", eta=0.0)
    for seed in (0, 1):
        drawn_as(root / "runs" / "cosine" / f"seed{seed}", "cosine", sampler="ddim", eta=float(seed))
    drawn_as(root / "runs" / "linear" / "seed1", "linear", sampler="ddim", eta=1.0)
    refused = invoke("compare", "--set", "tracking.enabled=false", "--out", "r", cwd=root)
    assert refused.exit_code == 2 and refused.stderr.strip() == (
        "ddpm: error: sample.eta differs between the runs (linear: 0.0, linear seed 1: 1.0, cosine: 0.0, cosine seed "
        "1: 1.0), so their numbers do not compare; run `ddpm sample --beta-schedule linear --set train.seed=1 --set "
        "sample.eta=0.0` then `ddpm evaluate --beta-schedule linear --set train.seed=1 --set sample.eta=0.0`; "
        "`ddpm sample --beta-schedule cosine --set train.seed=1 --set sample.eta=0.0` then `ddpm evaluate "
        "--beta-schedule cosine --set train.seed=1 --set sample.eta=0.0`"
    ), refused.output
    assert not (root / "r").exists()


def test_the_report_names_how_the_samples_were_drawn(seeded: Path, tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(seeded / "runs", root / "runs")
    shutil.copy(seeded / "params.yaml", root)
    for name in ("linear", "cosine"):
        for seed in (0, 1):
            drawn_as(root / "runs" / name / f"seed{seed}", name, sampler="ddim", clip_mode="dynamic")
    done = invoke("compare", "--set", "tracking.enabled=false", "--out", "r", cwd=root)
    assert done.exit_code == 0, done.output
    text = (root / "r" / "report.md").read_text()
    assert "Sampling: DDIM 50 steps, linspace, η = 0.0, x_0 kept in [-1, 1] by dynamic, seed 0." in text


def measured(base: dict, key: str, linear: object, cosine: object) -> list[Measured]:
    """Two runs, linear and cosine (seed 0), sampled with `base` and scored with a likelihood, with
    `key` (sample.<setting> or an eval.json key) `linear` in one and `cosine` in the other."""
    command = lambda name: lambda stage, extra: f"`ddpm {stage} --beta-schedule {name} {extra}`".replace(" `", "`")  # noqa: E731
    runs = []
    for name, value in (("linear", linear), ("cosine", cosine)):
        sample = SampleConfig(**base).model_dump(mode="json")
        scores = {"nll_bpd": 3.0, "nll_images": 4, "nll_variance": "fixed_small", "nll_clip_mode": "recompute",
                  "nll_precision": "fp32", "holdout_sha256": "ab" * 32}  # fmt: skip
        if key.startswith("sample."):
            sample[key.removeprefix("sample.")] = value
        else:
            scores[key] = value
        runs.append(Measured(name, command(name), sample, scores))
    return runs


DDIM, DDPM = {"sampler": "ddim"}, {"sampler": "ddpm"}
SAMPLE_FIX = (
    "`ddpm sample --beta-schedule cosine --set {0}={1}` then `ddpm evaluate --beta-schedule cosine --set {0}={1}`"
)


@pytest.mark.parametrize(
    ("base", "key", "linear", "cosine", "fix"),
    [
        (DDIM, "sample.sampler", "ddim", "ddpm", SAMPLE_FIX),
        (DDIM, "sample.steps", 50, 20, SAMPLE_FIX),
        (DDIM, "sample.eta", 0.0, 1.0, SAMPLE_FIX),
        (DDPM, "sample.variance", "fixed_large", "fixed_small", SAMPLE_FIX),
        (DDIM, "sample.seed", 0, 1, SAMPLE_FIX),
        (DDIM, "sample.batch_size", 256, 128, SAMPLE_FIX),
        (DDIM, "sample.precision", "auto", "fp32", SAMPLE_FIX),
        (DDPM, "sample.clip_mode", "recompute", "none", SAMPLE_FIX),
        (DDIM, "sample.clip_mode", "recompute", "x0", SAMPLE_FIX),
        (DDIM, "sample.num_samples", 40, 50, SAMPLE_FIX),
        (DDIM, "nll_images", 4, 8, "`ddpm evaluate --beta-schedule cosine --set evaluate.nll_images={1}`"),
        (DDIM, "nll_variance", "fixed_small", "fixed_large",
         "`ddpm evaluate --beta-schedule cosine --set evaluate.nll_variance={1}`"),
        (DDIM, "nll_clip_mode", "recompute", "dynamic",
         "`ddpm evaluate --beta-schedule cosine --set sample.clip_mode={1}`"),
        (DDIM, "nll_precision", "fp32", "bf16", "`ddpm evaluate --beta-schedule cosine`"),
        (DDIM, "nll_precision", "fp32", None, "`ddpm evaluate --beta-schedule cosine`"),  # not recorded: unknown
        (DDIM, "holdout_sha256", "ab" * 32, "cd" * 32, "`ddpm evaluate --beta-schedule cosine`"),
        (DDPM, "sample.eta", 0.0, 1.0, None),  # DDPM draws no η, DDIM no variance: not refused
        (DDIM, "sample.variance", "fixed_large", "fixed_small", None),
        (DDIM, "sample.compile", "auto", True, None),  # how fast, not what is drawn
        (DDIM, "nll_variance", "fixed_small", "learned_range", None),  # the model's own (ddpm.knobs checks it)
        (DDIM, "nll_variance", "learned_range", "fixed_large", None),
    ],
)  # fmt: skip
def test_runs_sampled_or_measured_otherwise_are_refused_in_one_line(
    base: dict, key: str, linear: object, cosine: object, fix: str | None
) -> None:
    runs = measured(base, key, linear, cosine)
    if fix is None:
        check_comparable(runs)  # no refusal
        return
    a, b = ("unknown" if v is None else v[:12] if isinstance(v, str) else json.dumps(v) for v in (linear, cosine))
    with pytest.raises(UserError) as refused:
        check_comparable(runs)
    assert str(refused.value) == (
        f"{key} differs between the runs (linear: {a}, cosine: {b}), so their numbers do not compare; run "
        + fix.format(key, a)
    )
    check_comparable(measured(base, key, linear, linear))  # the same value: compared


def test_compare_refuses_scores_of_a_model_retrained_since(seeded: Path, tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(seeded / "runs" / "linear" / "seed0", root / "runs" / "linear" / "seed0")
    scores = {"fid": 30.0, "kid_mean": 0.01, "kid_se": 0.001, "num_samples": 40, "num_real": 64,
              "feature_extractor": "inception", "feature_dim": 2048, "weights": "test", "resize": "legacy",
              "checkpoint_sha256": "0" * 64}  # fmt: skip
    (root / "runs" / "linear" / "seed0" / "eval.json").write_text(json.dumps(scores))
    refused = invoke("compare", "linear", "--set", "tracking.enabled=false", cwd=root)
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (
        f"ddpm: error: {Path('runs/linear/seed0/eval.json')}: scores an earlier model than "
        f"{Path('runs/linear/seed0/model.pt')} (retrained since); run `ddpm sample` and `ddpm evaluate "
        "--beta-schedule linear` again"
    )
    assert not (root / "reports").exists()


def test_compare_says_a_truncated_model_is_damaged_not_retrained(seeded: Path, tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(seeded / "runs" / "linear" / "seed0", root / "runs" / "linear" / "seed0")
    model = root / "runs" / "linear" / "seed0" / "model.pt"
    model.write_bytes(model.read_bytes()[:5000])  # as a full disk or a killed copy leaves it
    refused = invoke("compare", "linear", "--set", "tracking.enabled=false", cwd=root)
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (  # was "eval.json: scores an earlier model than model.pt (retrained since)"
        f"ddpm: error: {Path('runs/linear/seed0/model.pt')}: not a valid ddpm checkpoint (truncated, or not a file "
        "torch.save wrote); run `ddpm train --beta-schedule linear` again to write it anew from the run's "
        "checkpoints, then `ddpm sample --beta-schedule linear` and `ddpm evaluate --beta-schedule linear`"
    )
    assert not (root / "reports").exists()


def test_seeds_are_averaged_and_their_paired_differences_judge_the_schedules(seeded: Path) -> None:
    compared = invoke("compare", "--set", "tracking.enabled=false", "--set", "compare.primary=nll", cwd=seeded)
    assert compared.exit_code == 0, compared.stderr
    report = seeded / "reports" / "compare"
    text = (report / "report.md").read_text()
    header = ("| schedule | seeds | fid_randconv (N = 40) ± sd over seeds | kid_randconv_mean ± sd over seeds "
              "| NLL (bits/dim) ± sd over seeds "
              "| fid_randconv (N = 20) @ DDIM 2 | fid_randconv (N = 20) @ DDIM 5 "
              "| fid_randconv (N = 20) @ DPM-Solver++ 2 | fid_randconv (N = 20) @ DPM-Solver++ 5 "
              "| final loss |")  # fmt: skip
    assert header in text
    # the best sampler per schedule at each NFE, from the means over the seeds: linear at 5 NFE, DDIM's 21.00
    # leads DPM-Solver++'s 21.50 by less than √(0.743² + 0.761²) = 1.06, the SDs of the two means
    # (√(1.00² + 1.10²)/2 and √(1.025² + 1.125²)/2)
    best = ["| 2 | DPM-Solver++ 32.00 | DPM-Solver++ 50.00 |", "| 5 | DDIM 21.00 (within noise) | DPM-Solver++ 28.00 |"]
    assert "\n".join(best) in text
    assert header in compared.stdout and compared.stdout.count("\n| linear | 0 1 |") == 2  # the tables, in the terminal
    assert ("\n| linear | 0 1 | 12.00 ± 2.83 | 0.0120 ± 0.0028 | 3.250 ± 0.354 | 42.00 ± 2.83 | 21.00 ± 1.41 "
            "| 32.00 ± 2.83 | 21.50 ± 1.41 "
            "| 0.0700 ± 0.0141 |\n") in compared.stdout  # fmt: skip
    assert "\n| linear | 0 1 | 20 | 0 min 11 s | 15 |\n" in compared.stdout  # this machine's timing, apart
    # DVC's plots (test_dvc_plots): the score column named as the metric is; every run's losses in one file
    scores = "".join(f"{row['schedule']},{row['fid_randconv']}\n" for row in json.loads(
        (report / "comparison.json").read_text())["rows"])  # fmt: skip
    assert (report / "scores.csv").read_text() == "schedule,fid_randconv\n" + scores
    curves = ["run,step,loss"]
    for name, seed in [(name, seed) for name in ("linear", "cosine") for seed in (0, 1)]:
        steps = (seeded / "runs" / name / f"seed{seed}" / "losses.csv").read_text().splitlines()[1:]
        curves += [f"{name} seed {seed},{step},{float(loss):.6f}" for step, loss in (line.split(",") for line in steps)]
    assert (report / "losses.csv").read_text().splitlines() == curves
    assert "Training seeds: 0, 1" in text and "on 4 held-out images" in text and "Bootstrap: 50 resamples" in text
    assert "The 3 tests are one family, corrected by Holm–Bonferroni" in text and "One training seed" not in text
    # the per-seed differences linear − cosine: FID (−10, −12): Student's t at 1 df, t = 11; KID (−0.004,
    # −0.004) and NLL (1, 1): no spread at all, so p = 0; Holm: 0, 0, then 1·p_FID
    p_fid = 1 - 2 / math.pi * math.atan(11)
    judged = json.loads((report / "comparison.json").read_text())
    assert (judged["alpha"], judged["correction"], judged["primary"]) == (0.05, "holm", "nll")
    verdicts = [(v["metric"], v["gap"], v["p"], v["p_holm"], v["test"], v["verdict"]) for v in judged["verdicts"]]
    assert verdicts == [  # compare.primary: nll, the primary test first
        ("nll_bpd", 1.0, 0.0, 0.0, "paired t over 2 seeds", "cosine lower, a real difference"),
        ("fid_randconv", -11.0, pytest.approx(p_fid), pytest.approx(p_fid), "paired t over 2 seeds", "within noise"),
        ("kid_randconv_mean", pytest.approx(-0.004), pytest.approx(0, abs=1e-9), pytest.approx(0, abs=1e-9),
         "paired t over 2 seeds", "linear lower, a real difference"),
    ]  # fmt: skip
    lines = [line for line in text.splitlines() if line.startswith("| linear − cosine |")]
    assert [line.split(" | ")[-1] for line in lines] == [v[-1] + " |" for v in verdicts]
    assert "| **nll_bpd** (primary) | 1 | 0 | < 1e-15 | < 1e-15 | paired t over 2 seeds |" in lines[0]
    assert "| fid_randconv | -11 | 1 | 0.0577 | 0.0577 | paired t over 2 seeds |" in lines[1]
    rows = list(csv.DictReader((report / "comparison.csv").open()))
    assert [r["schedule"] for r in rows] == ["linear", "cosine"] and rows[0]["seeds"] == "0 1"
    linear = [KNOWN[("linear", k)] for k in (0, 1)]
    assert float(rows[0]["fid_randconv"]) == pytest.approx((linear[0]["fid_randconv"] + linear[1]["fid_randconv"]) / 2)
    assert float(rows[0]["nll_bpd_std_seeds"]) == pytest.approx(
        abs(linear[0]["nll_bpd"] - linear[1]["nll_bpd"]) / 2**0.5
    )
    assert rows[0]["steps"] == "20.0"
    # every number of the table: its mean over the two seeds and their standard deviation, as known
    for row in judged["rows"]:
        known = MEANS[row.pop("schedule")]
        assert row.pop("seeds") == "0 1" and row.pop("num_samples") == 40
        expected = {key: mean for key, (mean, _) in known.items()} | {
            f"{key}_std_seeds": std for key, (_, std) in known.items()
        }
        assert row == pytest.approx(expected)


def test_one_seed_is_judged_on_the_paired_resamples_of_resamples_npz(seeded: Path, tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(seeded / "runs", root / "runs")
    # compare's reading and judging, without its pictures (test_seeds_* runs the whole command)
    judged = judge(read_results(["linear", "cosine"], [1], root / "runs"), "fid")
    verdicts, text = [v.as_json() for v in judged], "\n".join(verdicts_section(judged, "fid", "fid_randconv"))
    a, b = (dict(np.load(root / "runs" / name / "seed1" / "resamples.npz")) for name in ("linear", "cosine"))
    # independently: SE = sd(a_b − b_b)·√(N/(N − 1)) with N = 40 samples, p = 2 P(T_39 > |gap|/SE)
    expected = []
    for key in ("fid_randconv", "kid_randconv_mean"):
        gap = KNOWN[("linear", 1)][key] - KNOWN[("cosine", 1)][key]
        se = np.std(a[key] - b[key], ddof=1) * math.sqrt(40 / 39)
        p = 2 * stats.t.sf(abs(gap) / se, 39)
        expected.append((key, pytest.approx(gap), pytest.approx(se), pytest.approx(p)))
    d = a["nll_bpd"] - b["nll_bpd"]  # each held-out image's difference: Student's t at 3 df
    se = d.std(ddof=1) / 2
    expected.append(
        ("nll_bpd", pytest.approx(d.mean()), pytest.approx(se), pytest.approx(2 * stats.t.sf(abs(d.mean()) / se, 3)))
    )
    assert [(v["metric"], v["gap"], v["se"], v["p"]) for v in verdicts] == expected
    assert [v["test"] for v in verdicts] == ["paired bootstrap over 50 resamples"] * 2 + [
        "paired t over 4 held-out images"
    ]
    assert verdicts[0]["verdict"] == f"linear lower, {ONE_SEED}" and "**One training seed**: a real" in text
    for line in text.splitlines():
        assert "a real difference" not in line or ONE_SEED in line, line

    resamples = root / "runs" / "cosine" / "seed1" / "resamples.npz"
    np.savez(resamples, fid_randconv=np.zeros(7))  # another evaluation's, or a half-written one
    refused = invoke("compare", "cosine", "--set", "seeds=[1]", "--set", "tracking.enabled=false", cwd=root)
    assert refused.exit_code == 2 and refused.stderr.strip() == (
        f"ddpm: error: {Path('runs/cosine/seed1/resamples.npz')}: not the resamples of the scores in "
        f"{Path('runs/cosine/seed1/eval.json')} (another sha256: an interrupted `ddpm evaluate`); run `ddpm evaluate "
        "--beta-schedule cosine --set train.seed=1` again"
    )
    edit_json(resamples.parent / "eval.json",
              lambda e: e | {"resamples_sha256": hashlib.sha256(resamples.read_bytes()).hexdigest()})  # fmt: skip
    refused = invoke("compare", "cosine", "--set", "seeds=[1]", "--set", "tracking.enabled=false", cwd=root)
    assert refused.exit_code == 2 and refused.stderr.strip() == (
        f"ddpm: error: {Path('runs/cosine/seed1/resamples.npz')}: fid_randconv: expected 50 finite numbers, got "
        "shape (7,); run `ddpm evaluate --beta-schedule cosine --set train.seed=1` again"
    )
    resamples.write_bytes(b"not an archive")
    edit_json(resamples.parent / "eval.json",
              lambda e: e | {"resamples_sha256": hashlib.sha256(resamples.read_bytes()).hexdigest()})  # fmt: skip
    refused = invoke("compare", "cosine", "--set", "seeds=[1]", "--set", "tracking.enabled=false", cwd=root)
    assert refused.exit_code == 2 and refused.stderr.strip() == (
        f"ddpm: error: {Path('runs/cosine/seed1/resamples.npz')}: not a numpy .npz archive; run `ddpm evaluate "
        "--beta-schedule cosine --set train.seed=1` again"
    )


def test_one_seed_shows_each_sweep_point_with_its_bootstrap_sd_and_n(seeded: Path, tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(seeded / "runs", root / "runs")
    compared = invoke("compare", "--set", "seeds=[0]", "--set", "tracking.enabled=false", "--out", "r", cwd=root)
    assert compared.exit_code == 0, compared.stderr
    text = (root / "r" / "report.md").read_text()
    header = [f"fid_randconv (N = 20) @ {s} {k}" for s in ("DDIM", "DPM-Solver++") for k in (2, 5)]
    assert "| " + " | ".join(header) + " |" in text
    assert "| 40.00 ± 2.00 | 20.00 ± 1.00 | 30.00 ± 1.50 | 20.50 ± 1.02 |" in text  # linear: KNOWN's, ± each / 20
    assert "| 50.00 ± 2.50 | 30.00 ± 1.50 | 45.00 ± 2.25 | 26.00 ± 1.30 |" in text  # cosine
    assert (
        "Sweep: N = 20 samples at each number of network evaluations (NFE), ± its bootstrap SD over 50 "
        "resamples, DDIM (η = 0.0) and DPM-Solver++ with linspace spacing, and DDPM at full length"
    ) in text
    assert "x_0 kept in [-1, 1] by x0, seed 0." in text
    # the best sampler at each NFE: DDIM's 20.00 at 5 NFE leads DPM-Solver++'s 20.50 by less than √(1.00² + 1.025²)
    best = ["| NFE | linear | cosine |", "|---:|---|---|", "| 2 | DPM-Solver++ 30.00 | DPM-Solver++ 45.00 |",
            "| 5 | DDIM 20.00 (within noise) | DPM-Solver++ 26.00 |"]  # fmt: skip
    assert "\n".join(best) in text


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d | {"spacing": "trailing"},
        lambda d: d | {"clip_mode": "dynamic"},
        lambda d: {k: v for k, v in d.items() if not k.startswith("dpmsolver")} | {"samplers": ["ddim"]},
    ],
)
def test_compare_refuses_sweeps_of_other_samplers_or_spacings(seeded: Path, tmp_path: Path, change: "callable") -> None:
    root = tmp_path / "project"
    shutil.copytree(seeded / "runs", root / "runs")
    edit_json(root / "runs" / "cosine" / "seed0" / "sweep.json", change)
    refused = invoke("compare", "--set", "seeds=[0]", "--set", "tracking.enabled=false", cwd=root)
    assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output
    said = (
        "the schedules were run with different sweeps (sweep.samplers, sweep.steps, sample.spacing, "
        "sample.clip_mode, sweep.num_samples)"
    )
    assert said in refused.stderr and not (root / "reports").exists()


def edit_json(path: Path, change: "callable") -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


LINEAR = Path("runs/linear/seed0")


@pytest.mark.parametrize(
    ("name", "change", "said"),
    [
        ("train.json", lambda d: d | {"final_loss": "abc"}, 'final_loss is "abc"; expected a number'),
        ("train.json", lambda d: d | {"steps": None}, "steps is null; expected an integer"),
        ("eval.json", lambda d: d | {"fid_randconv": [1, 2]}, "fid_randconv is [1, 2]; expected a number"),
        ("eval.json", lambda d: d | {"num_samples": 40.5}, "num_samples is 40.5; expected an integer"),
        (
            "eval.json",
            lambda d: {k: v for k, v in d.items() if k != "fid_randconv_sd"},  # an interval without its sd
            "not the scores `ddpm evaluate` writes (expected fid_randconv, kid_randconv_mean, "
            "num_samples, num_real, feature_extractor, feature_dim, weights, resize, nll_images, nll_variance, "
            "nll_clip_mode, fid_randconv_sd, fid_randconv_ci_low, fid_randconv_ci_high; missing fid_randconv_sd)",
        ),  # fmt: skip
        ("sweep.json", lambda d: d | {"ddim": {"two": 3.0}}, 'ddim has the key "two"; expected whole numbers of steps'),
        ("sweep.json", lambda d: d | {"ddpm": {"50": None}}, 'ddpm["50"] is null; expected a number'),
        ("sweep.json", lambda d: d | {"dpmsolver++": {"2": "x"}}, 'dpmsolver++["2"] is "x"; expected a number'),
        (
            "sweep.json",
            lambda d: d | {"samplers": ["ddim", "unipc"]},
            'samplers is ["ddim", "unipc"]; expected a list of distinct samplers: ddim, dpmsolver++',
        ),
        ("sweep.json", lambda d: None, "expected a mapping"),
        ("mlflow_eval_run.json", lambda d: {"run_id": 5}, "run_id is 5; expected a string or null"),
    ],
)
def test_compare_refuses_bad_values_in_one_line_before_writing(
    seeded: Path, tmp_path: Path, name: str, change: "callable", said: str
) -> None:
    root = tmp_path / "project"
    shutil.copytree(seeded / "runs", root / "runs")
    (root / LINEAR / "mlflow_eval_run.json").write_text('{"run_id": null}')
    edit_json(root / LINEAR / name, change)
    refused = invoke("compare", "linear", "cosine", "--set", "tracking.enabled=false", cwd=root)
    assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output
    stage = {"train.json": "train", "sweep.json": "sweep"}.get(name, "evaluate")
    selects = "--beta-schedule linear"
    assert refused.stderr.strip() == (f"ddpm: error: {LINEAR / name}: {said}; run `ddpm {stage} {selects}` again")
    assert not (root / "reports").exists()


@pytest.mark.parametrize(
    ("content", "said"),
    [("step,loss\n", "no losses (the header alone)"), ("step,loss\n10,0.5,7\n", "expected rows of step,loss")],
)
def test_compare_refuses_a_loss_curve_without_losses(seeded: Path, tmp_path: Path, content: str, said: str) -> None:
    root = tmp_path / "project"
    shutil.copytree(seeded / "runs", root / "runs")
    (root / LINEAR / "losses.csv").write_text(content)
    refused = invoke("compare", "linear", "cosine", "--set", "tracking.enabled=false", cwd=root)
    expected = f"ddpm: error: {LINEAR / 'losses.csv'}: {said}; run `ddpm train --beta-schedule linear` again"
    assert refused.exit_code == 2 and refused.stderr.strip() == expected, refused.output


def report_files(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_ino, p.read_bytes()) for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


REPORT = ("report.md", "comparison.json", "comparison.csv", "scores.csv", "losses.csv", "schedules.png",
          "nll_terms.png", "sweep.png", "losses.png", "forward.png", "samples.png", "quality.png")  # fmt: skip


@pytest.mark.slow
def test_compare_writes_its_report_as_one_set_or_leaves_the_last_one(
    seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "project"
    shutil.copytree(seeded / "runs", root / "runs")
    report = root / "reports" / "compare"
    report.mkdir(parents=True)
    for name in REPORT:  # the last comparison's report
        (report / name).write_text(f"the last {name}")
    before = report_files(report)
    grid = root / LINEAR / "samples" / "grid.png"
    grid.write_bytes(b"not a PNG")
    refused = invoke("compare", "linear", "cosine", "--set", "tracking.enabled=false", cwd=root)
    assert refused.exit_code == 2 and refused.stderr.startswith(
        f"ddpm: error: {grid.relative_to(root)}: not a picture (cannot identify image file"
    ), refused.output
    assert refused.stderr.strip().endswith("); run `ddpm sample --beta-schedule linear` again")
    assert report_files(report) == before
    shutil.copy(seeded / LINEAR / "samples" / "grid.png", grid)
    real = Path.write_text

    def write_text(self: Path, *args: object, **kwargs: object) -> int:  # the last file of the report
        if "report.md" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    full = invoke("compare", "linear", "cosine", "--set", "tracking.enabled=false", cwd=root)
    assert full.exit_code == 2 and "report.md: cannot write it, the disk is full (" in full.stderr, full.output
    assert report_files(report) == before  # not one picture renamed


@pytest.mark.parametrize("mixed", ["grid", "samples", "terms"])
def test_compare_refuses_a_set_mixed_by_an_interrupted_stage(seeded: Path, tmp_path: Path, mixed: str) -> None:
    root = tmp_path / "project"
    shutil.copytree(seeded / "runs", root / "runs")
    folder = root / LINEAR
    sha = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    digests = {"samples.npy": "5a" * 32, "grid.png": sha(folder / "samples" / "grid.png"),
               "progression.png": "00" * 32, "progression.gif": "00" * 32}  # fmt: skip
    edit_json(folder / "eval.json", lambda e: e | {"samples_sha256": "5a" * 32,
                                                   "nll_terms_sha256": sha(folder / "nll_terms.csv")})  # fmt: skip
    origin = {"checkpoint": str(folder / "model.pt"), "run_dir": str(folder), "model_run_id": None, "step": 1,
              "image_size": 16, "schedule": "linear", "timesteps": 50, "sample": {"num_samples": 40},
              "sha256": digests}  # fmt: skip
    (folder / "samples" / "samples.json").write_text(json.dumps(origin))  # one set, before `mixed` is mixed in
    if mixed == "grid":  # the pictures of other samples than samples.json describes
        Image.new("RGB", (36, 36)).save(folder / "samples" / "grid.png")
        said = (f"{LINEAR / 'samples' / 'grid.png'}: not the picture of the samples "
                f"{LINEAR / 'samples' / 'samples.json'} describes (another sha256: an interrupted `ddpm sample`); "
                "run `ddpm sample --beta-schedule linear` again")  # fmt: skip
    elif mixed == "samples":  # scores of the samples drawn before
        edit_json(folder / "eval.json", lambda e: e | {"samples_sha256": "77" * 32})
        said = (f"{LINEAR / 'eval.json'}: scores other samples than {LINEAR / 'samples' / 'samples.npy'} (sampled "
                "since); run `ddpm evaluate --beta-schedule linear` again")  # fmt: skip
    else:  # the terms of another bound than eval.json's
        (folder / "nll_terms.csv").write_text((folder / "nll_terms.csv").read_text() + "51,0.001\n")
        said = (f"{LINEAR / 'nll_terms.csv'}: not the terms of the bound in {LINEAR / 'eval.json'} (another sha256: "
                "an interrupted `ddpm evaluate`); run `ddpm evaluate --beta-schedule linear` again")  # fmt: skip
    refused = invoke("compare", "linear", "cosine", "--set", "tracking.enabled=false", cwd=root)
    assert refused.exit_code == 2 and refused.stderr.strip() == f"ddpm: error: {said}", refused.output
