"""The comparison report of trained schedules (`ddpm compare`): report.md with the table, the
verdicts and every picture, and the table as comparison.csv and .json.
"""

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ddpm import layout
from ddpm.config import Config
from ddpm.data import first_image
from ddpm.files import atomic_outputs, folder_lock
from ddpm.knobs import knob_sentence
from ddpm.nearest import closest_images, memorization_section
from ddpm.plots import (
    checked_names,
    forward_processes,
    plot_losses,
    plot_nearest,
    plot_nll_terms,
    plot_processes,
    plot_quality,
    plot_sample_grids,
    plot_sweep,
)
from ddpm.results import RunResult, label, metric_names, read_results, sweep_columns, table_rows
from ddpm.spacing import SAMPLER_NAMES, sampling_name
from ddpm.sweep_report import best_sampler_table, sweep_conditions
from ddpm.verdicts import ALPHA, ONE_SEED, Verdict, judge, primary_metric


def compare(
    names: list[str],
    seeds: list[int],
    runs_dir: Path,
    data: Path,
    out_dir: Path,
    ready: Callable[[], None] | None = None,
    primary: str = "fid",
    variants: Mapping[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], list[Path], dict[str, str]]:
    """The comparison report in `out_dir`: report.md with the table, what its differences mean, and
    every picture; the table as comparison.csv and .json; scores.csv (FID per schedule); losses.csv;
    schedules.png (alphā, log-SNR); nll_terms.png (bits/dim per timestep); sweep.png (FID against
    NFE per schedule × sampler); losses.png; quality.png (FID and KID during training); forward.png (the first
    image of `data`, or a synthetic flower,
    noised by each schedule); samples.png (the first seed's sample grids side by side); nearest.png
    (the first seed's samples closest to a training image, ddpm.memorization). T and the
    image size are the checkpoints'. Returns the rows, the files and each run's MLflow child run
    (where tracked). `ready` is called once every input is read; `primary` is compare.primary, the
    pre-declared test; `variants`, params.yaml's (ddpm.variants: what the compared runs may differ in)."""
    results = read_results(names, seeds, runs_dir, variants)
    image = first_image(data, results[0].model["arch"]["image_size"])  # checked, like every input, before any write
    closest = closest_images([r for r in results if r.seed == seeds[0]], runs_dir, data)
    if ready:
        ready()
    rows = table_rows(results)
    verdicts = judge(results, primary)
    with atomic_outputs() as output:  # the report is renamed into place only once every file of it is written
        pictures = _draw_pictures(names, seeds, results, rows, image, out_dir, output)
        plot_nearest(closest, output(out_dir / layout.NEAREST_PICTURE))
        tables = _write_tables(rows, verdicts, primary, results, out_dir, output)
    linked = {label(r): r.run_id for r in results if r.run_id}
    return rows, [*tables, *pictures, out_dir / layout.NEAREST_PICTURE], linked


def _draw_pictures(
    names: list[str], seeds: list[int], results: list[RunResult], rows: list[dict[str, Any]], image: np.ndarray,
    out_dir: Path, output: Callable[[Path], Path],
) -> list[Path]:  # fmt: skip
    """Every picture of the report, each written to `output(path)`; the schedules' at the checkpoints'
    T, `image` (the first real one) noised by each."""
    processes = {r.name: r.model["diffusion"] for r in results if r.seed == seeds[0]}  # model.pt's own
    files = [out_dir / name for name in PICTURES]
    schedules, nll_terms, sweep, losses, forward, samples, quality = files
    plot_processes(processes, output(schedules))
    plot_nll_terms(results, output(nll_terms))
    plot_sweep(results, output(sweep))
    plot_losses(results, output(losses))
    plot_quality(results, output(quality))
    forward_processes(processes, image, output(forward))
    plot_sample_grids([r for r in results if r.seed == seeds[0]], rows, output(samples))
    return files


