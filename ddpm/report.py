"""Pictures of the beta schedules (alphā(t) and log-SNR(t) curves, the forward process strip) and
the comparison report of trained schedules (a table, the loss curves, the sample grids).

Only the plotting imports matplotlib, and it does so inside the functions, so the training core
never needs it.
"""

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ddpm.checkpoint import describe
from ddpm.data import load_images, synthetic_flowers, to_uint8, to_unit_range
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import UserError
from ddpm.files import atomic_output, sha256_hex, write_json
from ddpm.schedules import beta_schedule

STRIP_STEPS = 10  # columns of the forward-process strip


def _pyplot():  # noqa: ANN202
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:  # noqa: ANN001
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
    _pyplot().close(fig)


def plot_schedules(names: list[str], timesteps: int, path: Path) -> None:
    """alphā(t) and log-SNR(t) = log(alphā/(1 − alphā)) of each schedule, over t/T, side by side."""
    fig, (left, right) = _pyplot().subplots(1, 2, figsize=(10, 4))
    t = np.arange(1, timesteps + 1) / timesteps
    for name in names:
        alphas_cumprod = torch.cumprod(1 - beta_schedule(name, timesteps), 0).numpy()
        left.plot(t, alphas_cumprod, label=name)
        right.plot(t, np.log(alphas_cumprod / (1 - alphas_cumprod)), label=name)
    left.set(xlabel="t / T", ylabel="alphā(t)", title="signal kept, alphā(t)")
    right.set(xlabel="t / T", ylabel="log SNR(t)", title="log signal-to-noise ratio")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"beta schedules, T = {timesteps}")
    fig.tight_layout()
    _save(fig, path)


