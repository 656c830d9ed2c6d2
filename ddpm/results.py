"""The comparison's inputs: what each run's stages wrote in runs/<schedule>/seed<k>, read, checked
(present, of the right shape, scoring the model beside them, measured like the others) and turned
into one table row per schedule, the mean over the seeds.
"""

import json
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ddpm.checkpoint import UnreadableCheckpoint, describe
from ddpm.comparable import Measured, check_comparable
from ddpm.errors import UserError
from ddpm.files import sha256_hex
from ddpm.knobs import check_knobs, check_variants_trained, variant_keys
from ddpm.layout import GRID, SAMPLES_ARRAY, RunFolder
from ddpm.origin import read_origin
from ddpm.result_keys import (
    FEW_STEP_SAMPLERS,
    LINK_KEYS,
    SCORES_KEYS,
    TRAIN_KEYS,
    fid_name,
    sampler_key,
    scores_keys,
    sweep_keys,
    value_problem,
)


@dataclass
class RunResult:
    """One trained model (a schedule and a training seed) and what its stages wrote."""

    name: str  # the schedule
    seed: int
    model: dict[str, Any]  # model.pt's description: arch, diffusion (schedule, T), step
    train: dict[str, Any]  # train.json
    evaluation: dict[str, Any]  # eval.json
    sweep: dict[str, Any] | None  # sweep.json, where `ddpm sweep` ran
    nll_terms: np.ndarray | None  # (T,) bits/dim per timestep, where the likelihood was measured
    losses: np.ndarray  # (k, 2): step, loss
    grid: Path
    run_id: str | None  # the MLflow child run holding the scores, where tracking was on
    # resamples.npz, where evaluate wrote it: each bootstrap resample's statistic (B,) by eval.json key,
    # and nll_bpd (M,), each held-out image's bits/dim; the same rows and images for every run (paired)
    draws: dict[str, np.ndarray] = field(default_factory=dict)
    drawn: dict[str, Any] | None = None  # samples.json, where `ddpm sample` drew the samples
    quality: dict[str, np.ndarray] | None = None  # quality.csv's columns (step, kid{s}, fid{s}), where measured


def read_results(
    names: list[str], seeds: list[int], runs_dir: Path, variants: Mapping[str, Any] | None = None
) -> list[RunResult]:
    """Every schedule's (or variant's) results for every seed; a clear error naming the first file missing and
    the command that writes it, or the first condition that differs between the runs (a knob may differ
    where a compared variant of `variants`, params.yaml's, sets it: ddpm.knobs)."""
    results = [_read_run(RunFolder.of(name, seed, runs_dir), name, seed) for name in names for seed in seeds]
    _check_comparable(results)
    variants = variants or {}
    check_variants_trained(results, variants)
    check_knobs(results, variant_keys(variants, names), label)
    return results


def _read_run(folder: RunFolder, name: str, seed: int) -> RunResult:
    """One run folder's results, each file checked to hold what its stage writes, and the files of a
    stage checked to belong together (their sha256s): a one-line error naming the command to rerun."""
    run = RunFiles(folder, name, seed)
    makers = {folder.model: "train", folder.train_metrics: "train", folder.losses: "train",
              folder.eval_metrics: "evaluate", folder.grid: "sample"}  # fmt: skip
    for file, stage in makers.items():
        if not file.is_file():
            raise UserError(f"{file}: not found; run {run.command(stage)} first")
    train = run.checked(folder.train_metrics, "train", TRAIN_KEYS)
    evaluation = run.checked(folder.eval_metrics, "evaluate", scores_keys(run.mapping(folder.eval_metrics, "evaluate")))
    swept = folder.sweep.is_file()
    sweep = run.checked(folder.sweep, "sweep", sweep_keys(run.mapping(folder.sweep, "sweep"))) if swept else None
    linked = run.checked(folder.mlflow_eval_run, "evaluate", LINK_KEYS) if folder.mlflow_eval_run.is_file() else {}
    losses = run.losses()
    try:  # read before the scores are checked against it: a damaged model.pt was taken for a retrained one
        model = describe(folder.model)
    except UnreadableCheckpoint as e:
        raise UserError(f"{e}; run {run.command('train')} again to write it anew from the run's checkpoints, then "
                        f"{run.command('sample')} and {run.command('evaluate')}") from None  # fmt: skip
    _check_same_model(folder, {folder.eval_metrics: evaluation, folder.sweep: sweep}, run)
    drawn = run.check_samples(evaluation)
    terms = run.nll_terms(evaluation, model["diffusion"]["timesteps"]) if "nll_bpd" in evaluation else None
    draws = run.draws(evaluation)
    return RunResult(
        name,
        seed,
        model,
        train,
        evaluation,
        sweep,
        terms,
        losses,
        folder.grid,
        linked.get("run_id"),
        draws,
        drawn,
        run.quality(),
    )


