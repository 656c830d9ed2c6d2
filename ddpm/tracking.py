"""Everything MLflow: where the store is, one run per beta schedule, and what goes into it.

Every stage of a schedule (train, sample, evaluate) logs to the same MLflow run, so one row of the
MLflow UI holds that schedule's params, loss curve, FID/KID and sample grids. The run's id is kept
in the schedule's folder (`RUN_FILE`), written by the stage that opened the run, and read by the
stages after it. The store defaults to a SQLite file at the repository root, `DVC_ROOT` when DVC
runs the stage (so that queued experiments, which run in temporary copies, share it), else the
working directory; `tracking.uri` or $MLFLOW_TRACKING_URI override it.

Only this module imports mlflow, and only the stage commands call it.
"""

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ddpm.config import TrackingConfig
from ddpm.errors import UserError
from ddpm.files import atomic_output

RUN_FILE = "mlflow_run.json"


def repository_root() -> Path:
    """Where the default store lives: DVC's root when DVC runs the stage, else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def tracking_uri(cfg: TrackingConfig) -> str:
    if cfg.uri:
        return cfg.uri
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repository_root() / 'mlflow.db'}"


def open_experiment(cfg: TrackingConfig) -> str:
    """Connect to the store and return the experiment's id, creating it (artifacts beside a SQLite
    store) if needed. Fails with a clear message, before any work is done, if the store cannot be opened."""
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient()
        experiment = client.get_experiment_by_name(cfg.experiment)
        if experiment is not None:
            return experiment.experiment_id
        artifacts = None
        if uri.startswith("sqlite:///"):
            artifacts = Path(uri.removeprefix("sqlite:///")).parent.joinpath("mlartifacts").resolve().as_uri()
        return client.create_experiment(cfg.experiment, artifact_location=artifacts)
    except Exception as e:  # mlflow raises many kinds: bad scheme, unreachable server, locked database ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot open the MLflow tracking store {uri} ({reason}); set tracking.uri or MLFLOW_TRACKING_URI"
        ) from None


def recorded_run(run_dir: Path) -> str | None:
    """The id of the MLflow run recorded in `run_dir`, if any."""
    try:
        return json.loads((run_dir / RUN_FILE).read_text())["run_id"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return None


def record_run(run_dir: Path, run_id: str, experiment_id: str) -> None:
    with atomic_output(run_dir / RUN_FILE) as tmp:
        tmp.write_text(json.dumps({"run_id": run_id, "experiment_id": experiment_id}, indent=2) + "\n")


@contextmanager
def stage_run(
    cfg: TrackingConfig, run_name: str, run_dir: Path, stage: str, tags: dict[str, str], run_id: str | None = None
) -> Iterator[str]:
    """Inside the block, `run_dir`'s MLflow run is the active one: `run_id` if given, else the one
    recorded in `run_dir`, else a new run called `run_name` (then recorded in `run_dir`). Tagged with
    `tags`, the stage and where the numbers come from. Yields the run's id."""
    import mlflow

    experiment_id = open_experiment(cfg)
    run_id = run_id or recorded_run(run_dir)
    if run_id is not None and _run_missing(run_id):
        run_id = None  # recorded against another store: start a fresh run here
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=None if run_id else run_name) as run:
        mlflow.set_tags({**tags, **_context_tags(stage)})
        record_run(run_dir, run.info.run_id, experiment_id)
        yield run.info.run_id


def schedule_run(cfg: TrackingConfig, schedule: str, run_dir: Path, stage: str, run_id: str | None = None):  # noqa: ANN201
    """`stage_run` for a schedule's stages: one run per schedule, named after it."""
    return stage_run(cfg, schedule, run_dir, stage, {"beta_schedule": schedule}, run_id)


def _run_missing(run_id: str) -> bool:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        return True
    return False


def _context_tags(stage: str) -> dict[str, str]:
    """Where the numbers came from: the git commit, and the DVC stage and experiment when DVC runs us."""
    tags = {f"stage.{stage}": "done"}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=repository_root()
        )
        if commit.returncode == 0:
            tags["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    if os.environ.get("DVC_STAGE"):
        tags["dvc_stage"] = os.environ["DVC_STAGE"]
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    return tags


def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
    """The numeric entries of `metrics` to the active run (strings go in as tags)."""
    import mlflow

    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    mlflow.log_metrics(numbers, step=step)
    mlflow.set_tags({k: str(v) for k, v in metrics.items() if k not in numbers and v is not None})


def log_artifacts(paths: list[Path], folder: str | None = None) -> None:
    """Files (or folders) to the active run's artifacts, under `folder`."""
    import mlflow

    for path in paths:
        if path.is_dir():
            mlflow.log_artifacts(str(path), folder)
        else:
            mlflow.log_artifact(str(path), folder)
