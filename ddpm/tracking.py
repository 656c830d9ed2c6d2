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

Before a command's work, the store is opened and proved writable, in seconds, and what an earlier
command kept in the run folder is sent; a store that cannot be used stops the command there, in one
line. After that, every MLflow call goes through the command's outbox (ddpm.outbox), the queries that
pick a write's run included, and none can stop the work. The default store is a SQLite file at the
repository root: DVC's root when DVC runs the stage (so queued experiments, which run in temporary
copies, share it), else the working directory, whatever its name (ddpm.store_uri).

Only this module and ddpm.outbox import mlflow, and only when tracking is on (`tracking.enabled`).
"""

import hashlib
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ddpm.config import BOOKKEEPING, Config, TrackingConfig
from ddpm.errors import Interrupted, UserError
from ddpm.files import write_json
from ddpm.layout import MLFLOW_EVAL_RUN, MLFLOW_RUN, NLL_TERMS, RunFolder, sample_pictures
from ddpm.outbox import Operations, Outbox, Run, first_line, note, show
from ddpm.result_keys import sampler_key
from ddpm.spacing import sampling_name
from ddpm.store_uri import local_folder, repository_root, sqlite_database, store_creation, tracking_uri

KIND_TAG = "mlflow.experimentKind"  # MLflow 3 shows it as the experiment's kind ("Machine learning")
MODEL_TRAINING = "custom_model_development"
KIND = "ddpm.kind"
RUN_NAME = "mlflow.runName"  # the tag that MLflow's stores keep as the run's name
LR_METRIC = "train/lr_times_1e4"  # the learning rate in units of 1e-4, as MLflow's charts can show it
INCEPTION_ONLY = {"inception_weights", "inception_checksum", "resize"}  # evaluate.* that randconv never reads
CHECK_TIMEOUT = 4  # seconds per HTTP request while the store is checked, with one retry: 8 s at most
# MLflow's own HTTP settings while a stage writes (unless the user set them): its defaults retry a
# dead server for 4 minutes per request; a write here fails in under a minute and is kept instead
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "15", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0"}  # fmt: skip


class Store:
    """An MLflow store opened and proved writable, with the experiment `tracking.experiment` in it;
    after that, every call goes through `outbox`, which never raises."""

    def __init__(self, cfg: TrackingConfig) -> None:
        try:
            import mlflow
        except ImportError as e:  # a machine set up without it, such as the GPU proof's (bench/gpu/)
            raise UserError(
                f"tracking.enabled is true, but MLflow cannot be imported ({first_line(e)}): pip install mlflow, "
                "or set tracking.enabled: false (--set tracking.enabled=false) to run without it"
            ) from None

        # MLflow's store logs its own tracebacks and table migrations; ddpm says in one line what failed
        logging.getLogger("mlflow.store").setLevel(logging.CRITICAL)
        self.uri = tracking_uri(cfg)
        http = self.uri.startswith(("http://", "https://"))
        if http:
            note(f"checking the MLflow server at {self.uri} (up to {2 * CHECK_TIMEOUT} s)")
        with _unusable(self.uri):
            with _short_http_requests(http), store_creation(self.uri):
                self.client = mlflow.MlflowClient(self.uri)
                self.experiment_id = self._experiment(cfg.experiment)
                # a write, the kind every stage makes, so that a read-only store fails now, not after the work
                self.client.set_experiment_tag(self.experiment_id, KIND_TAG, MODEL_TRAINING)
            self._check_artifacts()
        self.operations = Operations(self.client, self.experiment_id)
        self.outbox = Outbox(self.operations)

    def _experiment(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        database, artifacts = sqlite_database(self.uri), None
        if database is not None:  # artifacts beside the database, not in the working directory
            artifacts = database.parent.joinpath("mlartifacts").resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=artifacts)

    def _check_artifacts(self) -> None:
        folder = local_folder(self.client.get_experiment(self.experiment_id).artifact_location)
        if folder is None:
            return  # a server's artifact store: the server writes it
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as e:
            raise UserError(f"cannot write MLflow artifacts into {folder} ({e.strerror})") from None


@contextmanager
def _unusable(uri: str) -> Iterator[None]:
    """MLflow's errors in the block as the one-line error of a store that cannot be used (before the work)."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # mlflow raises many kinds: bad scheme, no server, locked or read-only database ...
        raise UserError(
            f"cannot use the MLflow tracking store {uri} ({first_line(e)}); set tracking.uri or "
            "MLFLOW_TRACKING_URI, or tracking.enabled: false to run without MLflow"
        ) from None


def open_store(cfg: TrackingConfig, folder: Path | None = None) -> Store | None:
    """The store, checked (None when tracking is off); with `folder`, after replaying what an
    earlier command kept there."""
    if not cfg.enabled:
        return None
    store = Store(cfg)
    if folder is not None:
        store.outbox.replay(folder)
    return store


