"""The `ddpm` command line, one thin command per pipeline stage: each reads params.yaml (or --config),
applies `--set section.key=value` and its named options on top, calls one library function, prints."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ddpm import layout
from ddpm.errors import UserError

if TYPE_CHECKING:  # the commands import torch, pydantic and the rest only when they run: --help stays fast
    from ddpm.config import Config

app = typer.Typer(help="Denoising diffusion (DDPM) on flowers, one command per pipeline stage.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)  # fmt: skip

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="Params file [default: params.yaml, or built-in defaults if absent].")
]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", metavar="SECTION.KEY=VALUE", help="Override any param; repeatable.")
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
DataOption = Annotated[Path, typer.Option(help="The prepared real images.")]
CacheOption = Annotated[Path, typer.Option(help="Cache of the real images' features.")]
NoisedOption = Annotated[Path, typer.Option(help="Prepared images; the first is noised (a synthetic flower if none).")]
# The allowed values, for --help without importing torch (tests/test_cli.py checks them against the code)
SCHEDULE_NAMES = "linear|cosine|quadratic|sigmoid"
PRESET_NAMES = "ddpm-cifar10|learnopencv|tiny"
SOURCE_NAMES = "flowers102|cifar10|folder|synthetic"
# Named options of each command → the param each one overrides (tests/test_cli.py checks the keys)
DOWNLOAD_PARAMS = {"source": "data.source"}
PREPARE_PARAMS = {"source": "data.source", "image_size": "data.image_size"}
TRAIN_PARAMS = {"beta_schedule": "diffusion.schedule", "steps": "train.steps", "batch_size": "train.batch_size",
                "lr": "train.lr", "image_size": "data.image_size", "model": "model.preset",
                "timesteps": "diffusion.timesteps", "seed": "train.seed"}  # fmt: skip
SAMPLE_PARAMS = {"beta_schedule": "diffusion.schedule", "num_samples": "sample.num_samples",
                 "batch_size": "sample.batch_size", "sampler": "sample.sampler", "steps": "sample.steps",
                 "spacing": "sample.spacing", "eta": "sample.eta", "seed": "sample.seed"}  # fmt: skip
EVALUATE_PARAMS = {"beta_schedule": "diffusion.schedule", "feature_extractor": "evaluate.feature_extractor",
                   "inception_weights": "evaluate.inception_weights"}  # fmt: skip
SCHEDULES_PARAMS = {"timesteps": "diffusion.timesteps"}
RUN = f"{layout.RUNS}/<schedule>/seed<train.seed>"  # a model's folder, as the help texts show it
TRAINED_HELP = f"Trained model [default: {RUN}/{layout.MODEL}; --set train.seed=K picks a seed]."


def _param(key: str, metavar: str) -> Any:
    """A named option that overrides param `key`; its value is validated with the config."""
    return typer.Option(metavar=metavar, help=f"Overrides {key}.", show_default=False)


def _default(help_text: str) -> Any:
    """An optional path whose default the command works out (its help says how)."""
    return typer.Option(help=help_text, show_default=False)


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        typer.echo(f"ddpm {version('ddpm')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Denoising diffusion (DDPM) on flowers, one command per pipeline stage."""