@dataclass
class RunFiles:
    """The files of one run folder, read and checked; every error names the file and the command
    that writes it again."""

    folder: RunFolder
    name: str
    seed: int

    def command(self, stage: str, extra: str = "") -> str:
        """`ddpm <stage>` of this run (with `extra` arguments): train takes --seed, the others pick the
        run by train.seed."""
        seed = "" if not self.seed else f" --seed {self.seed}" if stage == "train" else f" --set train.seed={self.seed}"
        return f"`ddpm {stage} --beta-schedule {self.name}{seed}{' ' + extra if extra else ''}`"

    def error(self, file: Path, problem: str, stage: str) -> UserError:
        return UserError(f"{file}: {problem}; run {self.command(stage)} again")

    def mapping(self, file: Path, stage: str) -> dict[str, Any]:
        """The JSON mapping in `file`."""
        try:
            content = json.loads(file.read_text())
        except (OSError, ValueError) as e:
            raise self.error(file, f"not JSON ({str(e).splitlines()[0]})", stage) from None
        if not isinstance(content, dict):
            raise self.error(file, "expected a mapping", stage)
        return content

    def checked(self, file: Path, stage: str, keys: dict[str, tuple[str, bool]]) -> dict[str, Any]:
        """The mapping in `file`, with every key of `keys` it must hold (kind, required: True) there
        and each value of the kind named (KINDS)."""
        content = self.mapping(file, stage)
        missing = [key for key, (_, required) in keys.items() if required and key not in content]
        if missing:
            what = {"train": "numbers", "evaluate": "scores"}.get(stage, "results")
            wanted = ", ".join(key for key, (_, required) in keys.items() if required)
            raise self.error(file, f"not the {what} `ddpm {stage}` writes (expected {wanted}; missing "
                                   f"{', '.join(missing)})", stage)  # fmt: skip
        for key, (kind, _) in keys.items():
            if key in content and (problem := value_problem(key, content[key], kind)):
                raise self.error(file, problem, stage)
        return content

    def losses(self) -> np.ndarray:
        """losses.csv: (k, 2) rows of step, loss, k ≥ 1."""
        file = self.folder.losses
        try:
            with warnings.catch_warnings():  # numpy warns of a file without rows: said below
                warnings.simplefilter("ignore", UserWarning)
                losses = np.loadtxt(file, delimiter=",", skiprows=1, ndmin=2)
        except (OSError, ValueError):
            raise self.error(file, "expected rows of step,loss", "train") from None
        if losses.size == 0:
            raise self.error(file, "no losses (the header alone)", "train")
        if losses.shape[1] != 2:
            raise self.error(file, "expected rows of step,loss", "train")
        return losses

    def quality(self) -> dict[str, np.ndarray] | None:
        """quality.csv's columns by name, where the run measured quality during training; None where it
        did not (no file: an earlier ddpm's run; the header alone: train.eval_every 0)."""
        file = self.folder.quality
        if not file.is_file():
            return None
        try:
            header = file.read_text().partition("\n")[0].split(",")
            with warnings.catch_warnings():  # numpy warns of a file without rows: no points
                warnings.simplefilter("ignore", UserWarning)
                values = np.loadtxt(file, delimiter=",", skiprows=1, ndmin=2)
        except (OSError, ValueError):
            values = None
        if values is not None and values.size == 0:
            return None
        if values is None or header[0] != "step" or values.shape[1] != len(header):
            raise self.error(file, "expected rows of step,kid,fid", "train")
        return dict(zip(header, values.T, strict=True))

    def check_samples(self, evaluation: dict[str, Any]) -> dict[str, Any] | None:
        """The grid is a picture, and, where samples.json records sha256s (`ddpm sample` writes them
        with the samples, last), the grid and the scored samples are the ones it describes; samples.json,
        where there is one."""
        grid, origin = self.folder.grid, self.folder.samples_origin
        try:
            with Image.open(grid) as picture:
                picture.load()
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise self.error(grid, f"not a picture ({str(e).splitlines()[0]})", "sample") from None
        drawn = read_origin(self.folder.samples_array)
        digests = (drawn or {}).get("sha256")
        if not digests:
            return drawn  # drawn elsewhere, or before ddpm recorded the sha256s
        if sha256_hex(grid) != digests[GRID]:
            problem = (
                f"not the picture of the samples {origin} describes (another sha256: an interrupted `ddpm sample`)"
            )
            raise self.error(grid, problem, "sample")
        if evaluation.get("samples_sha256", digests[SAMPLES_ARRAY]) != digests[SAMPLES_ARRAY]:
            problem = f"scores other samples than {self.folder.samples_array} (sampled since)"
            raise self.error(self.folder.eval_metrics, problem, "evaluate")
        return drawn

    def nll_terms(self, evaluation: dict[str, Any], timesteps: int) -> np.ndarray | None:
        """The bound's term at each of the model's `timesteps` (T,), where nll_terms.csv is there:
        the one whose sha256 eval.json records, where it records one."""
        file = self.folder.nll_terms
        if not file.is_file():
            return None
        if evaluation.get("nll_terms_sha256", sha256_hex(file)) != sha256_hex(file):
            problem = (
                f"not the terms of the bound in {self.folder.eval_metrics} (another sha256: an interrupted "
                "`ddpm evaluate`)"
            )
            raise self.error(file, problem, "evaluate")
        try:
            terms = np.loadtxt(file, delimiter=",", skiprows=1, ndmin=2)
        except (OSError, ValueError):
            terms = np.empty((0, 0))
        if terms.shape != (timesteps, 2):
            raise self.error(file, f"expected {timesteps} rows of t,bpd, one per timestep of the model", "evaluate")
        return terms[:, 1]

    def draws(self, evaluation: dict[str, Any]) -> dict[str, np.ndarray]:
        """resamples.npz's arrays, where it is there: the one whose sha256 eval.json records, each a 1-d
        array of finite numbers, B of them (M for nll_bpd, one per held-out image)."""
        file = self.folder.resamples
        if not file.is_file():
            return {}
        if evaluation.get("resamples_sha256") != sha256_hex(file):
            problem = (
                f"not the resamples of the scores in {self.folder.eval_metrics} (another sha256: an interrupted "
                "`ddpm evaluate`)"
            )
            raise self.error(file, problem, "evaluate")
        try:
            with np.load(file, allow_pickle=False) as archive:
                arrays = {key: np.asarray(archive[key], dtype=np.float64) for key in archive.files}
        except (OSError, ValueError, TypeError, zipfile.BadZipFile):
            raise self.error(file, "not a numpy .npz archive", "evaluate") from None
        for key, values in arrays.items():
            wanted = evaluation.get("nll_images" if key == "nll_bpd" else "bootstrap")
            if values.ndim != 1 or len(values) != wanted or not np.isfinite(values).all():
                raise self.error(file, f"{key}: expected {wanted} finite numbers, got shape {values.shape}", "evaluate")
        return arrays


