"""The comparison's inputs: what each run's stages wrote in runs/<schedule>/seed<k>, read, checked
(present, of the right shape, scoring the model beside them, measured like the others) and turned
into one table row per schedule, the mean over the seeds.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddpm.checkpoint import UnreadableCheckpoint, describe
from ddpm.errors import UserError
from ddpm.files import sha256_hex
from ddpm.layout import RunFolder


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


def read_results(names: list[str], seeds: list[int], runs_dir: Path) -> list[RunResult]:
    """Every schedule's results for every seed; a clear error naming the first file missing and the
    command that writes it, or the first condition that differs between the runs."""
    results = [_read_run(RunFolder.of(name, seed, runs_dir), name, seed) for name in names for seed in seeds]
    _check_comparable(results)
    return results


def _read_run(folder: RunFolder, name: str, seed: int) -> RunResult:
    command = f"--beta-schedule {name}" + (f" --seed {seed}" if seed else "")
    makers = {folder.model: "train", folder.train_metrics: "train", folder.losses: "train",
              folder.eval_metrics: "evaluate", folder.grid: "sample"}  # fmt: skip
    for file, stage in makers.items():
        if not file.is_file():
            selects = command if stage == "train" else command.replace("--seed", "--set train.seed=").replace("= ", "=")
            raise UserError(f"{file}: not found; run `ddpm {stage} {selects}` first")
    try:
        train, evaluation = (json.loads(f.read_text()) for f in (folder.train_metrics, folder.eval_metrics))
        sweep = json.loads(folder.sweep.read_text()) if folder.sweep.is_file() else None
        losses = np.loadtxt(folder.losses, delimiter=",", skiprows=1, ndmin=2)
        terms = None
        if "nll_bpd" in evaluation and folder.nll_terms.is_file():
            terms = np.loadtxt(folder.nll_terms, delimiter=",", skiprows=1, ndmin=2)[:, 1]
        linked = folder.mlflow_eval_run
        run_id = json.loads(linked.read_text())["run_id"] if linked.is_file() else None
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise UserError(f"{folder.path}: unreadable results ({e}); run its stages again") from None
    for file, content, stage in ((folder.train_metrics, train, "train"), (folder.eval_metrics, evaluation, "evaluate")):
        _check_shape(file, content, stage, name)
    try:  # read before the scores are checked against it: a damaged model.pt was taken for a retrained one
        model = describe(folder.model)
    except UnreadableCheckpoint as e:
        scored = command.replace("--seed ", "--set train.seed=")
        raise UserError(f"{e}; run `ddpm train {command}` again to write it anew from the run's checkpoints, then "
                        f"`ddpm sample` and `ddpm evaluate {scored}`") from None  # fmt: skip
    _check_same_model(folder, {folder.eval_metrics: evaluation, folder.sweep: sweep}, command)
    return RunResult(name, seed, model, train, evaluation, sweep, terms, losses, folder.grid, run_id)


def _check_same_model(folder: RunFolder, scored: dict[Path, dict[str, Any] | None], command: str) -> None:
    """A one-line error where eval.json or sweep.json scored another model than the model.pt beside it
    (retrained since): a table must never pair one model's training with another's scores."""
    model = None
    for file, content in scored.items():
        recorded = (content or {}).get("checkpoint_sha256")
        if recorded is None:
            continue
        model = model or sha256_hex(folder.model)
        if recorded != model:
            redo = "sample` and `ddpm evaluate" if file == folder.eval_metrics else "sweep"
            raise UserError(f"{file}: scores an earlier model than {folder.model} (retrained since); "
                            f"run `ddpm {redo} {command.replace('--seed ', '--set train.seed=')}` again")  # fmt: skip


def _check_comparable(results: list[RunResult]) -> None:
    scored = [r.evaluation for r in results]
    swept = [r.sweep or {} for r in results]
    for what, values in (
        ("feature extractors (evaluate.feature_extractor)", [e.get("feature_extractor") for e in scored]),
        ("extractor weights (sha256)", [e.get("weights_sha256") for e in scored]),
        ("resizes (evaluate.resize)", [e.get("resize") for e in scored]),
        ("sample counts (sample.num_samples)", [e.get("num_samples") for e in scored]),
        ("real image sets", [(e.get("num_real"), e.get("real_sha256")) for e in scored]),
        ("held-out sets of the likelihood (evaluate.nll_images, data.holdout)",
         [(e.get("nll_images"), e.get("holdout_sha256"), e.get("nll_variance")) for e in scored]),
        ("bootstrap resamples (evaluate.bootstrap)", [e.get("bootstrap") for e in scored]),
        ("sweeps (sweep.steps, sweep.num_samples)",
         [(sorted(s.get("ddim", {}), key=int), s.get("num_samples"), s.get("feature_extractor")) for s in swept]),
        ("numbers of timesteps T", [r.model["diffusion"]["timesteps"] for r in results]),
        ("image sizes", [r.model["arch"]["image_size"] for r in results]),
    ):  # fmt: skip
        if len(set(map(str, values))) > 1:
            shown = ", ".join(f"{label(r)}: {v}" for r, v in zip(results, values, strict=True))
            raise UserError(f"the schedules were run with different {what} ({shown}); compare like with like")


def label(r: RunResult) -> str:
    return f"{r.name} seed {r.seed}" if r.seed else r.name


# What train.json and eval.json hold, at least (eval.json also holds a fid or fid_<extractor>).
EXPECTED = {"train": ("final_loss", "steps", "train_seconds", "images_per_second"),
            "evaluate": ("num_samples", "num_real", "feature_extractor")}  # fmt: skip


def _check_shape(path: Path, content: Any, stage: str, name: str) -> None:
    """A one-line error unless `content` (read from `path`) has what `ddpm <stage>` writes there."""
    wanted = EXPECTED[stage] + (("fid…",) if stage == "evaluate" else ())
    keys = content.keys() if isinstance(content, dict) else set()
    missing = [k for k in EXPECTED[stage] if k not in keys]
    if stage == "evaluate" and not any(k.startswith("fid") for k in keys):
        missing.append("fid…")
    if missing:
        what = "scores" if stage == "evaluate" else "numbers"
        expected = f"expected {', '.join(wanted)}; missing {', '.join(missing)}"
        raise UserError(f"{path}: not the {what} `ddpm {stage}` writes ({expected}); run `ddpm {stage} "
                        f"--beta-schedule {name}` again")  # fmt: skip


def metric_names(keys: Iterable[str]) -> tuple[str, str, str]:
    """The FID, KID mean and KID std names among `keys`: fid, kid_mean, kid_std for the Inception
    network, fid_<extractor> and so on for a stand-in, so no proxy is ever shown as FID."""
    fid = next(k for k in keys if k.startswith("fid"))
    kid = fid.replace("fid", "kid", 1) + "_mean"
    return fid, kid, kid.removesuffix("_mean") + "_std"


def _run_numbers(r: RunResult) -> dict[str, float]:
    """One run's numbers under the table's names: its scores, the sweep's FIDs, the training figures."""
    fid, kid, kid_std = metric_names(r.evaluation)
    e = r.evaluation
    numbers = {fid: e[fid], kid: e[kid], kid_std: e[kid_std]}
    numbers |= {k: e[k] for k in (f"{fid}_ci_low", f"{fid}_ci_high", "nll_bpd", "nll_bpd_sem", "nll_prior_bpd")
                if k in e}  # fmt: skip
    if r.sweep:
        numbers |= {f"{fid}_ddim{k}": v for k, v in r.sweep["ddim"].items()}
        numbers |= {f"{fid}_ddpm{k}": v for k, v in r.sweep["ddpm"].items()}
    return numbers | {k: float(r.train[k]) for k in ("final_loss", "steps", "train_seconds", "images_per_second")}


def table_rows(results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per schedule: each number's mean over the seeds, and with two or more seeds its
    standard deviation over them as `<name>_std_seeds`. The FID and KID columns keep the metric's
    own name (fid, or fid_<extractor>)."""
    rows = []
    for name in dict.fromkeys(r.name for r in results):
        runs = [_run_numbers(r) for r in results if r.name == name]
        seeds = [r.seed for r in results if r.name == name]
        row: dict[str, Any] = {"schedule": name, "seeds": " ".join(map(str, seeds))}
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


def sweep_columns(row: dict[str, Any]) -> list[str]:
    """The sweep's FIDs the table shows: at 10 and 50 DDIM steps where swept, else the first two counts."""
    fid = metric_names(row)[0]
    swept = [k for k in row if k.startswith(f"{fid}_ddim") and not k.endswith("_std_seeds")]
    wanted = [f"{fid}_ddim{k}" for k in (10, 50) if f"{fid}_ddim{k}" in swept]
    return wanted or swept[:2]