def user_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Report a UserError as `ddpm: error: ...` on stderr with exit status 2, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except UserError as e:
            typer.echo(f"ddpm: error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _load(config: Path | None, sets: list[str] | None, params: dict[str, str], **values: str | None) -> Config:
    """The config with the --set pairs, then the named options given (`values`, by option name; `params`
    says which param each overrides), applied."""
    from ddpm.config import load_config, parse_value

    overrides = []
    for pair in sets or []:
        key, eq, value = pair.partition("=")
        if not eq:
            raise UserError(f"--set: expected SECTION.KEY=VALUE, got {pair!r}")
        overrides.append((f"--set {key}", key, parse_value(value)))
    for name, value in values.items():
        if value is not None:
            overrides.append(("--" + name.replace("_", "-"), params[name], parse_value(value)))
    return load_config(config, overrides)


def run_folder(cfg: Config) -> layout.RunFolder:  # runs/<schedule>/seed<train.seed>
    return layout.RunFolder.of(cfg.run_name, cfg.train.seed)


@app.command()
@user_errors
def download(
    source: Annotated[str | None, _param(DOWNLOAD_PARAMS["source"], SOURCE_NAMES)] = None,
    out: Annotated[Path, typer.Option(help="Download folder.")] = layout.RAW,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Fetch and verify the source images (Flowers-102 or CIFAR-10)."""
    cfg = _load(config, set_, DOWNLOAD_PARAMS, source=source)
    from ddpm.download import stage

    folder = stage(cfg.data, out)
    typer.echo(f"images in {folder}" if folder else f"data.source {cfg.data.source}: nothing to download")


@app.command()
@user_errors
def prepare(
    source: Annotated[str | None, _param(PREPARE_PARAMS["source"], SOURCE_NAMES)] = None,
    image_size: Annotated[str | None, _param(PREPARE_PARAMS["image_size"], "INT")] = None,
    raw: Annotated[Path, typer.Option(help="The download folder (source flowers102).")] = layout.RAW,
    out: Annotated[
        Path, typer.Option(help=f"Output folder: {layout.IMAGES}, {layout.HOLDOUT} and {layout.MANIFEST}.")
    ] = (layout.PREPARED),
    workers: Annotated[int, typer.Option(help="Worker processes; 0 = one per core.", min=0)] = 0,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Decode, crop and resize the images into one uint8 array."""
    cfg = _load(config, set_, PREPARE_PARAMS, source=source, image_size=image_size)
    from ddpm.data import prepare as run_prepare
    from ddpm.data import summary

    manifest = run_prepare(cfg.data, raw, out, workers)
    for entry in manifest["skipped"]:
        typer.echo(f"skipped {entry['file']}: {entry['reason']}", err=True)
    typer.echo(summary(manifest, out))


@app.command()
@user_errors
def train(
    beta_schedule: Annotated[str | None, _param(TRAIN_PARAMS["beta_schedule"], SCHEDULE_NAMES)] = None,
    steps: Annotated[str | None, _param(TRAIN_PARAMS["steps"], "INT")] = None,
    batch_size: Annotated[str | None, _param(TRAIN_PARAMS["batch_size"], "INT")] = None,
    lr: Annotated[str | None, _param(TRAIN_PARAMS["lr"], "FLOAT")] = None,
    image_size: Annotated[str | None, _param(TRAIN_PARAMS["image_size"], "INT")] = None,
    model: Annotated[str | None, _param(TRAIN_PARAMS["model"], PRESET_NAMES)] = None,
    timesteps: Annotated[str | None, _param(TRAIN_PARAMS["timesteps"], "INT")] = None,
    seed: Annotated[str | None, _param(TRAIN_PARAMS["seed"], "INT")] = None,
    data: Annotated[Path, typer.Option(help="Prepared images: uint8 .npy, (N, 3, H, W).")] = layout.TRAINING_IMAGES,
    out: Annotated[Path | None, _default(f"Output folder [default: {RUN}].")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the latest checkpoint in the output folder.")] = True,
    restart_if_changed: Annotated[
        bool, typer.Option(help="Start over, not resume, if the checkpoints were made with other settings or data.")
    ] = False,
    nproc: Annotated[int, typer.Option(help="Processes (one per GPU) through torchrun; 1: this one.", min=1)] = 1,
    device: DeviceOption = "auto",
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Train the UNet (Algorithm 1); write a checkpoint."""
    cfg = _load(config, set_, TRAIN_PARAMS, beta_schedule=beta_schedule, steps=steps, batch_size=batch_size, lr=lr,
                image_size=image_size, model=model, timesteps=timesteps, seed=seed)  # fmt: skip
    if nproc > 1 and "RANK" not in os.environ:
        from ddpm.distributed import torchrun

        raise typer.Exit(torchrun(nproc, sys.argv[1:]))
    from ddpm.distributed import device_named
    from ddpm.errors import Interrupted
    from ddpm.train import stage

    try:
        result = stage(cfg, data, out or run_folder(cfg).path, device_named(device), resume, restart_if_changed)
    except Interrupted as e:
        typer.echo(f"ddpm: stopped by {e}", err=True)
        raise typer.Exit(128 + e.signum) from None
    if result is not None:  # rank 0 alone reports under torchrun
        typer.echo(result.summary())


@app.command()
@user_errors
def sample(
    beta_schedule: Annotated[str | None, _param(SAMPLE_PARAMS["beta_schedule"], SCHEDULE_NAMES)] = None,
    num_samples: Annotated[str | None, _param(SAMPLE_PARAMS["num_samples"], "INT")] = None,
    batch_size: Annotated[str | None, _param(SAMPLE_PARAMS["batch_size"], "INT")] = None,
    sampler: Annotated[str | None, _param(SAMPLE_PARAMS["sampler"], "ddpm|ddim|dpmsolver++")] = None,
    steps: Annotated[str | None, _param(SAMPLE_PARAMS["steps"], "NFE")] = None,
    spacing: Annotated[str | None, _param(SAMPLE_PARAMS["spacing"], "linspace|leading|trailing|quadratic")] = None,
    eta: Annotated[str | None, _param(SAMPLE_PARAMS["eta"], "FLOAT")] = None,
    seed: Annotated[str | None, _param(SAMPLE_PARAMS["seed"], "INT")] = None,
    checkpoint: Annotated[Path | None, _default(TRAINED_HELP)] = None,
    out: Annotated[Path | None, _default(f"Output folder [default: {layout.SAMPLES}/ beside the checkpoint].")] = None,
    device: DeviceOption = "auto",
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Draw samples (DDPM, DDIM or DPM-Solver++); write them + pictures."""
    cfg = _load(config, set_, SAMPLE_PARAMS, beta_schedule=beta_schedule, num_samples=num_samples,
                batch_size=batch_size, sampler=sampler, steps=steps, spacing=spacing, eta=eta, seed=seed)  # fmt: skip
    from ddpm.distributed import device_named
    from ddpm.sample import stage

    checkpoint = checkpoint or run_folder(cfg).model  # the schedule, T, size: the checkpoint's
    out = out or layout.RunFolder(checkpoint.parent).samples
    images, _ = stage(cfg, checkpoint, out, device_named(device))
    names = ", ".join([layout.SAMPLES_ARRAY, *layout.PICTURES])
    typer.echo(f"wrote {len(images)} samples to {out}: {names}")


@app.command()
@user_errors
def evaluate(
    beta_schedule: Annotated[str | None, _param(EVALUATE_PARAMS["beta_schedule"], SCHEDULE_NAMES)] = None,
    feature_extractor: Annotated[str | None, _param(EVALUATE_PARAMS["feature_extractor"], "inception|randconv")] = None,
    inception_weights: Annotated[str | None, _param(EVALUATE_PARAMS["inception_weights"], "FILE")] = None,
    samples: Annotated[
        Path | None, _default(f"Samples [default: {RUN}/{layout.SAMPLES}/{layout.SAMPLES_ARRAY}].")
    ] = None,
    checkpoint: Annotated[
        Path | None, _default("The model, for the likelihood [default: the one that drew the samples].")
    ] = None,
    data: DataOption = layout.TRAINING_IMAGES,
    holdout: Annotated[Path, typer.Option(help="The held-out images, for the likelihood.")] = layout.HELD_OUT_IMAGES,
    out: Annotated[
        Path | None, _default(f"Metrics file [default: {layout.EVAL_METRICS} in the samples' run folder].")
    ] = None,
    cache: CacheOption = layout.FEATURE_CACHE,
    device: DeviceOption = "auto",
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """FID ± SD, FID_∞, KID ± SE; bits/dim of held-out images."""
    cfg = _load(config, set_, EVALUATE_PARAMS, beta_schedule=beta_schedule, feature_extractor=feature_extractor,
                inception_weights=inception_weights)  # fmt: skip
    from ddpm.distributed import device_named
    from ddpm.evaluate import stage

    samples = samples or run_folder(cfg).samples_array
    done = stage(cfg, samples, checkpoint, data, holdout, out, cache, device_named(device))
    typer.echo(done.summary())


@app.command()
@user_errors
def sweep(
    beta_schedule: Annotated[str | None, _param(EVALUATE_PARAMS["beta_schedule"], SCHEDULE_NAMES)] = None,
    checkpoint: Annotated[Path | None, _default(TRAINED_HELP)] = None,
    data: DataOption = layout.TRAINING_IMAGES,
    out: Annotated[Path | None, _default(f"Results file [default: {layout.SWEEP} beside the checkpoint].")] = None,
    cache: CacheOption = layout.FEATURE_CACHE,
    device: DeviceOption = "auto",
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """FID against network evaluations per sampler (DDIM, DPM-Solver++)."""
    cfg = _load(config, set_, EVALUATE_PARAMS, beta_schedule=beta_schedule)
    from ddpm.distributed import device_named
    from ddpm.sweep import sweep_stage, sweep_summary

    results, out = sweep_stage(cfg, checkpoint or run_folder(cfg).model, data, out, cache, device_named(device))
    typer.echo(sweep_summary(results, out))


@app.command()
@user_errors
def compare(
    names: Annotated[
        list[str] | None, typer.Argument(help="Schedules, variants [default: the schedules param].", show_default=False)
    ] = None,
    runs: Annotated[Path, typer.Option(help="The runs: <schedule>/seed<k> for each seed in `seeds`.")] = layout.RUNS,
    data: NoisedOption = layout.TRAINING_IMAGES,
    out: Annotated[Path, typer.Option(help="Report folder.")] = layout.COMPARE_REPORT,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Compare schedules over seeds: table, noise, curves, samples."""
    cfg = _load(config, set_, {})
    from ddpm.report import markdown_table, stage, timing_table

    names = names or cfg.schedules
    rows = stage(cfg, names, runs, data, out)
    typer.echo(markdown_table(rows) + "\n\n" + timing_table(rows))
    typer.echo(f"compared {', '.join(names)}: {out / layout.REPORT}")


import_app = typer.Typer(help="Bring published weights in as a ddpm checkpoint.", no_args_is_help=True)
app.add_typer(import_app, name="import")


@import_app.command("diffusers")
@user_errors
def import_diffusers(
    folder: Annotated[
        Path,
        typer.Argument(
            metavar="DIR", help="A diffusers model folder: config.json + diffusion_pytorch_model.safetensors (or .bin)."
        ),
    ],
    out: Annotated[Path, typer.Option(metavar="FILE", help="The checkpoint to write, e.g. runs/cifar10/model.pt.")],
) -> None:
    """A diffusers UNet2DModel (e.g. google/ddpm-cifar10-32) as a checkpoint for sample and evaluate."""
    from ddpm.convert import import_diffusers as run_import
    from ddpm.convert import summary

    typer.echo(summary(run_import(folder, out), folder, out))


@app.command()
@user_errors
def schedules(
    names: Annotated[
        list[str] | None, typer.Argument(help="Schedules to draw [default: all].", show_default=False)
    ] = None,
    timesteps: Annotated[str | None, _param(SCHEDULES_PARAMS["timesteps"], "INT")] = None,
    data: NoisedOption = layout.TRAINING_IMAGES,
    out: Annotated[Path, typer.Option(help="Output folder.")] = layout.SCHEDULES_REPORT,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Draw alphā(t), log-SNR(t) and the forward process per schedule."""
    cfg = _load(config, set_, SCHEDULES_PARAMS, timesteps=timesteps)
    from ddpm.plots import process_specs, schedule_pictures

    curves, forward = schedule_pictures(process_specs(names, cfg), data, cfg.data.image_size, out)
    typer.echo(f"wrote {curves} and {forward}")


def main() -> None:
    app()
