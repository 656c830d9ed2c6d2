"""Everything MLflow: where the store is, the runs, and what goes into them.

The runs follow MLflow's own structure:
- A parent run per trained model, opened by `train`: the data, model, diffusion and train params,
  the loss curve, sample grids along the way, train.json and the checkpoint. Its id is kept in
  the checkpoints (a resumed run continues it) and in runs/<schedule>/seed<k>/mlflow_run.json.
- A nested child run per sampling + evaluation configuration of that model (`sample` and
  `evaluate`): its sample.* and evaluate.* params, the samples' pictures, FID/KID with its interval,
  the likelihood bound. Rerunning the same configuration reuses its child; another configuration
  gets a new one. So two experiments' evaluations of one model are two rows whose params match
  their metrics. A `sweep` (FID against sampling steps) is a child of its own, kind "sweep".
- A `compare` run per comparison, linking the child runs it compared.

Tracking never kills a stage once its work has begun: each write is retried briefly, then kept
and sent later; what still cannot be sent is written to the run folder, and the next `ddpm`
command there replays it. Before the work, the store is opened and proved writable, in seconds.
The default store is a SQLite file at the repository root: DVC's root when DVC runs the stage (so
queued experiments, which run in temporary copies, share it), else the working directory.

Only this module imports mlflow, and only when tracking is on (`tracking.enabled`).
"""

import fcntl
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ddpm.config import BOOKKEEPING, Config, TrackingConfig
from ddpm.errors import UserError
from ddpm.files import write_json

RUN_FILE = "mlflow_run.json"  # in a model's folder: its parent run
EVAL_RUN_FILE = "mlflow_eval_run.json"  # beside eval.json: the child run that holds those scores
PENDING_FILE = "mlflow-pending.jsonl"  # in a run folder: writes that could not be sent, for the next command
KIND_TAG = "mlflow.experimentKind"  # MLflow 3 shows it as the experiment's kind ("Machine learning")
MODEL_TRAINING = "custom_model_development"
CHECK_TIMEOUT = 4  # seconds per HTTP request while the store is checked, with one retry: 8 s at most
WRITE_ATTEMPTS, WRITE_BACKOFF = 3, 1.0  # a write is tried this many times, waiting 1 s, 2 s in between
RETRY_KEPT_AFTER = 60.0  # seconds between tries of the kept writes
# MLflow's own HTTP settings while a stage writes (unless the user set them): its defaults retry a
# dead server for 4 minutes per request; a write here fails in under a minute and is kept instead
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "15", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0"}  # fmt: skip


