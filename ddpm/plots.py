"""The pictures: the beta schedules (alphā(t) and log-SNR(t), the forward process strip) and the
comparison's plots of trained schedules (bits/dim per timestep, FID against steps, losses, samples).

matplotlib is imported inside the functions, on the file-only Agg backend, so nothing else needs it.
"""

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ddpm.config import Config
from ddpm.data import first_image, to_uint8, to_unit_range
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import UserError
from ddpm.files import atomic_outputs
from ddpm.layout import FORWARD_PICTURE, SCHEDULES_PICTURE
from ddpm.results import RunResult, by_schedule, label, metric_names
from ddpm.schedules import SCHEDULES, beta_schedule, process_betas
from ddpm.spacing import SAMPLER_NAMES
from ddpm.sweep_report import sweep_point, swept

STRIP_STEPS = 10  # columns of the forward-process strip
LINE_STYLES = ("-", "--", ":", "-.")  # the processes' curves in turn: two runs of one process (a variant of
# the loss alone) lie on each other, and a dashed line over a solid one shows both


def _pyplot():  # noqa: ANN202
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:  # noqa: ANN001
    """The figure as the picture `path` (a temporary file of `atomic_outputs`: the callers write sets)."""
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def process_specs(names: list[str] | None, config: Config) -> dict[str, dict[str, Any]]:
    """label → diffusion spec (a checkpoint's `diffusion` form: schedule, timesteps, zero_terminal_snr,
    input_scale) of each of `names` (default: every schedule), a schedule with the knobs of `config` or a
    variant with its own (`config.variants`); a schedule's label names the knobs that are not the default."""
    names = names or list(SCHEDULES)
    checked_names([name for name in names if name not in config.variants], config.diffusion.timesteps)
    specs = {}
    for name in names:
        spec, plain = config.for_run(name).diffusion.model_dump(), name not in config.variants
        suffix = ", zero terminal SNR" if spec["zero_terminal_snr"] and plain else ""
        suffix += f", b = {spec['input_scale']:g}" if spec["input_scale"] != 1 and plain else ""
        specs[f"{name}{suffix}"] = spec
    return specs


def _betas(spec: dict[str, Any]) -> torch.Tensor:
    """The betas of a checkpoint's `diffusion` entry (one older than a knob lacks it: its default)."""
    return process_betas(spec["schedule"], spec["timesteps"], spec.get("zero_terminal_snr", False),
                         spec.get("input_scale", 1.0))  # fmt: skip


def log_snr_curve(alphas_cumprod: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(t/T, log-SNR(t) = log(alphā/(1 − alphā))) at the t where it is finite: a zero-terminal-SNR
    schedule's last point, log 0 = −inf, is left out (the curve falls towards it off the axes)."""
    t = np.arange(1, len(alphas_cumprod) + 1) / len(alphas_cumprod)
    kept = alphas_cumprod > 0
    return t[kept], np.log(alphas_cumprod[kept]) - np.log1p(-alphas_cumprod[kept])


def plot_processes(processes: dict[str, dict[str, Any]], path: Path) -> None:
    """alphā(t) and log-SNR(t) (`log_snr_curve`) of each process (label → spec), over t/T, side by side."""
    fig, (left, right) = _pyplot().subplots(1, 2, figsize=(10, 4))
    for i, (name, spec) in enumerate(processes.items()):
        alphas_cumprod = torch.cumprod(1 - _betas(spec), 0).numpy()
        style = {"linestyle": LINE_STYLES[i % len(LINE_STYLES)], "label": name}
        left.plot(np.arange(1, len(alphas_cumprod) + 1) / len(alphas_cumprod), alphas_cumprod, **style)
        t, log_snr = log_snr_curve(alphas_cumprod)
        colour = right.plot(t, log_snr, **style)[0].get_color()
        if len(t) < len(alphas_cumprod):  # zero terminal SNR: an arrow down from the last finite point, to −∞ at T
            right.annotate("−∞ at T", (t[-1], log_snr[-1]), xytext=(t[-1] - 0.12, log_snr[-1] - 1), color=colour,
                           arrowprops={"arrowstyle": "<-", "color": colour}, fontsize=8)  # fmt: skip
    left.set(xlabel="t / T", ylabel="alphā(t)", title="signal kept, alphā(t)")
    right.set(xlabel="t / T", ylabel="log SNR(t)", title="log signal-to-noise ratio")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"beta schedules, T = {', '.join(sorted({str(s['timesteps']) for s in processes.values()}))}")
    fig.tight_layout()
    _save(fig, path)


