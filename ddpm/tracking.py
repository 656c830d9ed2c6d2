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
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ddpm.config import Config, TrackingConfig
from ddpm.errors import UserError
from ddpm.files import write_json

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
    """Write the run's id into `run_dir`, unless it is there already: a later stage that reopens
    the run must leave an earlier stage's output untouched."""
    if recorded_run(run_dir) == run_id:
        return
    write_json(run_dir / RUN_FILE, {"run_id": run_id, "experiment_id": experiment_id})


def _start_run(cfg: TrackingConfig, run_name: str, run_dir: Path, stage: str, tags: dict[str, str], run_id: str | None):  # noqa: ANN202
    """Make the run `run_id` the active one, or a new run called `run_name` if None (or if this
    store does not hold it); tag it and record its id in `run_dir`. Returns mlflow's ActiveRun."""
    import mlflow

    experiment_id = open_experiment(cfg)
    if run_id is not None and _run_missing(run_id):
        run_id = None  # recorded against another store: start a fresh run here
    run = mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=None if run_id else run_name)
    mlflow.set_tags({**tags, **_context_tags(stage)})
    record_run(run_dir, run.info.run_id, experiment_id)
    return run


@contextmanager
def stage_run(cfg: TrackingConfig, run_name: str, run_dir: Path, stage: str, tags: dict[str, str]) -> Iterator[str]:
    """Inside the block, `run_dir`'s MLflow run is the active one: the one recorded in `run_dir`,
    else a new run called `run_name`. Yields the run's id; the run ends with the block."""
    with _start_run(cfg, run_name, run_dir, stage, tags, recorded_run(run_dir)) as run:
        yield run.info.run_id


def schedule_run(cfg: TrackingConfig, schedule: str, run_dir: Path, stage: str):  # noqa: ANN201
    """`stage_run` for a schedule's stages: one run per schedule, named after it."""
    return stage_run(cfg, schedule, run_dir, stage, {"beta_schedule": schedule})


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
    tags = {f"stage.{stage}": os.environ.get("DVC_STAGE") or "ddpm " + stage}  # which stages wrote to the run
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


def flat_params(config: Config, sections: list[str]) -> dict[str, str]:
    """`section.key` → value for the named sections of `config`; the model's keys are resolved
    from its preset, so the run shows the architecture that was trained, not nulls."""
    params = {}
    for section in sections:
        values = getattr(config, section).model_dump(mode="json")
        if section == "model":
            values |= config.model.architecture(config.data.image_size)
        params |= {f"{section}.{key}": _show(value) for key, value in values.items()}
    return params


def _show(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value) if not isinstance(value, str) else value


def log_params(params: dict[str, str]) -> list[str]:
    """Log `params` to the active run. MLflow params cannot change, so one that the run already
    holds with another value (a stage rerun with new settings) is recorded as the tag
    `changed.<key>` instead; returns a line for each of those."""
    import mlflow

    run = mlflow.active_run()
    existing = mlflow.MlflowClient().get_run(run.info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in existing})
    changed = {k: v for k, v in params.items() if k in existing and existing[k] != v}
    mlflow.set_tags({f"changed.{k}": v for k, v in changed.items()})
    return [
        f"{k} is {v} now, {existing[k]} when MLflow run {run.info.run_id} logged it; the new value is in "
        f"the tag changed.{k}"
        for k, v in changed.items()
    ]


class MlflowTracker:
    """The training loop's Tracker (ddpm.train): one MLflow run per schedule, resumed with the
    checkpoint that recorded it. The loop calls `start` once its inputs are checked, before the
    first step, so a store that cannot be opened fails then. The run ends with the `with` block."""

    def __init__(self, config: Config, run_dir: Path) -> None:
        self.config, self.run_dir = config, run_dir
        self._run: Any = None

    def __enter__(self) -> "MlflowTracker":
        return self

    def start(self, run_id: str | None) -> str:
        schedule = self.config.diffusion.schedule
        tags = {"beta_schedule": schedule}
        self._run = _start_run(self.config.tracking, schedule, self.run_dir, "train", tags, run_id)
        for line in log_params(flat_params(self.config, ["data", "model", "diffusion", "train"])):
            print(f"ddpm: note: {line}", file=sys.stderr)  # the tracker has no other way to the user
        return self._run.info.run_id

    def log(self, step: int, metrics: dict[str, float]) -> None:
        import mlflow

        mlflow.log_metrics(metrics, step=step)

    def log_images(self, step: int, grid: np.ndarray) -> None:
        import mlflow

        mlflow.log_image(grid, key="samples", step=step)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        import mlflow

        from ddpm.train import Interrupted

        if self._run is not None:
            stopped = kind is not None and issubclass(kind, Interrupted)
            mlflow.end_run("FINISHED" if kind is None else "KILLED" if stopped else "FAILED")