def repository_root() -> Path:
    """Where the default store lives: DVC's root when DVC runs the stage, else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def tracking_uri(cfg: TrackingConfig) -> str:
    if cfg.uri:
        return cfg.uri
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repository_root() / 'mlflow.db'}"


def note(line: str) -> None:
    print(f"ddpm: note: {line}", file=sys.stderr)


class Store:
    """An MLflow store opened and proved writable, with the experiment `tracking.experiment` in it.
    Every write goes through `send`, which never raises."""

    def __init__(self, cfg: TrackingConfig) -> None:
        try:
            import mlflow
        except ImportError as e:  # a machine set up without it, such as the GPU proof's (bench/gpu/)
            raise UserError(
                f"tracking.enabled is true, but MLflow cannot be imported ({_first_line(e)}): pip install mlflow, "
                "or set tracking.enabled: false (--set tracking.enabled=false) to run without it"
            ) from None

        # MLflow's store logs its own tracebacks and table migrations; ddpm says in one line what failed
        logging.getLogger("mlflow.store").setLevel(logging.CRITICAL)
        self.uri = tracking_uri(cfg)
        http = self.uri.startswith(("http://", "https://"))
        if http:
            note(f"checking the MLflow server at {self.uri} (up to {2 * CHECK_TIMEOUT} s)")
        try:
            with _short_http_requests(http), _store_creation(self.uri):
                self.client = mlflow.MlflowClient(self.uri)
                self.experiment_id = self._experiment(cfg.experiment)
                # a write, the kind every stage makes, so that a read-only store fails now, not after the work
                self.client.set_experiment_tag(self.experiment_id, KIND_TAG, MODEL_TRAINING)
            self._check_artifacts()
        except UserError:
            raise
        except Exception as e:  # mlflow raises many kinds: bad scheme, no server, locked or read-only database ...
            raise UserError(
                f"cannot use the MLflow tracking store {self.uri} ({_first_line(e)}); set tracking.uri or "
                "MLFLOW_TRACKING_URI, or tracking.enabled: false to run without MLflow"
            ) from None
        self.kept: list[tuple[str, tuple]] = []  # writes that failed, in order, to send again
        self.retry_at = 0.0  # when to try the kept writes again
        self.dropped = 0  # writes the store refused
        self.warned = False

    def _experiment(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        artifacts = None
        if self.uri.startswith("sqlite:///"):  # artifacts beside the database, not in the working directory
            artifacts = Path(self.uri.removeprefix("sqlite:///")).parent.joinpath("mlartifacts").resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=artifacts)

    def _check_artifacts(self) -> None:
        location = self.client.get_experiment(self.experiment_id).artifact_location
        if not location.startswith("file:"):
            return  # a server's artifact store: the server writes it
        folder = Path(location.removeprefix("file://"))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as e:
            raise UserError(f"cannot write MLflow artifacts into {folder} ({e.strerror})") from None

    # --- writes that never stop the work ---------------------------------------------------------

    def send(self, operation: str, *args: Any) -> None:
        """Call client.`operation`(*args), retrying briefly. A write that still fails for a passing
        reason (no server, a locked database) is kept to send later, and later writes queue behind it
        so that the order is kept; one the store refuses outright is dropped, with a warning."""
        if self.kept and not self.flush():
            self.kept.append((operation, args))
            return
        try:
            self._call(operation, args)
        except Exception as e:
            if not _passing(e):
                self.dropped += 1
                self._warn(f"MLflow refused a write ({_first_line(e)}); it is lost, the work goes on")
                return
            self.kept.append((operation, args))
            self.retry_at = time.monotonic() + RETRY_KEPT_AFTER
            self._warn(f"MLflow write failed ({_first_line(e)}); the work goes on, and what cannot be logged "
                       "is kept and sent later")  # fmt: skip

    def _call(self, operation: str, args: tuple) -> None:
        for attempt in range(WRITE_ATTEMPTS):
            try:
                getattr(self.client, operation)(*args)
                return
            except Exception as e:
                if attempt == WRITE_ATTEMPTS - 1 or not _passing(e):
                    raise
                time.sleep(WRITE_BACKOFF * 2**attempt)

    def _warn(self, line: str) -> None:
        if not self.warned:
            self.warned = True
            print(f"ddpm: warning: {line}", file=sys.stderr)

    def flush(self, now: bool = False) -> bool:
        """Send the kept writes, in order (not more often than every RETRY_KEPT_AFTER seconds, so
        that an absent server does not slow the work down); whether none is left."""
        if self.kept and not now and time.monotonic() < self.retry_at:
            return False
        while self.kept:
            operation, args = self.kept[0]
            try:
                getattr(self.client, operation)(*args)
            except Exception as e:
                if _passing(e):
                    self.retry_at = time.monotonic() + RETRY_KEPT_AFTER
                    return False
                self.dropped += 1
            self.kept.pop(0)
        return True

    def close(self, folder: Path | None) -> None:
        """Send what was kept; what still cannot be sent goes to `folder`/PENDING_FILE for the next
        command there (or is lost without a folder). Says what happened, if anything went wrong."""
        lost = f"; {self.dropped} writes the store refused are lost" if self.dropped else ""
        if self.flush(now=True):
            if self.warned:
                print(f"ddpm: {'warning' if lost else 'note'}: all MLflow writes made it after a retry{lost}",
                      file=sys.stderr)  # fmt: skip
            return
        if folder is None:
            print(
                f"ddpm: warning: {len(self.kept)} MLflow writes could not be made and are lost{lost}", file=sys.stderr
            )
            return
        pending = folder / PENDING_FILE
        with open(pending, "a") as f:
            for operation, args in self.kept:
                f.write(json.dumps({"operation": operation, "args": _portable(args, folder)}) + "\n")
        print(f"ddpm: warning: {len(self.kept)} MLflow writes could not be made; kept in {pending}, for the next "
              f"ddpm command there to send{lost}", file=sys.stderr)  # fmt: skip

    def replay(self, folder: Path) -> None:
        """Send what an earlier command kept in `folder`/PENDING_FILE, and remove the file if all went."""
        pending = folder / PENDING_FILE
        if not pending.is_file():
            return
        entries = [json.loads(line) for line in pending.read_text().splitlines() if line.strip()]
        self.kept = [(e["operation"], _restored(e["args"])) for e in entries] + self.kept
        if self.flush(now=True):
            pending.unlink()
            note(f"sent {len(entries)} MLflow writes an earlier command had kept in {pending}")

    # --- runs --------------------------------------------------------------------------------------

    def exists(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:
            return False

    def new_run(self, name: str, tags: dict[str, str], parent: str | None = None) -> "Run":
        tags = {**tags, **({"mlflow.parentRunId": parent} if parent else {})}
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=name)
        return Run(self, run.info.run_id)

    def find_run(self, tags: dict[str, str]) -> "Run | None":
        """The newest run of the experiment with all of `tags`."""
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        found = self.client.search_runs([self.experiment_id], query, max_results=1, order_by=["start_time DESC"])
        return Run(self, found[0].info.run_id) if found else None


class Run:
    """One MLflow run; every write goes through the store's `send`."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store, self.id = store, run_id

    def log_params(self, params: dict[str, Any]) -> None:
        """Params that the run does not hold yet (MLflow params never change)."""
        from mlflow.entities import Param

        held = self.store.client.get_run(self.id).data.params
        new = [Param(k, _show(v)) for k, v in params.items() if k not in held]
        if new:
            self.store.send("log_batch", self.id, [], new, [])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if entries:
            self.store.send("log_batch", self.id, entries, [], [])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.store.send("log_batch", self.id, [], [], [RunTag(k, _show(v)) for k, v in tags.items() if v is not None])

    def log_artifacts(self, paths: list[Path], folder: str | None = None) -> None:
        for path in paths:
            self.store.send("log_artifacts" if path.is_dir() else "log_artifact", self.id, str(path), folder)

    def log_image(self, picture: np.ndarray, key: str, step: int) -> None:
        self.store.send("log_image", self.id, picture, None, key, step)

    def reopen(self) -> None:
        self.store.send("update_run", self.id, "RUNNING")

    def end(self, status: str = "FINISHED") -> None:
        self.store.send("set_terminated", self.id, status)