def noised_strip(
    processes: dict[str, dict[str, Any]], image: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, list[int]]:
    """One image (uint8, (3, H, W)) drawn from q(x_t | x_0) at STRIP_STEPS evenly spaced t from 0 to
    T − 1, a row per process (label → spec, one T), with the same noise in every row so that only the
    process differs. Returns the uint8 picture (rows·H, STRIP_STEPS·W, 3) and the t of each column."""
    x0 = to_unit_range(torch.tensor(image))[None].double()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    timesteps = next(iter(processes.values()))["timesteps"]
    steps = [int(t) for t in np.linspace(0, timesteps - 1, STRIP_STEPS).round()]
    rows = []
    for spec in processes.values():
        diffusion = GaussianDiffusion(_betas(spec))
        x_t = [diffusion.q_sample(x0, torch.tensor([t]), noise)[0] for t in steps]
        rows.append(torch.cat([to_uint8(x) for x in x_t], dim=2))  # (3, H, STRIP_STEPS·W)
    return torch.cat(rows, dim=1).permute(1, 2, 0).numpy(), steps


def forward_processes(processes: dict[str, dict[str, Any]], image: np.ndarray, path: Path, seed: int = 0) -> None:
    """`noised_strip` as a labelled picture: processes down the side, t along the bottom."""
    strip, steps = noised_strip(processes, image, seed)
    h, w = image.shape[1:]
    fig, ax = _pyplot().subplots(figsize=(1.1 * STRIP_STEPS + 1.5, 1.1 * len(processes) + 1))
    ax.imshow(strip, interpolation="nearest")
    ax.set_xticks([(i + 0.5) * w for i in range(STRIP_STEPS)], [f"t={t}" for t in steps])
    ax.set_yticks([(i + 0.5) * h for i in range(len(processes))], list(processes))
    ax.tick_params(length=0)
    ax.set_title(f"forward process q(x_t | x_0), T = {steps[-1] + 1}, the same noise in every row")
    fig.tight_layout()
    _save(fig, path)


def _empty(ax, text: str) -> None:  # noqa: ANN001
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def plot_nll_terms(results: list[RunResult], path: Path) -> None:
    """Where each schedule spends its bits: the bound's term at each timestep (bits/dim, mean over
    the held-out images and the seeds), t = 1 being the decoder L_0."""
    fig, ax = _pyplot().subplots(figsize=(8, 4.5))
    measured = {name: runs for name, runs in by_schedule(results).items() if all(r.nll_terms is not None for r in runs)}
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


# each sampler's line style and marker in sweep.png; a schedule's lines share its colour
SAMPLER_LINES = {"ddim": ("-", "o"), "dpmsolver++": ("--", "s")}


def plot_sweep(results: list[RunResult], path: Path) -> None:
    """FID against the number of network evaluations (NFE): a line per schedule × sampler (colour: the
    schedule, line style: the sampler; mean over the seeds) and DDPM at full length as a point, each ±
    its bootstrap SD where measured (`sweep_point`), titled with the N of samples per point."""
    fig, ax = _pyplot().subplots(figsize=(8, 4.5))
    schedules = swept(results)
    if not schedules:
        _empty(ax, "no sweep ran (`ddpm sweep`)")
    for i, (name, runs) in enumerate(schedules.items()):
        for sampler in runs[0].sweep["samplers"]:
            steps, fids, sd = sweep_point(runs, sampler)
            style, marker = SAMPLER_LINES[sampler]
            ax.errorbar([int(k) for k in steps], fids, yerr=sd, marker=marker, linestyle=style, capsize=3,
                        color=f"C{i}", label=f"{name}, {SAMPLER_NAMES[sampler]}")  # fmt: skip
        full, fids, sd = sweep_point(runs, "ddpm")
        ax.errorbar([int(full[0])], fids, yerr=sd, marker="*", markersize=12, capsize=3, linestyle="none",
                    color=f"C{i}", label=f"{name}, DDPM ({full[0]} steps)")  # fmt: skip
    if schedules:
        first = next(iter(schedules.values()))[0].sweep
        counts = sorted({int(k) for s in (*first["samplers"], "ddpm") for k in first[s]})
        labelled = f"{first['metric']} (N = {first['num_samples']:,})"
        ax.set(xscale="log", xlabel=f"network evaluations (NFE; {first['spacing']} spacing)", ylabel=labelled,
               title=f"{labelled} against the number of network evaluations")  # fmt: skip
        ax.set_xticks(counts, [str(k) for k in counts])  # the counts swept, not powers of ten
        ax.minorticks_off()
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path)


