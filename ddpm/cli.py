"""The `ddpm` command line: one thin command per pipeline stage.

Every command reads params.yaml (or --config), applies `--set section.key=value` and its named
options on top, validates the result, and calls one library function.
"""

import contextlib
import functools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ddpm.errors import UserError

app = typer.Typer(
    help="Denoising diffusion (DDPM) on flowers, one command per pipeline stage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

F = TypeVar("F", bound=Callable[..., Any])

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="Params file [default: params.yaml, or built-in defaults if absent].")
]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", metavar="SECTION.KEY=VALUE", help="Override any param; repeatable.")
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
DEFAULT_RAW = Path("data/raw")
DEFAULT_DATA = Path("data/prepared/images.npy")
FEATURE_CACHE = Path("data/features")  # real images' features, per dataset hash and extractor
DEFAULT_HOLDOUT = DEFAULT_DATA.parent / "holdout.npy"
NLL_TERMS = "nll_terms.csv"  # beside eval.json: the likelihood bound's term at each timestep
RUNS = Path("runs")  # runs/<schedule>/seed<train.seed>: one folder per trained model
# The allowed values, for --help without importing torch (tests/test_cli.py checks them against the code)
SCHEDULE_NAMES = "linear|cosine|quadratic|sigmoid"
PRESET_NAMES = "ddpm-cifar10|learnopencv|tiny"


def run_folder(cfg: Any) -> Path:
    """Where the model of this schedule and training seed lives: runs/<schedule>/seed<train.seed>."""
    return RUNS / cfg.diffusion.schedule / f"seed{cfg.train.seed}"


def _param(key: str, metavar: str) -> Any:
    """A named option that overrides param `key`; its value is validated with the config."""
    return typer.Option(metavar=metavar, help=f"Overrides {key}.", show_default=False)


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


def user_errors(command: F) -> F:
    """Report a UserError as `ddpm: error: ...` on stderr with exit status 2, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as e:
            typer.echo(f"ddpm: error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


# Named options of each command → the param each one overrides.
DOWNLOAD_PARAMS = {"source": "data.source"}
PREPARE_PARAMS = {"source": "data.source", "image_size": "data.image_size"}
TRAIN_PARAMS = {
    "beta_schedule": "diffusion.schedule",
    "steps": "train.steps",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "image_size": "data.image_size",
    "model": "model.preset",
    "timesteps": "diffusion.timesteps",
    "seed": "train.seed",
}
SCHEDULES_PARAMS = {"timesteps": "diffusion.timesteps"}
EVALUATE_PARAMS = {
    "beta_schedule": "diffusion.schedule",
    "feature_extractor": "evaluate.feature_extractor",
    "inception_weights": "evaluate.inception_weights",
}
TRAINED_HELP = "Trained model [default: runs/<schedule>/seed<train.seed>/model.pt; --set train.seed=K picks a seed]."
SAMPLE_PARAMS = {
    "beta_schedule": "diffusion.schedule",
    "num_samples": "sample.num_samples",
    "batch_size": "sample.batch_size",
    "sampler": "sample.sampler",
    "ddim_steps": "sample.ddim_steps",
    "eta": "sample.eta",
    "seed": "sample.seed",
}


def _load(config: Path | None, sets: list[str] | None, params: dict[str, str], values: dict[str, Any]):  # noqa: ANN202
    """The config with the --set pairs, then the named options given (`values` by name), applied."""
    from ddpm.config import load_config, parse_value

    overrides = []
    for pair in sets or []:
        key, eq, value = pair.partition("=")
        if not eq:
            raise UserError(f"--set: expected SECTION.KEY=VALUE, got {pair!r}")
        overrides.append((f"--set {key}", key, parse_value(value)))
    for name, key in params.items():
        if values[name] is not None:
            overrides.append(("--" + name.replace("_", "-"), key, parse_value(values[name])))
    return load_config(config, overrides)


@app.command()
@user_errors
def download(
    source: Annotated[str | None, _param(DOWNLOAD_PARAMS["source"], "flowers102|cifar10|folder|synthetic")] = None,
    out: Annotated[Path, typer.Option(help="Download folder.")] = DEFAULT_RAW,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Fetch and verify the source images (Flowers-102 or CIFAR-10)."""
    cfg = _load(config, set_, DOWNLOAD_PARAMS, locals())
    from ddpm.download import download as run_download
    from ddpm.files import write_json

    folder = run_download(cfg.data, out)
    # the stage's output holds a file for every source, so that DVC has something to hash and cache
    write_json(out / "source.json", {"source": cfg.data.source})
    typer.echo(f"images in {folder}" if folder else f"data.source {cfg.data.source}: nothing to download")