def open_store(cfg: TrackingConfig, folder: Path | None = None) -> Store | None:
    """The store, checked (None when tracking is off); with `folder`, after replaying what an
    earlier command kept there."""
    if not cfg.enabled:
        return None
    store = Store(cfg)
    if folder is not None:
        store.replay(folder)
    return store


# --- the runs of a model ---------------------------------------------------------------------------


def model_run(store: Store, name: str, run_dir: Path, run_id: str | None, tags: dict[str, str]) -> Run:
    """The parent run of the model trained in `run_dir`: `run_id` (a resumed checkpoint's) where this
    store holds it, else a new run called `name`. Its id is recorded in `run_dir`/RUN_FILE."""
    if store.exists(run_id):
        run = Run(store, run_id)
        run.reopen()
    else:
        run = store.new_run(name, {**tags, "ddpm.kind": "model", **context_tags("train")})
    write_json(run_dir / RUN_FILE, {"run_id": run.id, "experiment_id": store.experiment_id})
    return run


def parent_of(store: Store, checkpoint: Path, run_id: str | None, schedule: str) -> Run:
    """The parent run for samples of `checkpoint`: the run that trained it where this store holds
    it; else one run per checkpoint file (by its sha256), named after it, never another model's."""
    if store.exists(run_id):
        return Run(store, run_id)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    found = store.find_run({"ddpm.checkpoint_sha256": digest})
    if found:
        return found
    note(f"{checkpoint} was not trained into this MLflow store; its evaluations go under a run of its own")
    tags = {"ddpm.kind": "model", "ddpm.checkpoint": str(checkpoint.resolve()), "ddpm.checkpoint_sha256": digest}
    run = store.new_run(f"{checkpoint.parent.name}/{checkpoint.name}", {**tags, "beta_schedule": schedule})
    run.end()
    return run