def plot_losses(results: list[RunResult], path: Path) -> None:
    fig, ax = _pyplot().subplots(figsize=(8, 4.5))
    for r in results:
        ax.plot(r.losses[:, 0], r.losses[:, 1], label=label(r))
    ax.set(xlabel="training step", ylabel="loss (mean over each log interval)", yscale="log", title="training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_quality(results: list[RunResult], path: Path) -> None:
    """FID_N and KID of EMA samples against the training step (quality.csv, train.eval_every): a line
    per schedule × seed, every point of every line from the same x_T."""
    fig, axes = _pyplot().subplots(1, 2, figsize=(11, 4.5))
    measured = [r for r in results if r.quality is not None]
    for ax in axes if not measured else []:
        _empty(ax, "not measured during training (train.eval_every: 0)")
    for r in measured:
        for ax, prefix in zip(axes, ("fid", "kid"), strict=True):
            name = next(key for key in r.quality if key.startswith(prefix))
            ax.plot(r.quality["step"], r.quality[name], marker="o", label=label(r))
            ax.set(xlabel="training step", ylabel=name, title=f"{name} of EMA samples during training")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_sample_grids(results: list[RunResult], rows: list[dict[str, Any]], path: Path) -> None:
    """The sample grids side by side, each titled with its schedule and FID."""
    fig, axes = _pyplot().subplots(1, len(results), figsize=(4.5 * len(results), 5), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        fid = metric_names(r.evaluation)[0]
        ax.imshow(np.asarray(Image.open(r.grid).convert("RGB")), interpolation="nearest")
        ax.set_title(f"{label(r)}: {fid} {r.evaluation[fid]:.2f}")
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)


def plot_nearest(closest: dict[str, tuple[list[list[int | float]], np.ndarray, np.ndarray]], path: Path) -> None:
    """Each run's closest sample–training pairs, a column per pair: the sample above, its nearest
    training image below (as the distance was measured: itself or its mirror), the pixel distance on
    top. `closest`: run label → (closest_pairs, the samples (k, 3, H, W), the training images (k, 3, H, W))."""
    if not closest:
        fig, ax = _pyplot().subplots(figsize=(8, 1.5))
        _empty(ax, "nearest neighbours not measured (scored by an earlier `ddpm evaluate`)")
        _save(fig, path)
        return
    columns = max(len(pairs) for pairs, _, _ in closest.values())
    rows = 2 * len(closest)
    fig, axes = _pyplot().subplots(rows, columns, figsize=(1.3 * columns + 1, 1.4 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for r, (run, (pairs, samples, training)) in enumerate(closest.items()):
        for c, ((i, j, distance), sample, image) in enumerate(zip(pairs, samples, training, strict=True)):
            above, below = axes[2 * r, c], axes[2 * r + 1, c]
            above.imshow(sample.transpose(1, 2, 0), interpolation="nearest")
            below.imshow(image.transpose(1, 2, 0), interpolation="nearest")
            above.set_title(f"d₁ = {distance:.2f}", fontsize=8)
            above.text(0, -0.05, f"sample {i}", transform=above.transAxes, va="top", fontsize=6)
            below.text(0, -0.05, f"training {j}", transform=below.transAxes, va="top", fontsize=6)
        axes[2 * r, 0].text(-0.15, 0, run, transform=axes[2 * r, 0].transAxes, rotation=90, ha="right", fontsize=9)
    fig.suptitle("the samples nearest to a training image (above) and that image (below), pixel distance d₁")
    fig.tight_layout()
    _save(fig, path)


def schedule_pictures(processes: dict[str, dict[str, Any]], data: Path, image_size: int, out_dir: Path) -> list[Path]:
    """`ddpm schedules`: the curves of the processes (label → spec, `process_specs`) and the forward
    process of the first prepared image at `data` (a synthetic flower of `image_size` where there is
    none) under each."""
    image = first_image(data, image_size)
    curves, forward = out_dir / SCHEDULES_PICTURE, out_dir / FORWARD_PICTURE
    with atomic_outputs() as output:
        plot_processes(processes, output(curves))
        forward_processes(processes, image, output(forward))
    return [curves, forward]


def checked_names(names: list[str], timesteps: int = 1000) -> list[str]:
    """`names`, each checked to be a known schedule (that works with `timesteps` steps)."""
    for name in names:
        try:
            beta_schedule(name, timesteps)
        except ValueError as e:
            raise UserError(str(e)) from None
    return names