def _check_same_model(folder: RunFolder, scored: dict[Path, dict[str, Any] | None], run: RunFiles) -> None:
    """A one-line error where eval.json or sweep.json scored another model than the model.pt beside it
    (retrained since): a table must never pair one model's training with another's scores."""
    model = None
    for file, content in scored.items():
        recorded = (content or {}).get("checkpoint_sha256")
        if recorded is None:
            continue
        model = model or sha256_hex(folder.model)
        if recorded != model:
            scores = file == folder.eval_metrics
            redo = f"`ddpm sample` and {run.command('evaluate')}" if scores else run.command("sweep")
            raise UserError(f"{file}: scores an earlier model than {folder.model} (retrained since); run {redo} again")


def _check_comparable(results: list[RunResult]) -> None:
    scored = [r.evaluation for r in results]
    swept = [r.sweep or {} for r in results]
    for what, values in (
        ("feature extractors (evaluate.feature_extractor)", [e.get("feature_extractor") for e in scored]),
        ("extractor weights (sha256)", [e.get("weights_sha256") for e in scored]),
        ("resizes (evaluate.resize)", [e.get("resize") for e in scored]),
        ("sample counts (sample.num_samples)", [e.get("num_samples") for e in scored]),
        ("real image sets", [(e.get("num_real"), e.get("real_sha256")) for e in scored]),
        ("bootstrap resamples (evaluate.bootstrap)", [(e.get("bootstrap"), e.get("bootstrap_seed")) for e in scored]),
        ("sweeps (sweep.samplers, sweep.steps, sample.spacing, sample.clip_mode, sweep.num_samples)",
         [(s.get("samplers"), *(sorted(s.get(x, {}), key=int) for x in s.get("samplers", [])), s.get("spacing"),
           s.get("clip_mode"), s.get("num_samples"), s.get("feature_extractor")) for s in swept]),
        ("numbers of timesteps T", [r.model["diffusion"]["timesteps"] for r in results]),
        ("image sizes", [r.model["arch"]["image_size"] for r in results]),
    ):  # fmt: skip
        if len(set(map(str, values))) > 1:
            shown = ", ".join(f"{label(r)}: {v}" for r, v in zip(results, values, strict=True))
            raise UserError(f"the schedules were run with different {what} ({shown}); compare like with like")
    check_comparable([Measured(label(r), RunFiles(RunFolder(Path()), r.name, r.seed).command,
                               r.drawn and r.drawn["sample"], r.evaluation) for r in results])  # fmt: skip