def child_run(
    store: Store, parent: Run, params: dict[str, str], name: str, stage: str, kind: str = "evaluation"
) -> tuple[Run, bool]:
    """The nested run under `parent` for one configuration, defined by its `params` (which it holds):
    the same configuration reuses it, another gets a new one. Returns the run and whether it is new."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    found = store.find_run({"mlflow.parentRunId": parent.id, "ddpm.config": digest})
    if found:
        found.reopen()
        found.set_tags(context_tags(stage))
        return found, False
    tags = {"ddpm.config": digest, "ddpm.kind": kind, **context_tags(stage)}
    run = store.new_run(name, tags, parent=parent.id)
    run.log_params(params)
    return run, True


def evaluation_run(store: Store, origin: dict[str, Any], evaluate: dict[str, Any], stage: str) -> tuple[Run, bool]:
    """The child run of one sampling (`origin`: samples.json) and evaluation configuration, under the
    run of the model that drew the samples. Returns the run and whether it is new."""
    checkpoint = Path(origin["checkpoint"])
    parent = parent_of(store, checkpoint, origin["model_run_id"], origin["schedule"])
    sample = origin["sample"]
    chain = "DDPM" if sample["sampler"] == "ddpm" else f"DDIM {sample['ddim_steps']} steps"
    features = evaluate["feature_extractor"]
    features += f" ({evaluate['resize']} resize)" if features == "inception" else ""  # randconv does not resize
    name = f"{origin['schedule']}: {chain}, {sample['num_samples']} samples, {features}"
    params = {**flat_params(sample, "sample"), **flat_params(evaluate, "evaluate")}
    return child_run(store, parent, params, name, stage)


def sweep_run(store: Store, trained: Any, config: Config, results: dict[str, Any], out: Path) -> Run:
    """The child run of one sweep configuration under the model's run: FID against the number of
    sampling steps as the metric histories `<fid>_ddim` and `<fid>_ddpm`, the step count as MLflow's
    step (so its chart is the curve), and sweep.json."""
    schedule = trained.spec["schedule"]
    parent = parent_of(store, trained.path, trained.run_id, schedule)
    sample = config.sample.model_dump(mode="json", exclude={"sampler", "ddim_steps", "num_samples"})
    params = {**flat_params(config.sweep.model_dump(mode="json"), "sweep"), **flat_params(sample, "sample"),
              **flat_params(config.evaluate.model_dump(mode="json"), "evaluate")}  # fmt: skip
    name = f"{schedule}: sweep of sampling steps, {results['num_samples']} samples, {results['feature_extractor']}"
    run, _ = child_run(store, parent, params, name, "sweep", kind="sweep")
    metric = results["metric"]
    for sampler in ("ddim", "ddpm"):
        for steps, value in results[sampler].items():
            run.log_metrics({f"{metric}_{sampler}": value}, int(steps))
    run.log_artifacts([out])
    run.end()
    return run


class ModelTracker:
    """The training loop's Tracker (ddpm.train): the model's parent run. The loop calls `start` once
    its inputs and checkpoint are checked, so a store that cannot be used fails then, before the
    first step; the run ends with the `with` block: FINISHED, KILLED (a signal) or FAILED."""

    def __init__(self, config: Config, run_dir: Path) -> None:
        self.config, self.run_dir = config, run_dir
        self.store: Store | None = None
        self.run: Run | None = None

    def __enter__(self) -> "ModelTracker":
        return self

    def start(self, run_id: str | None) -> str:
        self.store = open_store(self.config.tracking, self.run_dir)
        schedule, seed = self.config.diffusion.schedule, self.config.train.seed
        tags = {"beta_schedule": schedule, "train_seed": str(seed)}
        self.run = model_run(self.store, f"{schedule}, seed {seed}", self.run_dir, run_id, tags)
        train = self.config.train.model_dump(mode="json")
        settings = {
            **flat_params(self.config.data.model_dump(mode="json"), "data"),
            **flat_params({k: v for k, v in self.config.arch().items() if k != "image_size"}, "model"),
            "model.preset": self.config.model.preset,
            **flat_params(self.config.diffusion.model_dump(), "diffusion"),
            **flat_params({k: v for k, v in train.items() if k not in BOOKKEEPING}, "train"),
        }
        self.run.log_params(settings)  # the same on every resume: a change of them starts another run
        self.run.set_tags(flat_params({k: v for k, v in train.items() if k in BOOKKEEPING}, "train"))
        return self.run.id

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log_metrics(metrics, step)

    def log_images(self, step: int, grid: np.ndarray) -> None:
        self.run.log_image(grid, "samples", step)

    def finish(self, result: Any, files: list[Path]) -> None:
        metrics = result.metrics()
        counts = {key: metrics.pop(key) for key in ("steps", "nonfinite_steps")}
        self.run.log_metrics(metrics, result.steps)
        self.run.set_tags(counts)
        self.run.log_artifacts(files, "train")

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        if self.run is None:
            return
        from ddpm.errors import Interrupted

        self.run.end("FINISHED" if kind is None else "KILLED" if issubclass(kind, Interrupted) else "FAILED")
        self.store.close(self.run_dir)


def compare_run(
    store: Store, names: list[str], rows: list[dict[str, Any]], files: list[Path], linked: dict[str, str]
) -> Run:
    """A `compare` run for this comparison: the table as metrics (`fid.linear`, ...), the report,
    and a tag per schedule naming the child run whose scores it compared."""
    experiment = os.environ.get("DVC_EXP_NAME")
    name = f"compare ({experiment})" if experiment else "compare"
    run = store.new_run(name, {"ddpm.kind": "compare", "schedules": ",".join(names), **context_tags("compare")})
    run.set_tags({f"compared.{schedule}": run_id for schedule, run_id in linked.items()})
    numbers = {
        f"{key}.{row['schedule']}": value for row in rows for key, value in row.items()
        if isinstance(value, float) and key != "schedule"
    }  # fmt: skip
    run.log_metrics(numbers)
    run.log_artifacts(files, "report")
    run.end()
    return run


def recorded_run(run_dir: Path) -> str | None:
    """The id of the parent run recorded in `run_dir`, if any."""
    try:
        return json.loads((run_dir / RUN_FILE).read_text())["run_id"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return None


def context_tags(stage: str) -> dict[str, str]:
    """Where the numbers came from: the git commit, and the DVC stage and experiment when DVC runs us."""
    tags = {f"stage.{stage}": os.environ.get("DVC_STAGE") or "ddpm " + stage}
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


def flat_params(values: dict[str, Any], section: str) -> dict[str, str]:
    """`section.key` → value, as MLflow shows it."""
    return {f"{section}.{key}": _show(value) for key, value in values.items()}


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(list(value) if isinstance(value, tuple) else value)


def _passing(error: Exception) -> bool:
    """Whether a failed write may succeed later: the store was away or busy, not refusing it."""
    code = getattr(error, "error_code", None)
    return code is None or code in ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


@contextmanager
def _short_http_requests(http: bool) -> Iterator[None]:
    """While the store is checked, HTTP requests time out after CHECK_TIMEOUT s with one retry and no
    backoff; after it, HTTP_SETTINGS hold. The user's own settings of these variables win."""
    if not http:
        yield
        return
    for key, value in HTTP_SETTINGS.items():
        os.environ.setdefault(key, value)
    check = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(CHECK_TIMEOUT), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
             "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}  # fmt: skip
    ours = {k: v for k, v in check.items() if os.environ[k] == HTTP_SETTINGS[k]}
    saved = {k: os.environ[k] for k in ours}
    os.environ.update(ours)
    try:
        yield
    finally:
        os.environ.update(saved)