@app.command()
@user_errors
def prepare(
    source: Annotated[str | None, _param(PREPARE_PARAMS["source"], "flowers102|cifar10|folder|synthetic")] = None,
    image_size: Annotated[str | None, _param(PREPARE_PARAMS["image_size"], "INT")] = None,
    raw: Annotated[Path, typer.Option(help="The download folder (source flowers102).")] = DEFAULT_RAW,
    out: Annotated[
        Path, typer.Option(help="Output folder: images.npy, holdout.npy and manifest.json.")
    ] = DEFAULT_DATA.parent,
    workers: Annotated[int, typer.Option(help="Worker processes; 0 = one per core.", min=0)] = 0,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Decode, crop and resize the images into one uint8 array."""
    cfg = _load(config, set_, PREPARE_PARAMS, locals())
    from ddpm.data import prepare as run_prepare

    manifest = run_prepare(cfg.data, raw, out, workers)
    for entry in manifest["skipped"]:
        typer.echo(f"skipped {entry['file']}: {entry['reason']}", err=True)
    typer.echo(
        f"prepared {manifest['count']} images of {cfg.data.image_size}×{cfg.data.image_size} to train on "
        f"({len(manifest['skipped'])} skipped): {out / 'images.npy'}; {manifest['holdout']['count']} held out "
        f"(data.holdout): {out / 'holdout.npy'}"
    )


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
    data: Annotated[Path, typer.Option(help="Prepared images: uint8 .npy, (N, 3, H, W).")] = DEFAULT_DATA,
    out: Annotated[
        Path | None, typer.Option(help="Output folder [default: runs/<schedule>/seed<train.seed>].", show_default=False)
    ] = None,
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
    cfg = _load(config, set_, TRAIN_PARAMS, locals())
    if nproc > 1 and "RANK" not in os.environ:
        raise typer.Exit(_torchrun(nproc))
    from ddpm.errors import Interrupted
    from ddpm.files import folder_lock
    from ddpm.train import train as run_training

    out = out or run_folder(cfg)
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone writes, logs and reports
    try:
        with (
            folder_lock(out) if main_rank else contextlib.nullcontext(),
            _model_tracker(cfg, out, main_rank) as tracker,
        ):
            result = run_training(
                cfg, data, out, resolve_device(device), resume, tracker=tracker, restart_if_changed=restart_if_changed
            )
    except Interrupted as e:
        typer.echo(f"ddpm: stopped by {e}", err=True)
        raise typer.Exit(128 + e.signum) from None
    if not main_rank:
        return
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    skipped = f", {result.nonfinite} non-finite steps skipped" if result.nonfinite else ""
    loss = f"final loss {result.losses[-1][1]:.4f}" if result.losses else "no finite loss"
    typer.echo(
        f"trained {cfg.train.steps} steps{resumed} in {result.seconds:.0f} s ({result.images_per_second:.0f} img/s)"
        f"{skipped}, {loss}: {result.checkpoint}"
    )


def _model_tracker(cfg: Any, out: Path, main_rank: bool):  # noqa: ANN202
    """The training run's MLflow tracker (the model's parent run), or nothing when tracking is off."""
    if not (cfg.tracking.enabled and main_rank):
        return contextlib.nullcontext()
    from ddpm.tracking import ModelTracker

    return ModelTracker(cfg, out)


@app.command()
@user_errors
def sample(
    beta_schedule: Annotated[str | None, _param(SAMPLE_PARAMS["beta_schedule"], SCHEDULE_NAMES)] = None,
    num_samples: Annotated[str | None, _param(SAMPLE_PARAMS["num_samples"], "INT")] = None,
    batch_size: Annotated[str | None, _param(SAMPLE_PARAMS["batch_size"], "INT")] = None,
    sampler: Annotated[str | None, _param(SAMPLE_PARAMS["sampler"], "ddpm|ddim")] = None,
    ddim_steps: Annotated[str | None, _param(SAMPLE_PARAMS["ddim_steps"], "INT")] = None,
    eta: Annotated[str | None, _param(SAMPLE_PARAMS["eta"], "FLOAT")] = None,
    seed: Annotated[str | None, _param(SAMPLE_PARAMS["seed"], "INT")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help=TRAINED_HELP, show_default=False)] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder [default: samples/ beside the checkpoint].", show_default=False)
    ] = None,
    device: DeviceOption = "auto",
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Draw samples (DDPM or DDIM); write them + pictures."""
    cfg = _load(config, set_, SAMPLE_PARAMS, locals())
    from ddpm.files import folder_lock
    from ddpm.sample import origin
    from ddpm.sample import sample as run_sampling

    checkpoint = checkpoint or run_folder(cfg) / "model.pt"  # the schedule, T, size: the checkpoint's
    out = out or checkpoint.parent / "samples"
    store = None

    def ready(trained: Any) -> None:  # the inputs are checked: open the store before the work
        nonlocal store
        store = _open_store(cfg, trained.path.parent)

    where = resolve_device(device)
    with folder_lock(out):
        images, trained = run_sampling(cfg.sample, checkpoint, out, where, ready=ready)
        if store:
            from ddpm.tracking import evaluation_run

            evaluation = cfg.evaluate.model_dump(mode="json")
            run, _ = evaluation_run(store, origin(trained, cfg.sample), evaluation, "sample")
            run.log_artifacts([out / name for name in ("grid.png", "progression.png", "progression.gif")], "samples")
            run.end()
            store.close(trained.path.parent)
    typer.echo(f"wrote {len(images)} samples to {out}: samples.npy, grid.png, progression.png, progression.gif")