def label(r: RunResult) -> str:
    return f"{r.name} seed {r.seed}" if r.seed else r.name


def metric_names(keys: Iterable[str]) -> tuple[str, str, str]:
    """The FID, KID mean and KID standard error names among `keys`: fid, kid_mean, kid_se for the
    Inception network, fid_<extractor> and so on for a stand-in, so no proxy is ever shown as FID."""
    fid = fid_name(keys)
    if fid is None:
        raise ValueError("no FID among the keys")
    kid = fid.replace("fid", "kid", 1)
    return fid, f"{kid}_mean", f"{kid}_se"


def _run_numbers(r: RunResult) -> dict[str, float]:
    """One run's numbers under the table's names: its scores, the sweep's FIDs, the training figures."""
    fid, kid, _ = metric_names(r.evaluation)
    e = r.evaluation
    estimates = [f"{fid}{x}" for x in ("", "_inf")] + [kid.replace("_mean", x) for x in ("_mean", "_holdout_mean")]
    keys = [f"{k}{x}" for k in estimates[:2] for x in ("", "_sd", "_ci_low", "_ci_high")]
    keys += [k.replace("_mean", x) for k in estimates[2:] for x in ("_mean", "_se")]
    keys += [k for k, (kind, _) in SCORES_KEYS.items() if kind == "number"]
    numbers = {k: e[k] for k in keys if k in e}
    if r.sweep:  # each point as <fid>_<sampler><NFE>, its bootstrap SD as <point>_sd where measured, the sweep's N
        for sampler in (*r.sweep["samplers"], "ddpm"):
            point = f"{fid}_{sampler_key(sampler)}"
            numbers |= {f"{point}{k}": v for k, v in r.sweep[sampler].items()}
            numbers |= {f"{point}{k}_sd": v for k, v in r.sweep.get(f"{sampler}_sd", {}).items()}
        numbers["sweep_num_samples"] = r.sweep["num_samples"]
    return numbers | {k: float(r.train[k]) for k in ("final_loss", "steps", "train_seconds", "images_per_second")}


def table_rows(results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per schedule: each number's mean over the seeds, and with two or more seeds its
    standard deviation over them as `<name>_std_seeds`; num_samples, the N of FID_N (the same for
    every run). The FID and KID columns keep the metric's own name (fid, or fid_<extractor>)."""
    rows = []
    for name in dict.fromkeys(r.name for r in results):
        runs = [_run_numbers(r) for r in results if r.name == name]
        seeds = [r.seed for r in results if r.name == name]
        row: dict[str, Any] = {"schedule": name, "seeds": " ".join(map(str, seeds)),
                               "num_samples": results[0].evaluation["num_samples"]}  # fmt: skip
        for key in runs[0]:
            values = np.array([run[key] for run in runs], dtype=np.float64)
            row[key] = float(values.mean())
            if len(values) > 1:
                row[f"{key}_std_seeds"] = float(values.std(ddof=1))
        rows.append(row)
    return rows


def by_schedule(results: list[RunResult]) -> dict[str, list[RunResult]]:
    grouped: dict[str, list[RunResult]] = {}
    for r in results:
        grouped.setdefault(r.name, []).append(r)
    return grouped


def sweep_columns(row: dict[str, Any]) -> list[tuple[str, str, int]]:
    """The sweep's FIDs the table shows, as (key, sampler, NFE): each few-step sampler's at 10 and 50
    NFE where swept, else at its first two counts."""
    fid = metric_names(row)[0]
    columns = []
    for sampler in FEW_STEP_SAMPLERS:
        point = f"{fid}_{sampler_key(sampler)}"
        swept = [int(k.removeprefix(point)) for k in row if k.startswith(point) and k.removeprefix(point).isdigit()]
        columns += [(f"{point}{k}", sampler, k) for k in ([k for k in (10, 50) if k in swept] or swept[:2])]
    return columns
