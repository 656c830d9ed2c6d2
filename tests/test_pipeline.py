"""The whole pipeline through real DVC, as the README runs it: the offline preset in a fresh copy
of the repository, then MLflow read back through a real `mlflow server`, a params change that must
not retrain, and a queued experiment that must land in the same store."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCHEDULES = ["linear", "cosine"]
STAGES = ["download", "prepare", *(f"{s}@{x}" for s in ("train", "sample", "evaluate") for x in SCHEDULES), "compare"]

pytestmark = pytest.mark.slow


def environment(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    identity = {"GIT_AUTHOR_NAME": "ddpm tests", "GIT_AUTHOR_EMAIL": "tests@ddpm.invalid"}
    identity |= {"GIT_COMMITTER_NAME": "ddpm tests", "GIT_COMMITTER_EMAIL": "tests@ddpm.invalid"}
    return env | identity | {"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "HOME": str(root.parent / "home")}


def sh(command: str, root: Path, timeout: float = 900) -> str:
    """Run a shell command in `root`; its output, or a failure that shows it."""
    done = subprocess.run(
        command, shell=True, cwd=root, env=environment(root), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A fresh git repository holding this one's files, with the offline preset run in it."""
    root = tmp_path_factory.mktemp("pipeline") / "ddpm"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes((ROOT / name).read_bytes())
    (root.parent / "home").mkdir()
    sh("git init -q && git add -A && git commit -qm 'the project'", root)
    readme = (ROOT / "README.md").read_text()
    command = "bash pipeline/offline.sh"
    assert f"\n{command}" in readme  # the README's command is the one run here
    return root, sh(command, root)


def test_the_offline_preset_runs_every_stage_and_writes_every_output(project: tuple[Path, str]) -> None:
    root, output = project
    assert ran(output) == set(STAGES)
    outputs = ["data/prepared/images.npy", "reports/compare/report.md", "reports/compare/samples.png", "dvc.lock"]
    for schedule in SCHEDULES:
        outputs += [f"runs/{schedule}/{name}" for name in ("model.pt", "train.json", "losses.csv", "eval.json")]
        outputs += [f"runs/{schedule}/samples/{name}" for name in ("samples.npy", "grid.png", "progression.gif")]
    assert [name for name in outputs if not (root / name).is_file()] == []
    metrics = json.loads((root / "runs" / "cosine" / "eval.json").read_text())
    assert metrics["feature_extractor"] == "randconv" and "fid" not in metrics and metrics["num_samples"] == 200
    assert "Data and pipelines are up to date." in sh("dvc status", root)
    shown = sh("dvc metrics show --json", root)
    assert "fid_randconv" in shown and "final_loss" in shown


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rest(base: str, path: str, body: dict | None = None) -> dict:
    """One call of MLflow's REST API: GET with query parameters, or POST with a JSON body."""
    if body is None:
        request = urllib.request.Request(base + path)
    else:
        request = urllib.request.Request(
            base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_mlflow_server_shows_one_run_per_schedule_with_params_losses_metrics_and_grids(
    project: tuple[Path, str],
) -> None:
    root, _ = project
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=root, env=environment(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow/"
    try:
        for _ in range(240):  # the server takes a few seconds to come up
            try:
                experiment = rest(base, "experiments/get-by-name?experiment_name=ddpm-flowers")["experiment"]
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer within 2 minutes")
        runs = rest(base, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
        by_name = {run["info"]["run_name"]: run for run in runs}
        assert set(by_name) == {*SCHEDULES, "compare"}
        for schedule in SCHEDULES:
            run = by_name[schedule]
            run_id = run["info"]["run_id"]
            assert json.loads((root / "runs" / schedule / "mlflow_run.json").read_text())["run_id"] == run_id
            params = {p["key"]: p["value"] for p in run["data"]["params"]}
            assert params["diffusion.schedule"] == schedule and params["train.steps"] == "1000"
            assert params["model.preset"] == "tiny" and params["evaluate.feature_extractor"] == "randconv"
            tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
            assert tags["beta_schedule"] == schedule and tags["stage.train"] == f"train@{schedule}"
            assert tags["dvc_experiment"] and len(tags["git_commit"]) == 40
            metrics = {m["key"] for m in run["data"]["metrics"]}
            assert {"fid_randconv", "kid_randconv_mean", "kid_randconv_std", "final_loss"} <= metrics
            query = urllib.parse.urlencode({"run_id": run_id, "metric_key": "train/loss"})
            history = rest(base, f"metrics/get-history?{query}")["metrics"]
            assert [m["step"] for m in history] == list(range(50, 1001, 50))
            listed = rest(base, "artifacts/list?" + urllib.parse.urlencode({"run_id": run_id, "path": "samples"}))
            assert "samples/grid.png" in {f["path"] for f in listed["files"]}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def test_a_sample_param_change_resamples_without_retraining(project: tuple[Path, str]) -> None:
    root, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["sample"]["seed"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = sh("dvc repro", root)
    assert ran(output) == {f"{s}@{x}" for s in ("sample", "evaluate") for x in SCHEDULES} | {"compare"}
    assert "Stage 'train@linear' didn't change, skipping" in output


def test_a_queued_experiment_lands_in_the_same_mlflow_store(project: tuple[Path, str]) -> None:
    import mlflow

    root, _ = project
    sh("dvc exp run --queue --name queued -S evaluate.kid_subsets=10", root)
    sh("dvc queue start", root)
    for _ in range(600):
        status = sh("dvc queue status", root)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(1)
    assert "Success" in status, status
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ddpm-flowers")
    queued = client.search_runs([experiment.experiment_id], "tags.dvc_experiment = 'queued'")
    assert {run.info.run_name for run in queued} == {*SCHEDULES, "compare"}
    for run in queued:
        if run.info.run_name in SCHEDULES:  # its setting, as a param or (reopened run) as a changed one
            assert run.data.tags.get("changed.evaluate.kid_subsets", run.data.params["evaluate.kid_subsets"]) == "10"
            assert "kid_randconv_mean" in run.data.metrics
    assert not list((root / ".dvc" / "tmp").rglob("mlflow.db"))  # no store of its own in the temporary copy