def _write_tables(
    rows: list[dict[str, Any]], verdicts: list[Verdict], primary: str, results: list[RunResult], out_dir: Path,
    output: Callable[[Path], Path],
) -> list[Path]:  # fmt: skip
    """report.md; comparison.json: the table's rows and the verdicts with their raw and Holm-adjusted
    p-values; the table as comparison.csv and scores.csv (the FID column named as the metric is, which
    DVC's bar plot takes for its title and axis); every run's losses in one file (losses.csv, for DVC's
    overlaid plot); each written to `output(path)`."""
    names = (layout.REPORT, layout.COMPARISON_JSON, layout.COMPARISON_CSV, layout.SCORES, layout.LOSS_CURVES)
    tables = [out_dir / name for name in names]
    report, as_json, as_csv, scores, losses = tables
    judged = {"alpha": ALPHA, "correction": "holm", "primary": primary, "verdicts": [v.as_json() for v in verdicts]}
    output(as_json).write_text(json.dumps({"rows": rows, **judged}, indent=2) + "\n")
    keys = list(dict.fromkeys(key for row in rows for key in row))
    output(as_csv).write_text(
        ",".join(keys) + "\n" + "".join(",".join(str(row.get(k, "")) for k in keys) + "\n" for row in rows)
    )
    fid = metric_names(rows[0])[0]
    output(scores).write_text(f"schedule,{fid}\n" + "".join(f"{row['schedule']},{row[fid]}\n" for row in rows))
    curves = "".join(f"{r.name} seed {r.seed},{step:.0f},{loss:.6f}\n" for r in results for step, loss in r.losses)
    output(losses).write_text("run,step,loss\n" + curves)
    output(report).write_text(markdown_report(rows, verdicts, primary, results))
    return tables


PICTURES = (layout.SCHEDULES_PICTURE, layout.NLL_TERMS_PICTURE, layout.SWEEP_PICTURE, layout.LOSSES_PICTURE,
            layout.FORWARD_PICTURE, layout.SAMPLES_PICTURE, layout.QUALITY_PICTURE)  # fmt: skip


