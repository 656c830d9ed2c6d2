"""The comparison report of trained schedules (`ddpm compare`): report.md with the table, the
verdicts and every picture, and the table as comparison.csv and .json.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ddpm import layout
from ddpm.config import Config
from ddpm.data import first_image
from ddpm.files import atomic_outputs, folder_lock
from ddpm.plots import (
    checked_names,
    forward_strip,
    plot_losses,
    plot_nll_terms,
    plot_quality,
    plot_sample_grids,
    plot_schedules,
    plot_sweep,
)
from ddpm.results import RunResult, label, metric_names, read_results, sweep_columns, table_rows
from ddpm.verdicts import SPREAD_FACTOR, differences


def compare(
    names: list[str],
    seeds: list[int],
    runs_dir: Path,
    data: Path,
    out_dir: Path,
    ready: Callable[[], None] | None = None,
) -> tuple[list[dict[str, Any]], list[Path], dict[str, str]]:
    """The comparison report in `out_dir`: report.md with the table, what its differences mean, and
    every picture; the table as comparison.csv and .json; scores.csv (FID per schedule);
    schedules.png (alphā, log-SNR); nll_terms.png (bits/dim per timestep); sweep.png (FID against
    sampling steps); losses.png; quality.png (FID and KID during training); forward.png (the first
    image of `data`, or a synthetic flower, noised by each schedule); samples.png (the first seed's
    sample grids side by side). T and the image size are the checkpoints'. Returns the rows, the
    files and each run's MLflow child run (where tracked). `ready` is called once every input is read."""
    results = read_results(names, seeds, runs_dir)
    image = first_image(data, results[0].model["arch"]["image_size"])  # checked, like every input, before any write
    if ready:
        ready()
    rows = table_rows(results)
    with atomic_outputs() as output:  # the report is renamed into place only once every file of it is written
        pictures = _draw_pictures(names, seeds, results, rows, image, out_dir, output)
        tables = _write_tables(rows, results, out_dir, output)
    linked = {label(r): r.run_id for r in results if r.run_id}
    return rows, [*tables, *pictures], linked


def _draw_pictures(
    names: list[str], seeds: list[int], results: list[RunResult], rows: list[dict[str, Any]], image: np.ndarray,
    out_dir: Path, output: Callable[[Path], Path],
) -> list[Path]:  # fmt: skip
    """Every picture of the report, each written to `output(path)`; the schedules' at the checkpoints'
    T, `image` (the first real one) noised by each."""
    timesteps = results[0].model["diffusion"]["timesteps"]
    files = [out_dir / name for name in PICTURES]
    schedules, nll_terms, sweep, losses, forward, samples, quality = files
    plot_schedules(names, timesteps, output(schedules))
    plot_nll_terms(results, output(nll_terms))
    plot_sweep(results, output(sweep))
    plot_losses(results, output(losses))
    plot_quality(results, output(quality))
    forward_strip(names, timesteps, image, output(forward))
    plot_sample_grids([r for r in results if r.seed == seeds[0]], rows, output(samples))
    return files


def _write_tables(
    rows: list[dict[str, Any]], results: list[RunResult], out_dir: Path, output: Callable[[Path], Path]
) -> list[Path]:
    """report.md, and the table as comparison.json, comparison.csv and scores.csv (long form, for DVC's
    bar plot), each written to `output(path)`."""
    tables = [out_dir / name for name in (layout.REPORT, layout.COMPARISON_JSON, layout.COMPARISON_CSV, layout.SCORES)]
    report, as_json, as_csv, scores = tables
    output(as_json).write_text(json.dumps(rows, indent=2) + "\n")
    keys = list(dict.fromkeys(key for row in rows for key in row))
    output(as_csv).write_text(
        ",".join(keys) + "\n" + "".join(",".join(str(row.get(k, "")) for k in keys) + "\n" for row in rows)
    )
    fid = metric_names(rows[0])[0]
    output(scores).write_text(
        "schedule,metric,score\n" + "".join(f"{row['schedule']},{fid},{row[fid]}\n" for row in rows)
    )
    output(report).write_text(markdown_report(rows, results, results[0].model["diffusion"]["timesteps"]))
    return tables


PICTURES = (layout.SCHEDULES_PICTURE, layout.NLL_TERMS_PICTURE, layout.SWEEP_PICTURE, layout.LOSSES_PICTURE,
            layout.FORWARD_PICTURE, layout.SAMPLES_PICTURE, layout.QUALITY_PICTURE)  # fmt: skip