@contextmanager
def _store_creation(uri: str) -> Iterator[None]:
    """Serialise opening a SQLite store, so that two processes never create (migrate) the same new
    database at once; and say where a new one is."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(database.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # released when this process ends, however it ends
        new = not database.exists()
        yield
        if new:
            note(
                f"created the MLflow store {database} (artifacts beside it); `mlflow ui` there shows it, "
                "under 'Model training'"
            )
    finally:
        os.close(folder)


ENTITY_FIELDS = {"Metric": ("key", "value", "timestamp", "step"), "Param": ("key", "value"), "RunTag": ("key", "value")}


def _portable(args: tuple, folder: Path) -> list:
    """Arguments as JSON: MLflow entities as dicts, pictures saved as .npy files beside the pending file."""
    out = []
    for arg in args:
        if isinstance(arg, np.ndarray):
            path = folder / f".mlflow-pending-{hashlib.sha256(arg.tobytes()).hexdigest()[:12]}.npy"
            np.save(path, arg)
            out.append({"array": str(path)})
        elif isinstance(arg, list):  # Metric, Param and RunTag entities of a log_batch
            out.append([{"entity": type(e).__name__, **{k: getattr(e, k) for k in ENTITY_FIELDS[type(e).__name__]}}
                        for e in arg])  # fmt: skip
        else:
            out.append(arg)
    return out


def _restored(args: list) -> tuple:
    from mlflow import entities

    restored = []
    for arg in args:
        if isinstance(arg, dict) and "array" in arg:
            restored.append(np.load(arg["array"]))
        elif isinstance(arg, list):
            restored.append([getattr(entities, e.pop("entity"))(**e) for e in arg])
        else:
            restored.append(arg)
    return tuple(restored)
