"""Where everything lives: the folders the stages share and the name of every file they write and read.

This module is the one owner of those names: every writer and every reader asks it, and no other
module of ddpm spells one out (tests/test_layout.py checks that). A trained model's folder is

    runs/<schedule>/seed<train.seed>/
        model.pt            the final weights and their description       ddpm train
        checkpoints/        step-00005000.pt, ...: resumable states
        train.json          the run's numbers; losses.csv its loss curve, quality.csv FID and KID along it
        mlflow_run.json     the MLflow run of the model (tracking on)
        samples/            samples.npy, samples.json, grid.png, progression.png/.gif   ddpm sample
        eval.json           FID, KID, bits/dim; nll_terms.csv; resamples.npz; mlflow_eval_run.json  ddpm evaluate
        sweep.json          FID against sampling steps                    ddpm sweep
        mlflow-pending.jsonl  MLflow writes kept for the next command there (ddpm.pending),
        .mlflow-pending-*     with the pictures and copies of files that they upload
"""

import re
from dataclasses import dataclass
from pathlib import Path

# --- the shared folders (relative to the repository, where the commands run) -----------------------
RAW = Path("data/raw")  # ddpm download
PREPARED = Path("data/prepared")  # ddpm prepare
FEATURE_CACHE = Path("data/features")  # the real images' features, per dataset, extractor and resize
RUNS = Path("runs")  # one folder per trained model
COMPARE_REPORT = Path("reports/compare")
SCHEDULES_REPORT = Path("reports/schedules")

# --- data/ ------------------------------------------------------------------------------------------
SOURCE = "source.json"  # in the download folder: which source it holds
EXTRACTED = {"flowers102": "flowers102", "cifar10": "cifar10"}  # in the download folder: each archive's contents
IMAGES = "images.npy"  # the prepared training images, uint8 (N, 3, H, W)
HOLDOUT = "holdout.npy"  # the images kept out of training, for the likelihood
MANIFEST = "manifest.json"  # what images.npy and holdout.npy are: counts, sha256s, skipped files
TRAINING_IMAGES = PREPARED / IMAGES
HELD_OUT_IMAGES = PREPARED / HOLDOUT

# --- a run folder ----------------------------------------------------------------------------------
MODEL = "model.pt"
CHECKPOINTS = "checkpoints"
TRAIN_METRICS = "train.json"
LOSSES = "losses.csv"
QUALITY = "quality.csv"  # FID_N and KID of EMA samples at train.eval_every steps (ddpm.quality)
SAMPLES = "samples"  # the folder of `ddpm sample`'s output
SAMPLES_ARRAY = "samples.npy"
SAMPLES_ORIGIN = "samples.json"  # beside samples.npy: the model and settings that drew them
GRID = "grid.png"
PROGRESSION_PICTURE = "progression.png"
PROGRESSION_GIF = "progression.gif"
PICTURES = (GRID, PROGRESSION_PICTURE, PROGRESSION_GIF)  # what MLflow gets of a sample folder
EVAL_METRICS = "eval.json"
NLL_TERMS = "nll_terms.csv"  # beside eval.json: the likelihood bound's term at each timestep
RESAMPLES = "resamples.npz"  # beside eval.json: each bootstrap resample's statistic, each held-out image's bpd
SWEEP = "sweep.json"
MLFLOW_RUN = "mlflow_run.json"  # the model's parent run
MLFLOW_EVAL_RUN = "mlflow_eval_run.json"  # beside eval.json: the child run that holds those scores
MLFLOW_PENDING = "mlflow-pending.jsonl"  # writes that could not be sent, for the next command there
# the files of a run folder whose MLflow uploads may wait in its pending file (nothing else is uploaded from it)
PENDING_UPLOADS = (MODEL, TRAIN_METRICS, LOSSES, QUALITY, *PICTURES, EVAL_METRICS, NLL_TERMS, SWEEP)
PENDING_PICTURE = re.compile(r"\.mlflow-pending-(?P<digest>[0-9a-f]{12})\.npy")  # `pending_picture`'s names
PENDING_COPY = re.compile(r"\.mlflow-pending-[0-9a-f]{12}")  # the folders of `pending_copy`
STEP_FILE = re.compile(r"step-(\d+)\.pt")