class Session:
    """The store of one command: opened by `open` once the command's inputs are checked (the stages
    take it as their `ready` callback), so that a store that cannot be used fails before the work,
    not after it; closed when the `with tracking.session(...)` block ends. `store` stays None
    when tracking is off or the block ended before `open`."""

    def __init__(self, cfg: TrackingConfig, folder: Path | None) -> None:
        self.cfg, self.folder = cfg, folder
        self.store: Store | None = None

    def open(self, *_: Any) -> None:
        if self.store is None and self.cfg.enabled:
            self.store = open_store(self.cfg, self.folder)


@contextmanager
def session(cfg: TrackingConfig, folder: Path | None) -> Iterator[Session]:
    """A Session for one command; what could not be sent when it ends is kept in `folder` (see
    Outbox.close), the run folder whose next command sends it."""
    tracked = Session(cfg, folder)
    try:
        yield tracked
    finally:
        if tracked.store is not None:
            tracked.store.outbox.close(folder)


# --- the runs of a model ---------------------------------------------------------------------------


def model_run(store: Store, name: str, run_dir: Path, run_id: str | None, tags: dict[str, str]) -> Run:
    """The parent run of the model trained in `run_dir`: `run_id` (a resumed checkpoint's) where this
    store holds it, else a new run called `name`. Made at once, as training starts, right after the
    store was checked (so a failure is a one-line error before the first step): its id goes into the
    checkpoints and `run_dir`/MLFLOW_RUN."""
    with _unusable(store.uri):
        made = store.operations.model_run(run_id, name, {**tags, KIND: "model", **context_tags("train")})
    write_json(run_dir / MLFLOW_RUN, {"run_id": made, "experiment_id": store.experiment_id})
    return Run(store.outbox, made)


def parent_of(store: Store, checkpoint: Path, run_id: str | None, schedule: str) -> Run:
    """The parent run for samples of `checkpoint`: the run that trained it where this store holds
    it; else one run per checkpoint file (by its sha256), named after it, never another model's."""
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    tags = {KIND: "model", "ddpm.checkpoint": str(checkpoint.resolve()), "beta_schedule": schedule}
    name = f"{checkpoint.parent.name}/{checkpoint.name}"
    return store.outbox.run_from("checkpoint_run", run_id, {"ddpm.checkpoint_sha256": digest}, name, tags)