@app.command()
@user_errors
def evaluate(
    beta_schedule: Annotated[str | None, _param(EVALUATE_PARAMS["beta_schedule"], SCHEDULE_NAMES)] = None,
    feature_extractor: Annotated[str | None, _param(EVALUATE_PARAMS["feature_extractor"], "inception|randconv")] = None,
    inception_weights: Annotated[str | None, _param(EVALUATE_PARAMS["inception_weights"], "FILE")] = None,
    samples: Annotated[
        Path | None,
        typer.Option(
            help="Samples [default: runs/<schedule>/seed<train.seed>/samples/samples.npy].", show_default=False
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="The model, for the likelihood [default: the one that drew the samples].", show_default=False
        ),
    ] = None,
    data: Annotated[Path, typer.Option(help="The prepared real images.")] = DEFAULT_DATA,
    holdout: Annotated[Path, typer.Option(help="The held-out images, for the likelihood.")] = DEFAULT_HOLDOUT,
    out: Annotated[
        Path | None,
        typer.Option(help="Metrics file [default: eval.json in the samples' run folder].", show_default=False),
    ] = None,
    cache: Annotated[Path, typer.Option(help="Cache of the real images' features.")] = FEATURE_CACHE,
    device: DeviceOption = "auto",
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """FID (95 % interval), KID; bits/dim of held-out images."""
    cfg = _load(config, set_, EVALUATE_PARAMS, locals())
    from ddpm.checkpoint import load_trained
    from ddpm.evaluate import evaluate as run_evaluation
    from ddpm.evaluate import held_out, likelihood, write_terms
    from ddpm.files import folder_lock, sha256_hex, write_json
    from ddpm.sample import read_origin

    samples = samples or run_folder(cfg) / "samples" / "samples.npy"
    drawn = read_origin(samples)  # the model and settings that drew them, where `ddpm sample` did
    run_dir = Path(drawn["run_dir"]) if drawn else samples.parent
    out = out or run_dir / "eval.json"
    checkpoint = checkpoint or (Path(drawn["checkpoint"]) if drawn else None)
    where = resolve_device(device)
    trained = None
    if cfg.evaluate.nll_images:
        if checkpoint is None:
            raise UserError(f"evaluate.nll_images: the likelihood needs the model, and {samples} has no samples.json "
                            "naming it; give --checkpoint, or set evaluate.nll_images: 0")  # fmt: skip
        trained = load_trained(checkpoint, where)
        held_out(holdout, cfg.evaluate.nll_images)  # checked before the work
    store = None

    def ready() -> None:
        nonlocal store
        store = _open_store(cfg, run_dir)

    with folder_lock(out.parent):
        metrics, cached = run_evaluation(cfg.evaluate, samples, data, cache, where, ready=ready)
        if checkpoint is not None and checkpoint.is_file():  # so that compare never pairs these with another model
            metrics["checkpoint_sha256"] = sha256_hex(checkpoint)
        terms = []  # without the likelihood, a header alone: the file the pipeline expects is there
        if trained:
            bound, terms = likelihood(cfg.evaluate, cfg.sample, trained, holdout, where)
            metrics |= bound
        write_terms(terms, out.parent / NLL_TERMS)
        write_json(out, metrics)
        if store and drawn:
            _log_evaluation(store, drawn, cfg, metrics, samples.parent, out)
        elif store:
            _notes([f"{samples} has no {samples.parent / 'samples.json'} (`ddpm sample` did not draw them here), "
                    f"so its scores go to {out} only, not to MLflow"])  # fmt: skip
        if store:
            store.close(run_dir)
    shown = ("fid", "kid", "nll_bpd")
    scores = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith(shown) and isinstance(v, float))
    typer.echo(
        f"{scores} ({metrics['num_samples']} samples, {metrics['feature_extractor']} features; real features "
        f"{'from the cache' if cached else 'computed and cached'}): {out}"
    )