def _cell(row: dict[str, Any], key: str, digits: str) -> str:
    """A number, ± its spread over the seeds where there are several; the FID with its bootstrap interval."""
    if key not in row:
        return "–"
    text = f"{row[key]:{digits}}"
    if f"{key}_std_seeds" in row:
        return f"{text} ± {row[f'{key}_std_seeds']:{digits}}"
    if f"{key}_ci_low" in row:
        return f"{text} [{row[f'{key}_ci_low']:{digits}}, {row[f'{key}_ci_high']:{digits}}]"
    return text


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The comparison table, as report.md holds it and `ddpm compare` prints it."""
    fid, kid, kid_std = metric_names(rows[0])
    sweeps = sweep_columns(rows[0])
    interval = " [95 % CI]" if f"{fid}_ci_low" in rows[0] and "seeds" in rows[0] and " " not in rows[0]["seeds"] else ""
    header = [
        f"{fid}{interval}",
        f"{kid} (± std)",
        "NLL (bits/dim)",
        *[k.replace("_ddim", " @ ") + " steps" for k in sweeps],
    ]
    lines = [
        "| schedule | seeds | " + " | ".join(header) + " | final loss | steps | training time | img/s |",
        "|---|---|" + "---:|" * (len(header) + 4),
    ]
    for row in rows:
        kid_cell = _cell(row, kid, ".4f") if f"{kid}_std_seeds" in row else f"{row[kid]:.4f} ± {row[kid_std]:.4f}"
        cells = [
            _cell(row, fid, ".2f"),
            kid_cell,
            _cell(row, "nll_bpd", ".3f"),
            *[_cell(row, k, ".2f") for k in sweeps],
        ]
        cells += [_cell(row, "final_loss", ".4f"), f"{row['steps']:.0f}", _duration(row["train_seconds"]),
                  f"{row['images_per_second']:.0f}"]  # fmt: skip
        lines.append(f"| {row['schedule']} | {row['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# evaluate.resize, in words (`none`: the randconv stand-in takes the images as they are)
RESIZES = {
    "legacy": "legacy, TensorFlow 1 bilinear to 299×299, as published FIDs",
    "antialias": "antialiased bilinear to 299×299, not comparable with published FIDs",
}


def conditions(results: list[RunResult]) -> str:
    """What every number was measured with, in a sentence or three."""
    e, sweep = results[0].evaluation, results[0].sweep
    seeds = sorted({r.seed for r in results})
    lines = [
        f"Training seeds: {', '.join(map(str, seeds))} (each schedule trained once per seed; a ± is the standard "
        "deviation over the seeds).",
        f"{e['num_samples']} samples per run against {e['num_real']} real (training) images; features: "
        f"{e['feature_extractor']} ({e['feature_dim']}-d; weights: {e['weights']}; resize: "
        f"{RESIZES.get(e['resize'], e['resize'])}).",
    ]
    if "bootstrap" in e:
        lines.append(f"FID intervals: 95 %, basic bootstrap over {e['bootstrap']} resamples of the samples' features, "
                     "the real statistics fixed; they bound the FID of infinitely many samples, which lies below "
                     "the score of a finite set, so an interval may sit below its FID.")  # fmt: skip
    if "nll_bpd" in e:
        lines.append(f"Likelihood: the variational bound (Ho et al. eq. 5) in bits/dim on {e['nll_images']} held-out "
                     f"images never trained on, every timestep, reverse variance {e['nll_variance']}, "
                     f"x_0 {'clipped' if e['nll_clip_denoised'] else 'not clipped'}.")  # fmt: skip
    if sweep:
        lines.append(f"Sweep: {sweep['num_samples']} samples at each step count, DDIM (η = {sweep['eta']}) and DDPM "
                     f"at full length ({sweep['variance']} variance), seed {sweep['seed']}.")  # fmt: skip
    return " ".join(lines)


def markdown_report(rows: list[dict[str, Any]], results: list[RunResult], timesteps: int) -> str:
    said = differences(rows)
    return "\n".join(
        [
            "# Beta schedules compared",
            "",
            conditions(results),
            "",
            markdown_table(rows),
            "",
            "## Which differences are real",
            "",
            f"A difference is called real when it exceeds {SPREAD_FACTOR:g} combined standard errors of the two "
            "schedules; otherwise it is within noise. Lower is better for every metric judged here (the training "
            "loss is not judged: the same ε-loss is a different task under each schedule).",
            "",
            *(said or ["One schedule: nothing to compare."]),
            "",
            "## Where each schedule spends its bits",
            "",
            f"![bits/dim per timestep]({layout.NLL_TERMS_PICTURE})",
            "",
            "## FID against the number of sampling steps",
            "",
            f"![FID against sampling steps]({layout.SWEEP_PICTURE})",
            "",
            f"## Noise schedules (T = {timesteps})",
            "",
            f"![alphā and log-SNR per schedule]({layout.SCHEDULES_PICTURE})",
            "",
            "## The forward process: one real image, the same noise, each schedule",
            "",
            f"![forward process]({layout.FORWARD_PICTURE})",
            "",
            "## Training loss",
            "",
            f"![loss curves]({layout.LOSSES_PICTURE})",
            "",
            "## Quality during training",
            "",
            "FID_N and KID (the extractor's, as in the table) of train.eval_samples EMA samples (DDIM, "
            "train.eval_steps steps, η = 0) against the images trained on, every train.eval_every steps and at "
            "the end: the same x_T at every point of every line, so the lines differ by their models alone. "
            "N is smaller than the table's, and FID_N falls as N grows: compare the lines with each other, "
            "not with the table.",
            "",
            f"![quality against training step]({layout.QUALITY_PICTURE})",
            "",
            "## Samples",
            "",
            f"![sample grids]({layout.SAMPLES_PICTURE})",
            "",
        ]
    )


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {s:02d} s"


def stage(config: Config, names: list[str], runs_dir: Path, data: Path, out_dir: Path) -> list[dict[str, Any]]:
    """`ddpm compare`: `compare` of the schedules `names` over the seeds of `config` into `out_dir`,
    holding its lock, and a `compare` run in MLflow that links the runs compared."""
    from ddpm.tracking import compare_run, session

    checked_names(names)
    with folder_lock(out_dir), session(config.tracking, None) as tracked:
        rows, files, linked = compare(names, config.seeds, runs_dir, data, out_dir, ready=tracked.open)
        if tracked.store:
            compare_run(tracked.store, names, rows, files, linked)
    return rows