# --- the comparison report -------------------------------------------------------------------------
REPORT = "report.md"
COMPARISON_JSON = "comparison.json"
COMPARISON_CSV = "comparison.csv"
SCORES = "scores.csv"  # FID per schedule, its column named as the metric is, for DVC's bar plot
LOSS_CURVES = "losses.csv"  # every run's losses.csv in one, a `run` column apart, for DVC's overlaid plot
SCHEDULES_PICTURE = "schedules.png"
FORWARD_PICTURE = "forward.png"
NLL_TERMS_PICTURE = "nll_terms.png"
SWEEP_PICTURE = "sweep.png"
LOSSES_PICTURE = "losses.png"
QUALITY_PICTURE = "quality.png"
SAMPLES_PICTURE = "samples.png"
NEAREST_PICTURE = "nearest.png"  # the samples closest to a training image, each above it


@dataclass(frozen=True)
class RunFolder:
    """The folder of one trained model, and the path of each file in it."""

    path: Path

    @classmethod
    def of(cls, schedule: str, seed: int, runs: Path = RUNS) -> "RunFolder":
        """runs/<schedule>/seed<seed>: the model of this schedule and training seed."""
        return cls(runs / schedule / f"seed{seed}")

    @property
    def model(self) -> Path:
        return self.path / MODEL

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def train_metrics(self) -> Path:
        return self.path / TRAIN_METRICS

    @property
    def losses(self) -> Path:
        return self.path / LOSSES

    @property
    def quality(self) -> Path:
        return self.path / QUALITY

    @property
    def samples(self) -> Path:
        """The folder `ddpm sample` writes by default."""
        return self.path / SAMPLES

    @property
    def samples_array(self) -> Path:
        return self.samples / SAMPLES_ARRAY

    @property
    def samples_origin(self) -> Path:
        return self.samples / SAMPLES_ORIGIN

    @property
    def grid(self) -> Path:
        return self.samples / GRID

    @property
    def eval_metrics(self) -> Path:
        return self.path / EVAL_METRICS

    @property
    def nll_terms(self) -> Path:
        return self.path / NLL_TERMS

    @property
    def resamples(self) -> Path:
        return self.path / RESAMPLES

    @property
    def sweep(self) -> Path:
        return self.path / SWEEP

    @property
    def mlflow_run(self) -> Path:
        return self.path / MLFLOW_RUN

    @property
    def mlflow_eval_run(self) -> Path:
        return self.path / MLFLOW_EVAL_RUN


def run_folder_of(samples: Path) -> Path:
    """The run folder a samples file lies in: the folder holding its samples/ folder, or, for samples
    anywhere else, their own folder."""
    return samples.parent.parent if samples.parent.name == SAMPLES else samples.parent


def checkpoint_path(folder: Path, step: int) -> Path:
    """A resumable state of `step` in the checkpoints folder."""
    return folder / f"step-{step:08d}.pt"


def step_checkpoints(folder: Path) -> list[Path]:
    """The checkpoints `checkpoint_path` wrote in `folder`, oldest first."""
    found = [p for p in folder.glob("step-*.pt") if STEP_FILE.fullmatch(p.name)] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(STEP_FILE.fullmatch(p.name).group(1)))


def sample_pictures(folder: Path) -> list[Path]:
    """The pictures `ddpm sample` draws into `folder`."""
    return [folder / name for name in PICTURES]


def feature_cache(folder: Path, digest: str, extractor: str, resize: str) -> Path:
    """The cached features of the real images with sha256 `digest` through `extractor` and `resize`
    (none: the extractor takes the images as they are)."""
    suffix = "" if resize == "none" else f"-{resize}"
    return folder / f"real-{digest[:16]}-{extractor}{suffix}.npy"


def pending_picture(folder: Path, digest: str) -> Path:
    """A picture an MLflow write kept for later, beside the pending file (`digest`: its sha256)."""
    return folder / f".mlflow-pending-{digest[:12]}.npy"


def pending_copy(folder: Path, digest: str, name: str) -> Path:
    """The copy, under its own `name`, of a file from outside the run folder `folder` whose upload was kept
    for later (`digest`: its sha256), so that the pending file names only files inside the folder."""
    return folder / f".mlflow-pending-{digest[:12]}" / name