def _log_evaluation(store: Any, drawn: dict, cfg: Any, metrics: dict, samples_dir: Path, out: Path) -> None:
    """The scores into the child run of this sampling + evaluation configuration (a new child gets
    the samples' pictures too), and its id beside the scores for `ddpm compare`."""
    from ddpm.files import write_json
    from ddpm.tracking import EVAL_RUN_FILE, evaluation_run

    run, new = evaluation_run(store, drawn, cfg.evaluate.model_dump(mode="json"), "evaluate")
    if new:
        pictures = [samples_dir / name for name in ("grid.png", "progression.png", "progression.gif")]
        run.log_artifacts([p for p in pictures if p.is_file()], "samples")
    numbers = {k: v for k, v in metrics.items() if isinstance(v, float)}
    run.log_metrics(numbers)
    run.set_tags({k: v for k, v in metrics.items() if k not in numbers})  # counts and names: not metrics
    run.log_artifacts([out, out.parent / NLL_TERMS])
    run.end()
    write_json(out.parent / EVAL_RUN_FILE, {"run_id": run.id})


@app.command()
@user_errors
def sweep(
    beta_schedule: Annotated[str | None, _param(EVALUATE_PARAMS["beta_schedule"], SCHEDULE_NAMES)] = None,
    checkpoint: Annotated[Path | None, typer.Option(help=TRAINED_HELP, show_default=False)] = None,
    data: Annotated[Path, typer.Option(help="The prepared real images.")] = DEFAULT_DATA,
    out: Annotated[
        Path | None, typer.Option(help="Results file [default: sweep.json beside the checkpoint].", show_default=False)
    ] = None,
    cache: Annotated[Path, typer.Option(help="Cache of the real images' features.")] = FEATURE_CACHE,
    device: DeviceOption = "auto",
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """FID against the number of sampling steps (DDIM, DDPM)."""
    cfg = _load(config, set_, {"beta_schedule": "diffusion.schedule"}, locals())
    from ddpm.checkpoint import load_trained
    from ddpm.evaluate import sweep as run_sweep
    from ddpm.files import folder_lock, sha256_hex, write_json

    checkpoint = checkpoint or run_folder(cfg) / "model.pt"
    out = out or checkpoint.parent / "sweep.json"
    where = resolve_device(device)
    trained = load_trained(checkpoint, where)
    store = None

    def ready() -> None:
        nonlocal store
        store = _open_store(cfg, checkpoint.parent)

    with folder_lock(out.parent):
        results = run_sweep(cfg.sweep, cfg.sample, cfg.evaluate, trained, data, cache, where, ready=ready)
        results["checkpoint_sha256"] = sha256_hex(checkpoint)
        write_json(out, results)
        if store:
            from ddpm.tracking import sweep_run

            sweep_run(store, trained, cfg, results, out)
            store.close(checkpoint.parent)
    metric = results["metric"]
    shown = [f"DDIM {k}: {v:.4g}" for k, v in results["ddim"].items()]
    shown += [f"DDPM {k}: {v:.4g}" for k, v in results["ddpm"].items()]
    typer.echo(f"{metric} by sampling steps ({results['num_samples']} samples each): {', '.join(shown)}: {out}")


@app.command()
@user_errors
def compare(
    names: Annotated[
        list[str] | None, typer.Argument(help="Schedules [default: the schedules param].", show_default=False)
    ] = None,
    runs: Annotated[Path, typer.Option(help="The runs: <schedule>/seed<k> for each seed in `seeds`.")] = RUNS,
    data: Annotated[
        Path, typer.Option(help="Prepared images; the first one is noised (a synthetic flower if absent).")
    ] = DEFAULT_DATA,
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("reports/compare"),
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Compare schedules over seeds: table, noise, curves, samples."""
    cfg = _load(config, set_, {}, locals())
    from ddpm.files import folder_lock
    from ddpm.report import compare as run_comparison
    from ddpm.report import markdown_table

    names = _schedule_names(names or cfg.schedules)
    store = None

    def ready() -> None:
        nonlocal store
        store = _open_store(cfg, None)

    with folder_lock(out):
        rows, files, linked = run_comparison(names, cfg.seeds, runs, data, out, ready=ready)
        if store:
            from ddpm.tracking import compare_run

            compare_run(store, names, rows, files, linked)
            store.close(None)
    typer.echo(markdown_table(rows))
    typer.echo(f"compared {', '.join(names)}: {out / 'report.md'}")


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

    if out.exists():
        raise UserError(f"--out: {out} exists; remove it or choose another path (a trained model is never replaced)")
    made = run_import(folder, out)
    arch, diffusion = made["arch"], made["diffusion"]
    typer.echo(
        f"imported {folder} → {out}: UNet {arch['channels']} × {arch['channel_mult']}, {arch['image_size']}×"
        f"{arch['image_size']}, {diffusion['schedule']} schedule, T = {diffusion['timesteps']}, "
        f"predicts {diffusion['prediction']}; sample it with `ddpm sample --checkpoint {out}`"
    )


@app.command()
@user_errors
def schedules(
    names: Annotated[
        list[str] | None, typer.Argument(help="Schedules to draw [default: all].", show_default=False)
    ] = None,
    timesteps: Annotated[str | None, _param(SCHEDULES_PARAMS["timesteps"], "INT")] = None,
    data: Annotated[
        Path, typer.Option(help="Prepared images; the first one is noised (a synthetic flower if absent).")
    ] = DEFAULT_DATA,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("reports/schedules"),
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Draw alphā(t), log-SNR(t) and the forward process per schedule."""
    cfg = _load(config, set_, SCHEDULES_PARAMS, locals())
    from ddpm.report import forward_strip, plot_schedules
    from ddpm.schedules import SCHEDULES

    names = _schedule_names(names or list(SCHEDULES), cfg.diffusion.timesteps)
    image = _first_image(data, cfg.data.image_size)
    plot_schedules(names, cfg.diffusion.timesteps, out / "schedules.png")
    forward_strip(names, cfg.diffusion.timesteps, image, out / "forward.png")
    typer.echo(f"wrote {out / 'schedules.png'} and {out / 'forward.png'}")


def _open_store(cfg: Any, folder: Path | None):  # noqa: ANN202
    """The MLflow store, checked before the work (None when tracking is off)."""
    if not cfg.tracking.enabled:
        return None
    from ddpm.tracking import open_store

    return open_store(cfg.tracking, folder)


def _torchrun(nproc: int) -> int:
    """Run this same `ddpm train` command as `nproc` ranks of a single-node torchrun job."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg.startswith("--nproc="):
            skip = False
            continue
        skip = arg == "--nproc"
        args += [] if skip else [arg]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.call([*launcher, "-m", "ddpm", *args])


def _notes(lines: list[str]) -> None:
    for line in lines:
        typer.echo(f"ddpm: note: {line}", err=True)


def _schedule_names(names: list[str], timesteps: int = 1000) -> list[str]:
    """`names`, each checked to be a known schedule (that works with `timesteps` steps)."""
    from ddpm.schedules import beta_schedule

    for name in names:
        try:
            beta_schedule(name, timesteps)
        except ValueError as e:
            raise UserError(str(e)) from None
    return names


def _first_image(data: Path, image_size: int):  # noqa: ANN202 (numpy is imported only when a command runs)
    """The first prepared image, or a synthetic flower where there is no prepared data."""
    from ddpm.data import load_images, synthetic_flowers

    return load_images(data)[0] if data.exists() else synthetic_flowers(1, image_size)[0]


def resolve_device(name: str):  # noqa: ANN201 (torch is imported only when a command runs)
    """ "auto" → the first CUDA device if there is one, else the CPU; otherwise a torch device name."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device: {name} requested, but PyTorch sees no CUDA device")
    return device


def main() -> None:
    app()
