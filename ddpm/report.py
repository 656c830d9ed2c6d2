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
from ddpm.files import atomic_output, write_json
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


# The comparison of trained schedules: what each schedule's stages wrote, in its folder runs/<schedule>.
TRAIN_METRICS, LOSSES, EVAL_METRICS, SAMPLE_GRID = "train.json", "losses.csv", "eval.json", "samples/grid.png"
EVAL_RUN = "mlflow_eval_run.json"  # ddpm.tracking.EVAL_RUN_FILE, read here without importing MLflow


@dataclass
class ScheduleResult:
    name: str
    model: dict[str, Any]  # model.pt's description: arch, diffusion (schedule, T), step
    train: dict[str, Any]  # train.json
    evaluation: dict[str, Any]  # eval.json
    losses: np.ndarray  # (k, 2): step, loss
    grid: Path
    run_id: str | None  # the MLflow child run holding the scores, where tracking was on


def read_results(names: list[str], runs_dir: Path) -> list[ScheduleResult]:
    """Every schedule's results; a clear error naming the first file missing and the stage that writes it."""
    makers = {"model.pt": "train", TRAIN_METRICS: "train", LOSSES: "train", EVAL_METRICS: "evaluate",
              SAMPLE_GRID: "sample"}  # fmt: skip
    results = []
    for name in names:
        folder = runs_dir / name
        for file, stage in makers.items():
            if not (folder / file).is_file():
                raise UserError(f"{folder / file}: not found; run `ddpm {stage} --beta-schedule {name}` first")
        try:
            train, evaluation = (json.loads((folder / f).read_text()) for f in (TRAIN_METRICS, EVAL_METRICS))
            losses = np.loadtxt(folder / LOSSES, delimiter=",", skiprows=1, ndmin=2)
            run_id = json.loads((folder / EVAL_RUN).read_text())["run_id"] if (folder / EVAL_RUN).is_file() else None
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{folder}: unreadable results ({e}); run its stages again") from None
        for file, content, stage in ((TRAIN_METRICS, train, "train"), (EVAL_METRICS, evaluation, "evaluate")):
            _check_shape(folder / file, content, stage, name)
        model = describe(folder / "model.pt")
        results.append(ScheduleResult(name, model, train, evaluation, losses, folder / SAMPLE_GRID, run_id))
    scored = [r.evaluation for r in results]
    for what, values in (
        ("feature extractors (evaluate.feature_extractor)", [e.get("feature_extractor") for e in scored]),
        ("extractor weights (sha256)", [e.get("weights_sha256") for e in scored]),
        ("resizes (evaluate.resize)", [e.get("resize") for e in scored]),
        ("sample counts (sample.num_samples)", [e.get("num_samples") for e in scored]),
        ("real image sets", [(e.get("num_real"), e.get("real_sha256")) for e in scored]),
        ("numbers of timesteps T", [r.model["diffusion"]["timesteps"] for r in results]),
        ("image sizes", [r.model["arch"]["image_size"] for r in results]),
    ):
        if len(set(map(str, values))) > 1:
            shown = ", ".join(f"{r.name}: {v}" for r, v in zip(results, values, strict=True))
            raise UserError(f"the schedules were run with different {what} ({shown}); compare like with like")
    return results


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


def table_rows(results: list[ScheduleResult]) -> list[dict[str, Any]]:
    """One row per schedule; the FID and KID columns keep the metric's own name (fid, or fid_<extractor>)."""
    rows = []
    for r in results:
        fid, kid, kid_std = metric_names(r.evaluation)
        rows.append({
            "schedule": r.name, fid: r.evaluation[fid], kid: r.evaluation[kid], kid_std: r.evaluation[kid_std],
            "final_loss": r.train["final_loss"], "steps": r.train["steps"],
            "train_seconds": r.train["train_seconds"], "images_per_second": r.train["images_per_second"],
        })  # fmt: skip
    return rows