def _cell(row: dict[str, Any], key: str, digits: str, spread: str | None = None) -> str:
    """A number ± its spread over the seeds where there are several, else ± `spread` (its bootstrap sd
    or standard error) where measured, or [ci_low, ci_high] where `spread` is "interval"."""
    if key not in row:
        return "–"
    text = f"{row[key]:{digits}}"
    if f"{key}_std_seeds" in row:
        return f"{text} ± {row[f'{key}_std_seeds']:{digits}}"
    if spread == "interval" and f"{key}_ci_low" in row:
        return f"{text} [{row[f'{key}_ci_low']:{digits}}, {row[f'{key}_ci_high']:{digits}}]"
    if spread in row:
        return f"{text} ± {row[spread]:{digits}}"
    return text


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The comparison table, as report.md holds it and `ddpm compare` prints it; LEGEND says what each
    column estimates."""
    fid, kid, kid_se = metric_names(rows[0])
    holdout = kid.replace("_mean", "_holdout_mean")
    sweeps = sweep_columns(rows[0])
    seeds = any(" " in row["seeds"] for row in rows)  # then every ± is the spread over the seeds

    def spread(own: str) -> str:
        return "± sd over seeds" if seeds else own

    columns = [  # (header, key, digits, spread)
        (f"{fid} (N = {rows[0]['num_samples']:,.0f}) {spread('± sd')}", fid, ".2f", f"{fid}_sd"),
        (f"{fid}_inf {spread('[95 %]')}", f"{fid}_inf", ".2f", "interval"),
        (f"{kid} {spread('± SE')}", kid, ".4f", kid_se),
        (f"{holdout} {spread('± SE')}", holdout, ".4f", holdout.replace("_mean", "_se")),
        (f"NLL (bits/dim) {spread('± SE')}", "nll_bpd", ".3f", "nll_bpd_sem"),
        *[
            (f"{fid} (N = {rows[0]['sweep_num_samples']:,.0f}) @ {SAMPLER_NAMES[sampler]} {nfe}", k, ".2f", f"{k}_sd")
            for k, sampler, nfe in sweeps
        ],
        ("final loss", "final_loss", ".4f", None),
    ]
    columns = [c for c in columns if any(c[1] in row for row in rows)]
    lines = ["| schedule | seeds | " + " | ".join(c[0] for c in columns) + " |", "|---|---|" + "---:|" * len(columns)]
    for row in rows:
        cells = [_cell(row, key, digits, spread) for _, key, digits, spread in columns]
        lines.append(f"| {row['schedule']} | {row['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_table(rows: list[dict[str, Any]]) -> str:
    """The training's wall clock, apart from the comparison: it measures the machine (its load from
    other jobs included) as much as the schedule, whose arithmetic per step is the same."""
    lines = [
        "This machine's timing, not a property of the schedule (other jobs on the machine change it; not compared):",
        "",
        "| schedule | seeds | steps | training time | img/s |",
        "|---|---|---:|---:|---:|",
    ]
    for row in rows:
        cells = [f"{row['steps']:.0f}", _duration(row["train_seconds"]), f"{row['images_per_second']:.0f}"]
        lines.append(f"| {row['schedule']} | {row['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def legend(rows: list[dict[str, Any]]) -> str:
    """What each column of the table estimates, in words."""
    fid, kid, _ = metric_names(rows[0])
    return (
        f"What each number estimates (lower is better for every score). **{fid} (N)**: the Fréchet distance "
        f"between the features of these N samples and of the real images, FID_N; a finite N biases it upwards, so "
        f"it compares only at equal N. **{fid}_inf**: FID_∞ (Chong & Forsyth 2020), FID_N at several N fitted "
        f"linearly in 1/N and extrapolated to infinitely many samples. **{kid}**: KID, the unbiased estimate of "
        "the squared MMD (kernel (x·y/d + 1)³) between all samples and all real images, unbiased at any N; the "
        "held-out column measures it against images never trained on. **NLL**: the variational bound on the "
        "negative log-likelihood of held-out images, bits/dim. With one seed, ± is the bootstrap standard "
        "deviation over resamples of the samples (sd; for KID, an unbiased estimate, that is its standard error, "
        "SE; for NLL the standard error over the images) and [95 %] is ± 1.96 of it: sampling noise only. With "
        "several seeds, ± is the standard deviation over the seeds. "
        "The sweep's columns (other N; see above) and the training loss are shown, not judged."
    )


# evaluate.resize, in words (`none`: the randconv stand-in takes the images as they are)
RESIZES = {
    "legacy": "legacy, TensorFlow 1 bilinear to 299×299, as published FIDs",
    "antialias": "antialiased bilinear to 299×299, not comparable with published FIDs",
}


def _sampling(s: dict) -> str:
    """samples.json's settings in a sentence (compare has checked that every run's are the same)."""
    chain = f"DDPM, {s['variance']}" if s["sampler"] == "ddpm" else sampling_name(s)
    chain += f", η = {s['eta']}" if s["sampler"] == "ddim" else ""
    return f"Sampling: {chain}, x_0 kept in [-1, 1] by {s.get('clip_mode', 'unrecorded')}, seed {s['seed']}."


def conditions(results: list[RunResult]) -> str:
    """What every number was measured with, in a sentence or three."""
    e, sweep = results[0].evaluation, results[0].sweep
    seeds = sorted({r.seed for r in results})
    lines = [
        f"Training seeds: {', '.join(map(str, seeds))} (each schedule trained once per seed, the same seeds for "
        "every schedule).",
        knob_sentence(results, label),
        f"{e['num_samples']} samples per run against {e['num_real']} real (training) images; features: "
        f"{e['feature_extractor']} ({e['feature_dim']}-d; weights: {e['weights']}; resize: "
        f"{RESIZES.get(e['resize'], e['resize'])}).",
    ]
    if results[0].drawn:
        lines.append(_sampling(results[0].drawn["sample"]))
    if "bootstrap" in e:
        lines.append(f"Bootstrap: {e['bootstrap']} resamples of the samples' features, the real statistics fixed, the "
                     "same resampled rows for every run.")  # fmt: skip
    if "nll_bpd" in e:
        lines.append(f"Likelihood: the variational bound (Ho et al. eq. 5) in bits/dim on {e['nll_images']} held-out "
                     f"images never trained on, every timestep, the UNet in float32, reverse variance "
                     f"{e['nll_variance']}, x_0 kept in range by {e['nll_clip_mode']}.")  # fmt: skip
        lines += _decoder_floors(results)
    if sweep:
        lines.append(sweep_conditions(sweep))
    return " ".join(lines)


def _decoder_floors(results: list[RunResult]) -> list[str]:
    """What the decoder's fixed width costs each schedule, where eval.json holds it (an older one does not)."""
    floors = {r.name: r.evaluation["nll_decoder_floor_bpd"] for r in results if "nll_decoder_floor_bpd" in r.evaluation}
    if not floors:
        return []
    shown = ", ".join(f"{name} {floor:.3f}" for name, floor in floors.items())
    timesteps = results[0].model["diffusion"]["timesteps"]
    return [f"Its decoder term L_0 has a floor that even a network predicting x_0 exactly pays, "
            f"−log₂(2Φ(1/(255σ₁)) − 1), σ₁ the decoder's fixed standard deviation, which the schedule's first "
            f"steps set (at T = {timesteps}): {shown} bits/dim; the difference of two schedules' floors is part "
            "of their gap in bits/dim, and it is the schedule's, not the network's."]  # fmt: skip