def child_run(
    store: Store, parent: Run, params: dict[str, str], name: str, stage: str, kind: str = "evaluation",
    renames: bool = False,
) -> Run:  # fmt: skip
    """The nested run under `parent` for one configuration, defined by its `params` (which it holds):
    the same configuration reuses it, another gets a new one, called `name`; `renames`: a reused
    one is called `name` too."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    tags = {KIND: kind, **context_tags(stage), **({RUN_NAME: name} if renames else {})}
    return store.outbox.run_from("child_run", parent.ref, {"ddpm.config": digest}, name, tags, params)


def evaluation_run(store: Store, origin: dict[str, Any], evaluate: dict[str, Any], stage: str) -> Run:
    """The child run of one sampling (`origin`: samples.json) and evaluation configuration, under the
    run of the model that drew the samples. `sample` names it after the sampling alone; `evaluate`
    adds the feature extractor, which only then has been used."""
    checkpoint = Path(origin["checkpoint"])
    run_name = origin.get("variant", origin["schedule"])
    parent = parent_of(store, checkpoint, origin["model_run_id"], run_name)
    sample = origin["sample"]
    chain = sampling_name(sample)
    clipping = f", clip {sample['clip_mode']}" if "clip_mode" in sample else ""  # samplings may differ by it alone
    name = f"{run_name}: {chain}{clipping}, {sample['num_samples']} samples"
    if stage == "evaluate":
        features = evaluate["feature_extractor"]
        features += f" ({evaluate['resize']} resize)" if features == "inception" else ""  # randconv does not resize
        name += f", {features}"
    params = {**flat_params(sample, "sample"), **evaluate_params(evaluate)}
    return child_run(store, parent, params, name, stage, renames=stage == "evaluate")


def log_samples(store: Store, origin: dict[str, Any], evaluate: dict[str, Any], folder: Path) -> None:
    """The pictures of the samples in `folder` into the child run of their sampling configuration."""
    run = evaluation_run(store, origin, evaluate, "sample")
    run.log_artifacts(sample_pictures(folder), "samples")
    run.end()


def log_evaluation(
    store: Store, origin: dict[str, Any], evaluate: dict[str, Any], metrics: dict[str, Any], samples: Path, out: Path
) -> None:
    """The scores into the child run of this sampling (`origin`: samples.json) and evaluation
    configuration, with the pictures of the samples in `samples`, eval.json and the likelihood's terms
    beside it; and the run's id in mlflow_eval_run.json beside them, for `ddpm compare`: null until
    the run is made (the file is a DVC output), which may be in a later command, if the store is away."""
    run = evaluation_run(store, origin, evaluate, "evaluate")
    run.log_artifacts([p for p in sample_pictures(samples) if p.is_file()], "samples")
    numbers = {k: v for k, v in metrics.items() if isinstance(v, float)}
    run.log_metrics(numbers)
    run.set_tags({k: v for k, v in metrics.items() if k not in numbers})  # counts and names: not metrics
    run.log_artifacts([out, out.parent / NLL_TERMS])
    run.end()
    record = out.parent / MLFLOW_EVAL_RUN
    write_json(record, {"run_id": None})
    store.outbox.send("record_run", str(record.resolve()), run.ref)


def sweep_run(store: Store, trained: Any, config: Config, results: dict[str, Any], out: Path) -> Run:
    """The child run of one sweep configuration under the model's run: FID against the number of
    network evaluations as a metric history per sampler, `<fid>_ddim`, `<fid>_dpmsolverpp` (MLflow
    refuses "+") and `<fid>_ddpm`, the NFE as MLflow's step (so its chart is the curve), and sweep.json."""
    schedule = trained.name
    parent = parent_of(store, trained.path, trained.run_id, schedule)
    sample = config.sample.model_dump(mode="json", exclude={"sampler", "steps", "num_samples"})
    params = {**flat_params(config.sweep.model_dump(mode="json"), "sweep"), **flat_params(sample, "sample"),
              **evaluate_params(config.evaluate.model_dump(mode="json"))}  # fmt: skip
    name = f"{schedule}: sweep of sampling steps, {results['num_samples']} samples, {results['feature_extractor']}"
    run = child_run(store, parent, params, name, "sweep", kind="sweep")
    metric = results["metric"]
    for sampler in (*results["samplers"], "ddpm"):
        for steps, value in results[sampler].items():
            run.log_metrics({f"{metric}_{sampler_key(sampler)}": value}, int(steps))
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
        schedule, seed = self.config.run_name, self.config.train.seed
        tags = {"beta_schedule": self.config.diffusion.schedule, "train_seed": str(seed)}
        tags |= {"variant": schedule} if self.config._variant else {}
        name = f"{schedule}, seed {seed}"
        if self.run_dir.resolve() != RunFolder.of(schedule, seed).path.resolve():  # --out: not the run of record
            name = f"{name}, {self.run_dir}"
        self.run = model_run(self.store, name, self.run_dir, run_id, tags)
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
        if "train/lr" in metrics:  # MLflow 3.17 draws a flat 1e-3 as "0" on a ±0.5 axis; 10 reads
            metrics = {**metrics, LR_METRIC: metrics["train/lr"] * 1e4}
            del metrics["train/lr"]
        self.run.log_metrics(metrics, step)

    def log_images(self, step: int, grid: np.ndarray) -> None:
        self.run.log_image(grid, "samples", step)

    def finish(self, result: Any, files: list[Path]) -> None:
        metrics = result.metrics()
        # the steps are the train.steps tag's (training ends only there): one name for them
        del metrics["steps"]
        nonfinite = metrics.pop("nonfinite_steps")  # a count: a tag
        self.run.log_metrics(metrics, result.steps)
        self.run.set_tags({"nonfinite_steps": nonfinite})
        self.run.log_artifacts(files, "train")

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        if self.run is None:
            return
        self.run.end("FINISHED" if kind is None else "KILLED" if issubclass(kind, Interrupted) else "FAILED")
        self.store.outbox.close(self.run_dir)


def compare_run(
    store: Store, names: list[str], rows: list[dict[str, Any]], files: list[Path], linked: dict[str, str]
) -> Run:
    """A `compare` run for this comparison: the table as metrics (`fid.linear`, ...), the report,
    and a tag per schedule naming the child run whose scores it compared."""
    experiment = os.environ.get("DVC_EXP_NAME")
    name = f"compare ({experiment})" if experiment else "compare"
    tags = {KIND: "compare", "schedules": ",".join(names), **context_tags("compare")}
    run = store.outbox.run_from("new_run", name, tags)
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
        return json.loads((run_dir / MLFLOW_RUN).read_text())["run_id"]
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
    return {f"{section}.{key}": show(value) for key, value in values.items()}


def evaluate_params(evaluate: dict[str, Any]) -> dict[str, str]:
    """The evaluate.* params that the feature extractor reads: randconv reads no INCEPTION_ONLY key,
    so a run of it shows none (their defaults would read as if Inception had scored it)."""
    used = evaluate["feature_extractor"] == "inception"
    return flat_params({k: v for k, v in evaluate.items() if used or k not in INCEPTION_ONLY}, "evaluate")


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