def noised_strip(names: list[str], timesteps: int, image: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """One image (uint8, (3, H, W)) drawn from q(x_t | x_0) at STRIP_STEPS evenly spaced t from 0 to
    T − 1, a row per schedule, with the same noise in every row so that only the schedule differs.
    Returns the uint8 picture (rows·H, STRIP_STEPS·W, 3) and the t of each column."""
    x0 = to_unit_range(torch.tensor(image))[None].double()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    steps = [int(t) for t in np.linspace(0, timesteps - 1, STRIP_STEPS).round()]
    rows = []
    for name in names:
        diffusion = GaussianDiffusion(beta_schedule(name, timesteps))
        x_t = [diffusion.q_sample(x0, torch.tensor([t]), noise)[0] for t in steps]
        rows.append(torch.cat([to_uint8(x) for x in x_t], dim=2))  # (3, H, STRIP_STEPS·W)
    return torch.cat(rows, dim=1).permute(1, 2, 0).numpy(), steps


def forward_strip(names: list[str], timesteps: int, image: np.ndarray, path: Path, seed: int = 0) -> None:
    """`noised_strip` as a labelled picture: schedules down the side, t along the bottom."""
    strip, steps = noised_strip(names, timesteps, image, seed)
    h, w = image.shape[1:]
    fig, ax = _pyplot().subplots(figsize=(1.1 * STRIP_STEPS + 1.5, 1.1 * len(names) + 1))
    ax.imshow(strip, interpolation="nearest")
    ax.set_xticks([(i + 0.5) * w for i in range(STRIP_STEPS)], [f"t={t}" for t in steps])
    ax.set_yticks([(i + 0.5) * h for i in range(len(names))], names)
    ax.tick_params(length=0)
    ax.set_title(f"forward process q(x_t | x_0), T = {timesteps}, the same noise in every row")
    fig.tight_layout()
    _save(fig, path)


# The comparison of trained schedules: what each run's stages wrote, in runs/<schedule>/seed<k>.
TRAIN_METRICS, LOSSES, EVAL_METRICS, SAMPLE_GRID = "train.json", "losses.csv", "eval.json", "samples/grid.png"
SWEEP, NLL_TERMS = "sweep.json", "nll_terms.csv"  # optional: `ddpm sweep`; the likelihood of `ddpm evaluate`
EVAL_RUN = "mlflow_eval_run.json"  # ddpm.tracking.EVAL_RUN_FILE, read here without importing MLflow
SPREAD_FACTOR = 2.0  # a difference is called real when it exceeds this many combined standard errors
Z_95 = 1.959964  # the normal quantile of a two-sided 95 % interval


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


def run_folder(runs_dir: Path, name: str, seed: int) -> Path:
    return runs_dir / name / f"seed{seed}"


def read_results(names: list[str], seeds: list[int], runs_dir: Path) -> list[RunResult]:
    """Every schedule's results for every seed; a clear error naming the first file missing and the
    command that writes it, or the first condition that differs between the runs."""
    makers = {"model.pt": "train", TRAIN_METRICS: "train", LOSSES: "train", EVAL_METRICS: "evaluate",
              SAMPLE_GRID: "sample"}  # fmt: skip
    results = []
    for name in names:
        for seed in seeds:
            results.append(_read_run(run_folder(runs_dir, name, seed), name, seed, makers))
    _check_comparable(results)
    return results


def _read_run(folder: Path, name: str, seed: int, makers: dict[str, str]) -> RunResult:
    command = f"--beta-schedule {name}" + (f" --seed {seed}" if seed else "")
    for file, stage in makers.items():
        if not (folder / file).is_file():
            selects = command if stage == "train" else command.replace("--seed", "--set train.seed=").replace("= ", "=")
            raise UserError(f"{folder / file}: not found; run `ddpm {stage} {selects}` first")
    try:
        train, evaluation = (json.loads((folder / f).read_text()) for f in (TRAIN_METRICS, EVAL_METRICS))
        sweep = json.loads((folder / SWEEP).read_text()) if (folder / SWEEP).is_file() else None
        losses = np.loadtxt(folder / LOSSES, delimiter=",", skiprows=1, ndmin=2)
        terms = None
        if "nll_bpd" in evaluation and (folder / NLL_TERMS).is_file():
            terms = np.loadtxt(folder / NLL_TERMS, delimiter=",", skiprows=1, ndmin=2)[:, 1]
        run_id = json.loads((folder / EVAL_RUN).read_text())["run_id"] if (folder / EVAL_RUN).is_file() else None
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise UserError(f"{folder}: unreadable results ({e}); run its stages again") from None
    for file, content, stage in ((TRAIN_METRICS, train, "train"), (EVAL_METRICS, evaluation, "evaluate")):
        _check_shape(folder / file, content, stage, name)
    _check_same_model(folder, {EVAL_METRICS: evaluation, SWEEP: sweep}, command)
    model = describe(folder / "model.pt")
    return RunResult(name, seed, model, train, evaluation, sweep, terms, losses, folder / SAMPLE_GRID, run_id)


def _check_same_model(folder: Path, scored: dict[str, dict[str, Any] | None], command: str) -> None:
    """A one-line error where eval.json or sweep.json scored another model than the model.pt beside it
    (retrained since): a table must never pair one model's training with another's scores."""
    model = None
    for file, content in scored.items():
        recorded = (content or {}).get("checkpoint_sha256")
        if recorded is None:
            continue
        model = model or sha256_hex(folder / "model.pt")
        if recorded != model:
            redo = "sample` and `ddpm evaluate" if file == EVAL_METRICS else "sweep"
            raise UserError(f"{folder / file}: scores an earlier model than {folder / 'model.pt'} (retrained since); "
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
            shown = ", ".join(f"{_label(r)}: {v}" for r, v in zip(results, values, strict=True))
            raise UserError(f"the schedules were run with different {what} ({shown}); compare like with like")


def _label(r: RunResult) -> str:
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
    sampling steps); losses.png; forward.png (the first image of `data`, or a synthetic flower,
    noised by each schedule); samples.png (the first seed's sample grids side by side). T and the
    image size are the checkpoints'. Returns the rows, the files and each run's MLflow child run
    (where tracked). `ready` is called once every input is read."""
    results = read_results(names, seeds, runs_dir)
    if ready:
        ready()
    timesteps, image_size = results[0].model["diffusion"]["timesteps"], results[0].model["arch"]["image_size"]
    image = load_images(data)[0] if data.exists() else synthetic_flowers(1, image_size)[0]
    rows = table_rows(results)
    pictures = ("schedules.png", "nll_terms.png", "sweep.png", "losses.png", "forward.png", "samples.png")
    files = {name: out_dir / name for name in pictures}
    plot_schedules(names, timesteps, files["schedules.png"])
    plot_nll_terms(results, files["nll_terms.png"])
    plot_sweep(results, files["sweep.png"])
    plot_losses(results, files["losses.png"])
    forward_strip(names, timesteps, image, files["forward.png"])
    plot_sample_grids([r for r in results if r.seed == seeds[0]], rows, files["samples.png"])
    write_json(out_dir / "comparison.json", rows)
    keys = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_output(out_dir / "comparison.csv") as tmp:
        tmp.write_text(
            ",".join(keys) + "\n" + "".join(",".join(str(row.get(k, "")) for k in keys) + "\n" for row in rows)
        )
    fid = metric_names(rows[0])[0]
    with atomic_output(out_dir / "scores.csv") as tmp:  # long form, for DVC's bar plot
        tmp.write_text("schedule,metric,score\n" + "".join(f"{row['schedule']},{fid},{row[fid]}\n" for row in rows))
    with atomic_output(out_dir / "report.md") as tmp:
        tmp.write_text(markdown_report(rows, results, timesteps))
    tables = [out_dir / name for name in ("report.md", "comparison.json", "comparison.csv", "scores.csv")]
    linked = {_label(r): r.run_id for r in results if r.run_id}
    return rows, [*tables, *files.values()], linked


def _by_schedule(results: list[RunResult]) -> dict[str, list[RunResult]]:
    grouped: dict[str, list[RunResult]] = {}
    for r in results:
        grouped.setdefault(r.name, []).append(r)
    return grouped


def _empty(ax, text: str) -> None:  # noqa: ANN001
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def plot_nll_terms(results: list[RunResult], path: Path) -> None:
    """Where each schedule spends its bits: the bound's term at each timestep (bits/dim, mean over
    the held-out images and the seeds), t = 1 being the decoder L_0."""
    fig, ax = _pyplot().subplots(figsize=(8, 4.5))
    measured = {
        name: runs for name, runs in _by_schedule(results).items() if all(r.nll_terms is not None for r in runs)
    }
    if not measured:
        _empty(ax, "no likelihood measured (evaluate.nll_images: 0)")
    for name, runs in measured.items():
        terms = np.mean([r.nll_terms for r in runs], axis=0)
        ax.plot(np.arange(1, len(terms) + 1), terms, label=f"{name}: {terms.sum():.3f} bits/dim in all")
    if measured:
        ax.set(xlabel="timestep t (1: the decoder L_0)", ylabel="bits/dim", yscale="log",
               title="the likelihood bound, term by term (L_T not shown)")  # fmt: skip
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_sweep(results: list[RunResult], path: Path) -> None:
    """FID against the number of sampling steps: a DDIM line per schedule (mean over the seeds) and
    DDPM at full length as a point."""
    fig, ax = _pyplot().subplots(figsize=(8, 4.5))
    swept = {name: runs for name, runs in _by_schedule(results).items() if all(r.sweep for r in runs)}
    if not swept:
        _empty(ax, "no sweep ran (`ddpm sweep`)")
    for name, runs in swept.items():
        steps = [int(k) for k in runs[0].sweep["ddim"]]
        fids = np.mean([[r.sweep["ddim"][str(k)] for k in steps] for r in runs], axis=0)
        (line,) = ax.plot(steps, fids, marker="o", label=f"{name}, DDIM")
        (full,) = runs[0].sweep["ddpm"]
        ax.plot([int(full)], [np.mean([r.sweep["ddpm"][full] for r in runs])], marker="*", markersize=12,
                linestyle="none", color=line.get_color(), label=f"{name}, DDPM ({full} steps)")  # fmt: skip
    if swept:
        first = next(iter(swept.values()))[0].sweep
        metric, counts = first["metric"], sorted({*map(int, first["ddim"]), *map(int, first["ddpm"])})
        ax.set(xscale="log", xlabel="sampling steps", ylabel=metric, title=f"{metric} against the number of steps")
        ax.set_xticks(counts, [str(k) for k in counts])  # the step counts swept, not powers of ten
        ax.minorticks_off()
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_losses(results: list[RunResult], path: Path) -> None:
    fig, ax = _pyplot().subplots(figsize=(8, 4.5))
    for r in results:
        ax.plot(r.losses[:, 0], r.losses[:, 1], label=_label(r))
    ax.set(xlabel="training step", ylabel="loss (mean over each log interval)", yscale="log", title="training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_sample_grids(results: list[RunResult], rows: list[dict[str, Any]], path: Path) -> None:
    """The sample grids side by side, each titled with its schedule and FID."""
    fig, axes = _pyplot().subplots(1, len(results), figsize=(4.5 * len(results), 5), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        fid = metric_names(r.evaluation)[0]
        ax.imshow(np.asarray(Image.open(r.grid).convert("RGB")), interpolation="nearest")
        ax.set_title(f"{_label(r)}: {fid} {r.evaluation[fid]:.2f}")
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)


def sweep_columns(row: dict[str, Any]) -> list[str]:
    """The sweep's FIDs the table shows: at 10 and 50 DDIM steps where swept, else the first two counts."""
    fid = metric_names(row)[0]
    swept = [k for k in row if k.startswith(f"{fid}_ddim") and not k.endswith("_std_seeds")]
    wanted = [f"{fid}_ddim{k}" for k in (10, 50) if f"{fid}_ddim{k}" in swept]
    return wanted or swept[:2]


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


def standard_error(row: dict[str, Any], key: str) -> tuple[float, str] | None:
    """How far `key` of this row could move by chance, and from what: the spread over the seeds where
    there are several, else the noise one run measures (FID's bootstrap, the KID subsets, the
    held-out images); None where there is nothing to judge by."""
    seeds = len(row["seeds"].split())
    if f"{key}_std_seeds" in row:
        return row[f"{key}_std_seeds"] / np.sqrt(seeds), f"the spread over {seeds} seeds"
    if f"{key}_ci_low" in row:
        return (row[f"{key}_ci_high"] - row[f"{key}_ci_low"]) / (
            2 * Z_95
        ), "FID's bootstrap interval, sampling noise only"
    if key == "nll_bpd" and "nll_bpd_sem" in row:
        return row["nll_bpd_sem"], "the spread over the held-out images"
    if key.startswith("kid") and key.endswith("_mean"):
        return row[key.removesuffix("_mean") + "_std"], "the spread over KID's subsets"
    return None


def differences(rows: list[dict[str, Any]]) -> list[str]:
    """Per pair of schedules and metric, in words: which is lower, by how much, and whether that is
    more than SPREAD_FACTOR combined standard errors (a real difference) or within noise."""
    fid, kid, _ = metric_names(rows[0])
    keys = [fid, kid, "nll_bpd", *sweep_columns(rows[0])]  # not the loss: each schedule sets it another task
    lines = []
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            for key in keys:
                if key not in a or key not in b:
                    continue
                low, high = (a, b) if a[key] <= b[key] else (b, a)
                gap = high[key] - low[key]
                said = f"- {key}: {low['schedule']} is lower than {high['schedule']} by {gap:.4g}"
                errors = [standard_error(r, key) for r in (a, b)]
                if None in errors:
                    lines.append(f"{said}; one seed and no other measure of noise, so not judged (add seeds)")
                    continue
                combined = float(np.hypot(errors[0][0], errors[1][0]))
                sources = " and ".join(dict.fromkeys(e[1] for e in errors))
                if combined > 0 and gap > SPREAD_FACTOR * combined:
                    verdict = f"{gap / combined:.1f} combined standard errors: a real difference"
                else:
                    verdict = "within noise" + (f" ({gap / combined:.1f} combined standard errors)" if combined else "")
                lines.append(f"{said}, {verdict} (judged by {sources})")
    return lines


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
            "![bits/dim per timestep](nll_terms.png)",
            "",
            "## FID against the number of sampling steps",
            "",
            "![FID against sampling steps](sweep.png)",
            "",
            f"## Noise schedules (T = {timesteps})",
            "",
            "![alphā and log-SNR per schedule](schedules.png)",
            "",
            "## The forward process: one real image, the same noise, each schedule",
            "",
            "![forward process](forward.png)",
            "",
            "## Training loss",
            "",
            "![loss curves](losses.png)",
            "",
            "## Samples",
            "",
            "![sample grids](samples.png)",
            "",
        ]
    )


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {s:02d} s"