def _number(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def _p_value(p: float | None) -> str:
    """A p-value; 0 as "< 1e-15", the digits a float's tail keeps (ddpm.student)."""
    return "< 1e-15" if p == 0 else _number(p)


def likelihood_table(rows: list[dict[str, Any]]) -> list[str]:
    """The bound in its three parts per schedule (they sum to the NLL column), with L_0's floor; none
    where the runs' eval.json do not split it."""
    parts = ("nll_decoder_bpd", "nll_decoder_floor_bpd", "nll_diffusion_bpd", "nll_prior_bpd", "nll_bpd")
    if not all(k in row for row in rows for k in parts):
        return []
    lines = [
        "| schedule | L_0 (decoder) | its floor | L_1 + … + L_{T−1} | L_T (prior) | total |",
        "|---|" + "---:|" * 5,
    ]
    lines += [f"| {row['schedule']} | " + " | ".join(f"{row[k]:.3f}" for k in parts) + " |" for row in rows]
    return [*lines, ""]


def verdicts_section(verdicts: list[Verdict], primary: str, fid: str) -> list[str]:
    """The section "Which differences are real": what is tested, how it is corrected, and the table of verdicts."""
    if not verdicts:
        return ["One schedule: nothing to compare."]
    judged = sum(v.judged for v in verdicts)
    declared = (
        f"The primary test, declared in advance (compare.primary: {primary}, the metric {primary_metric(fid, primary)})"
    )
    first = f"{declared}, is listed first." if any(v.primary for v in verdicts) else f"{declared}, was not measured."
    text = [
        "Every pair of schedules is tested on every metric below; gap = first − second, lower is better. With "
        "several training seeds the test is a paired Student t on the per-seed differences (n − 1 degrees of "
        "freedom): a seed gives both schedules the same initial weights, batches and x_T. With one seed, FID, "
        "FID_∞ and KID are tested by a paired bootstrap (the same resampled samples on both sides; SE the standard "
        "deviation of the resampled gaps, p from Student's t at N − 1 degrees of freedom, the normal at thousands of "
        "samples) and NLL by a paired t over the held-out images: that measures sampling noise at this training seed "
        "only.",
        "",
        f"The {judged} tests are one family, corrected by Holm–Bonferroni at a family-wise error rate α = "
        f"{ALPHA:g}: a difference is called real when its Holm-adjusted p ≤ {ALPHA:g}. {first} The others are "
        "secondary, in the same family under the same correction, so testing them does not raise the chance of any "
        "false verdict. Not judged: the training loss (the same ε-loss is a different task under each schedule) and "
        "the sweep's columns (each point is FID_N again at another number of steps, shown with its bootstrap SD; "
        "judging them too would only widen the family).",
        "",
    ]
    if verdicts[0].seeds == 1:
        text += [f"**One training seed**: a real difference below is {ONE_SEED}.", ""]
    text += ["| pair | metric | gap | SE | p | p (Holm) | test | verdict |", "|---|---|---:|---:|---:|---:|---|---|"]
    for v in verdicts:
        numbers = [_number(x) for x in (v.gap, v.se)] + [_p_value(x) for x in (v.p, v.p_holm)]
        metric = f"**{v.metric}** (primary)" if v.primary else v.metric
        test = v.test if v.judged else "–"
        text.append(f"| {v.first} − {v.second} | {metric} | " + " | ".join(numbers) + f" | {test} | {v.words()} |")
    return text


def markdown_report(rows: list[dict[str, Any]], verdicts: list[Verdict], primary: str, results: list[RunResult]) -> str:
    timesteps = results[0].model["diffusion"]["timesteps"]
    return "\n".join(
        [
            "# Beta schedules compared"
            + (" (and variants of them)" if any(r.model.get("variant") for r in results) else ""),
            "",
            conditions(results),
            "",
            markdown_table(rows),
            "",
            legend(rows),
            "",
            timing_table(rows),
            "",
            "## Which differences are real",
            "",
            *verdicts_section(verdicts, primary, metric_names(rows[0])[0]),
            "",
            "## Where each schedule spends its bits",
            "",
            *likelihood_table(rows),
            f"![bits/dim per timestep]({layout.NLL_TERMS_PICTURE})",
            "",
            "## FID against the number of network evaluations, per sampler",
            "",
            *best_sampler_table(results),
            f"![FID against NFE per sampler]({layout.SWEEP_PICTURE})",
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
            *memorization_section(results),
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

    checked_names([name for name in names if name not in config.variants])
    with folder_lock(out_dir), session(config.tracking, None) as tracked:
        rows, files, linked = compare(
            names,
            config.seeds,
            runs_dir,
            data,
            out_dir,
            ready=tracked.open,
            primary=config.compare.primary,
            variants=config.variants,
        )
        if tracked.store:
            compare_run(tracked.store, names, rows, files, linked)
    return rows