def compare(
    names: list[str],
    runs_dir: Path,
    data: Path,
    out_dir: Path,
    ready: Callable[[], None] | None = None,
) -> tuple[list[dict[str, Any]], list[Path], dict[str, str]]:
    """The comparison report in `out_dir`: report.md with the table and every picture; the table as
    comparison.csv and .json; scores.csv (FID per schedule); schedules.png (alphā, log-SNR);
    losses.png; forward.png (the first image of `data`, or a synthetic flower, noised by each
    schedule); samples.png (the sample grids side by side). T and the image size are the
    checkpoints'. Returns the rows, the files and each schedule's MLflow child run (where tracked).
    `ready` is called once every input is read."""
    results = read_results(names, runs_dir)
    if ready:
        ready()
    timesteps, image_size = results[0].model["diffusion"]["timesteps"], results[0].model["arch"]["image_size"]
    image = load_images(data)[0] if data.exists() else synthetic_flowers(1, image_size)[0]
    rows = table_rows(results)
    files = {name: out_dir / name for name in ("schedules.png", "losses.png", "forward.png", "samples.png")}
    plot_schedules(names, timesteps, files["schedules.png"])
    plot_losses(results, files["losses.png"])
    forward_strip(names, timesteps, image, files["forward.png"])
    plot_sample_grids(results, rows, files["samples.png"])
    write_json(out_dir / "comparison.json", rows)
    with atomic_output(out_dir / "comparison.csv") as tmp:
        tmp.write_text(",".join(rows[0]) + "\n" + "".join(",".join(map(str, row.values())) + "\n" for row in rows))
    fid = metric_names(rows[0])[0]
    with atomic_output(out_dir / "scores.csv") as tmp:  # long form, for DVC's bar plot
        tmp.write_text("schedule,metric,score\n" + "".join(f"{row['schedule']},{fid},{row[fid]}\n" for row in rows))
    with atomic_output(out_dir / "report.md") as tmp:
        tmp.write_text(markdown_report(rows, timesteps, results[0].evaluation))
    tables = [out_dir / name for name in ("report.md", "comparison.json", "comparison.csv", "scores.csv")]
    linked = {r.name: r.run_id for r in results if r.run_id}
    return rows, [*tables, *files.values()], linked


def plot_losses(results: list[ScheduleResult], path: Path) -> None:
    fig, ax = _pyplot().subplots(figsize=(8, 4.5))
    for r in results:
        ax.plot(r.losses[:, 0], r.losses[:, 1], label=r.name)
    ax.set(xlabel="training step", ylabel="loss (mean over each log interval)", yscale="log", title="training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_sample_grids(results: list[ScheduleResult], rows: list[dict[str, Any]], path: Path) -> None:
    """The sample grids side by side, each titled with its schedule and FID."""
    fig, axes = _pyplot().subplots(1, len(results), figsize=(4.5 * len(results), 5), squeeze=False)
    for ax, r, row in zip(axes[0], results, rows, strict=True):
        fid = metric_names(row)[0]
        ax.imshow(np.asarray(Image.open(r.grid).convert("RGB")), interpolation="nearest")
        ax.set_title(f"{r.name}: {fid} {row[fid]:.2f}")
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The comparison table, as report.md holds it and `ddpm compare` prints it."""
    fid, kid, kid_std = metric_names(rows[0])
    lines = [
        f"| schedule | {fid} | {kid} (± std) | final loss | steps | training time | img/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['schedule']} | {row[fid]:.2f} | {row[kid]:.4f} ± {row[kid_std]:.4f} | {row['final_loss']:.4f} "
            f"| {row['steps']} | {_duration(row['train_seconds'])} | {row['images_per_second']:.0f} |"
        )
    return "\n".join(lines)


# evaluate.resize, in words (`none`: the randconv stand-in takes the images as they are)
RESIZES = {
    "legacy": "legacy, TensorFlow 1 bilinear to 299×299, as published FIDs",
    "antialias": "antialiased bilinear to 299×299, not comparable with published FIDs",
}


def markdown_report(rows: list[dict[str, Any]], timesteps: int, evaluation: dict[str, Any]) -> str:
    return "\n".join(
        [
            "# Beta schedules compared",
            "",
            f"{evaluation['num_samples']} samples per schedule against {evaluation['num_real']} real images; "
            f"features: {evaluation['feature_extractor']} ({evaluation['feature_dim']}-d; "
            f"weights: {evaluation['weights']}; resize: {RESIZES.get(evaluation['resize'], evaluation['resize'])}).",
            "",
            markdown_table(rows),
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
