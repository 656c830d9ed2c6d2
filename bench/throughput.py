"""Training and sampling speed: our UNet against diffusers' UNet2DModel at the identical
architecture (a preset of ddpm.unet, the same parameter count asserted), in one process, on the
same device, batch and precision.

    pip install -e ".[bench]"          # diffusers, for this comparison only
    python bench/throughput.py         # on a GPU: 32×32, batch 128, fp32 and bf16, and sampling
    python bench/throughput.py --device cpu --batch-size 8 --sample-batch 8 --sample-steps 100
    python bench/throughput.py --preset learnopencv --image-size 64 --batch-size 64 --precision bf16 --json f.json

Training: both networks go through the training loop's own step (ddpm.train.training_step: our
loss, fused AdamW, gradient clipping, and --precision / --channels-last / --compile), on random
data; only the network differs. Sampling: ours is `ddpm sample`'s loop (ddpm.sample.generate);
diffusers' is the plain loop of its documentation (UNet2DModel + DDPMScheduler.step, or
DDIMScheduler.step). Times are CUDA events on a GPU and wall clock on the CPU; warm-up is excluded
(a sampler warms up on a short DDIM chain, which calls the network with the chain's one shape);
each figure is the median of --repeats. TFLOP/s counts the FLOPs that torch.utils.flop_counter
sees in one step. bench/gpu/measure.py uses the same functions for the GPU proof.
"""

import argparse
import copy
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ddpm.config import SampleConfig, TrainConfig
from ddpm.diffusion import GaussianDiffusion, LossWeighting, ModelVariance
from ddpm.fastpath import FastPath
from ddpm.sample import generate
from ddpm.schedules import beta_schedule
from ddpm.state import make_optimizer
from ddpm.train import training_step
from ddpm.unet import PRESETS, UNet

if TYPE_CHECKING:  # diffusers is imported where it is used: ours alone needs no diffusers
    from diffusers import SchedulerMixin

# How a training step runs, by name: what bench/gpu/ measures and its JSON keys say.
SETTINGS = {
    "fp32": FastPath(bf16=False, channels_last=False, compile=False),
    "bf16": FastPath(bf16=True, channels_last=False, compile=False),
    "bf16-cl": FastPath(bf16=True, channels_last=True, compile=False),
    "bf16-cl-compile": FastPath(bf16=True, channels_last=True, compile=True),
}
WARMUP_DDIM_STEPS = 10  # a sampler's warm-up chain: compiles and records the network at the chain's shape


def diffusers_unet(preset: str, image_size: int) -> nn.Module:
    """diffusers' UNet2DModel with our preset's architecture (for ddpm-cifar10: google/ddpm-cifar10-32's
    config): a down block per channel multiplier, with attention at the preset's levels, mirrored up."""
    from diffusers import UNet2DModel

    arch = PRESETS[preset]
    levels = range(len(arch["channel_mult"]))
    down = tuple("AttnDownBlock2D" if level in arch["attention_levels"] else "DownBlock2D" for level in levels)
    up = tuple(name.replace("Down", "Up") for name in reversed(down))
    return UNet2DModel(
        sample_size=image_size, in_channels=3, out_channels=3, layers_per_block=arch["num_res_blocks"],
        block_out_channels=tuple(arch["channels"] * mult for mult in arch["channel_mult"]),
        down_block_types=down, up_block_types=up, dropout=arch["dropout"], attention_head_dim=None,
        norm_num_groups=32, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
    )  # fmt: skip


class EpsOf(nn.Module):
    """diffusers' model as a plain ε(x_t, t) callable, what our loss and samplers call."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def networks(preset: str, image_size: int, with_diffusers: bool = True) -> dict[str, nn.Module]:
    """Ours ("ddpm") and, with `with_diffusers`, diffusers' ("diffusers") at the preset's architecture;
    diffusers' is left out, with a note, when its parameter count differs (not the same network)."""
    torch.manual_seed(0)
    built = {"ddpm": UNet.from_preset(preset, image_size)}
    if with_diffusers:
        theirs = EpsOf(diffusers_unet(preset, image_size))
        if parameters(theirs) == parameters(built["ddpm"]):
            built["diffusers"] = theirs
        else:
            print(f"# diffusers' UNet2DModel for {preset} has {parameters(theirs):,} parameters, ours "
                  f"{parameters(built['ddpm']):,}: not the same network, so ours only")  # fmt: skip
    return built


def seconds_per_call(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int, calls: int) -> float:
    """Median seconds per call of `fn` over `repeats` timings of `calls` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000 / calls)
        else:
            begin = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append((time.perf_counter() - begin) / calls)
    return statistics.median(times)


@dataclass(frozen=True)
class Timing:
    steps: int = 20  # training steps per timing
    warmup: int = 5  # steps before the timings (a compiled step compiles in the first)
    repeats: int = 5  # timings; the figure is their median


def train_figures(
    network: nn.Module,
    fast: FastPath,
    device: torch.device,
    image_size: int,
    batch: int,
    timing: Timing,
    profile: Path | None = None,
    variance: ModelVariance = "fixed",
    weighting: LossWeighting = "none",
) -> dict[str, float | None]:
    """img/s, TFLOP/s and peak memory (MiB, None off a GPU) of training `network` on random data;
    with `profile`, a torch.profiler table of one more step's top kernels written there. `variance`
    and `weighting` as diffusion.variance and train.loss_weighting (a learned_range `network` has
    twice the images' channels out)."""
    model = copy.deepcopy(network).to(device).train()
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if fast.compile else model
    optimizer = make_optimizer(model, TrainConfig(lr=2e-4))
    diffusion = GaussianDiffusion(beta_schedule("linear", 1000), variance=variance).to(device)
    g = torch.Generator(device).manual_seed(0)
    shape = (batch, 3, image_size, image_size)
    data = (
        torch.randn(shape, generator=g, device=device),
        torch.randint(0, 1000, (batch,), generator=g, device=device),
        torch.randn(shape, generator=g, device=device),
    )

    def step() -> None:
        training_step(forward, diffusion, optimizer, data, 1.0, fast, weighting)

    with FlopCounterMode(display=False) as counter:
        training_step(model, diffusion, optimizer, data, 1.0, fast, weighting)  # eager: what the network costs
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = seconds_per_call(step, device, timing.warmup, timing.repeats, timing.steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    if profile is not None:
        profile_step(step, device, profile)
    return {"img_s": batch / seconds, "tflop_s": counter.get_total_flops() / seconds / 1e12, "peak_mib": peak}


def profile_step(step: Callable[[], None], device: torch.device, path: Path, rows: int = 30) -> None:
    """torch.profiler's table of one call of `step`, the kernels that took the most device time first.
    A profiler that fails writes its error there instead: the figures measured before it stand."""
    from torch.profiler import ProfilerActivity, profile

    gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if gpu else [])]
    try:
        with profile(activities=activities) as recorded:
            step()
            if gpu:
                torch.cuda.synchronize(device)
        table = recorded.key_averages().table(sort_by="self_device_time_total" if gpu else "self_cpu_time_total",
                                              row_limit=rows)  # fmt: skip
    except Exception as e:  # the profiler depends on the machine (CUPTI); the timings do not
        table = f"the profiler failed: {type(e).__name__}: {e}"
        print(table)
    path.write_text(table + "\n")


class OurSampler:
    """`ddpm sample`'s loop (ddpm.sample.generate) on `batch` images of a network, timed one chain a call."""

    def __init__(
        self, network: nn.Module, image_size: int, batch: int, timesteps: int, bf16: bool, device: torch.device
    ) -> None:
        self.model = copy.deepcopy(network).to(device).eval()
        self.diffusion = GaussianDiffusion(beta_schedule("linear", timesteps)).to(device)
        self.image_size, self.batch, self.bf16, self.device = image_size, batch, bf16, device

    def seconds(self, steps: int = 0, repeats: int = 1, clip_mode: str | None = None, sampler: str = "ddim") -> float:
        """DDPM over all the timesteps, or `sampler` (ddim, dpmsolver++) in `steps` network evaluations
        at sample.spacing's default: the median of `repeats` chains, x_0 kept in range by `clip_mode`
        (None: sample.clip_mode's default)."""
        chosen = {"sampler": sampler, "steps": steps} if steps else {}
        chosen |= {"clip_mode": clip_mode} if clip_mode else {}
        cfg = SampleConfig(num_samples=self.batch, batch_size=self.batch, precision="bf16" if self.bf16 else "fp32",
                           **chosen)  # fmt: skip

        def chain() -> None:
            generate(self.model, self.diffusion, cfg, self.image_size, self.device, progress=False)

        return seconds_per_call(chain, self.device, 0, repeats, 1)

    def warm_up(self) -> None:
        """On a GPU the first chain compiles the network and records its CUDA graphs."""
        self.seconds(min(WARMUP_DDIM_STEPS, self.diffusion.num_timesteps))


def diffusers_scheduler(sampler: str, timesteps: int) -> "SchedulerMixin":
    """diffusers' scheduler for one of our samplers: DDPMScheduler, DDIMScheduler, or
    DPMSolverMultistepScheduler(solver_order=2, algorithm_type="dpmsolver++"), the linear schedule, at
    our default spacing (linspace; DDIM's own default is leading: the same cost, other timesteps)."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if sampler == "ddpm":
        return DDPMScheduler(num_train_timesteps=timesteps, beta_schedule="linear")
    if sampler == "ddim":
        return DDIMScheduler(num_train_timesteps=timesteps, beta_schedule="linear", timestep_spacing="linspace")
    return DPMSolverMultistepScheduler(num_train_timesteps=timesteps, beta_schedule="linear", solver_order=2,
                                       algorithm_type="dpmsolver++", timestep_spacing="linspace")  # fmt: skip


class DiffusersSampler:
    """diffusers' plain loop of its documentation: the network ε(x_t, t) (diffusers' UNet2DModel as
    EpsOf, or our UNet: the identical network under both loops), then the scheduler's step."""

    def __init__(
        self, network: nn.Module, image_size: int, batch: int, timesteps: int, bf16: bool, device: torch.device
    ) -> None:
        self.network = copy.deepcopy(network).to(device).eval()
        self.shape = (batch, 3, image_size, image_size)
        self.timesteps, self.bf16, self.device = timesteps, bf16, device

    def seconds(self, steps: int = 0, repeats: int = 1, sampler: str = "ddim") -> float:
        """DDPMScheduler over all the timesteps, or `sampler`'s scheduler in `steps` network evaluations:
        the median of `repeats` chains."""
        scheduler = diffusers_scheduler(sampler if steps else "ddpm", self.timesteps)

        @torch.inference_mode()
        def chain() -> None:
            g = torch.Generator(self.device).manual_seed(0)
            x = torch.randn(self.shape, generator=g, device=self.device)
            scheduler.set_timesteps(steps or self.timesteps)  # also resets DPM-Solver's history of x̂_0
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                for t in scheduler.timesteps:
                    eps = self.network(x, torch.full(self.shape[:1], int(t), device=self.device))
                    x = scheduler.step(eps, t, x, generator=g).prev_sample

        return seconds_per_call(chain, self.device, 0, repeats, 1)

    def warm_up(self) -> None:
        self.seconds(min(WARMUP_DDIM_STEPS, self.timesteps))


def finite(value: float | None) -> float | None:
    """A figure as JSON holds it: NaN and infinity (nothing measured) as null."""
    return value if value is not None and math.isfinite(value) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="ddpm-cifar10", choices=list(PRESETS))
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", default=None, help="comma-separated fp32,bf16 [default: both on a GPU, fp32]")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="[default: GPU]")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--diffusers", action=argparse.BooleanOptionalAction, default=True, help="compare with it")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timing")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sample-steps", type=int, default=1000, help="DDPM steps; 0: no sampling")
    parser.add_argument("--sample-batch", type=int, default=256)
    parser.add_argument("--sample-repeats", type=int, default=3)
    parser.add_argument("--ddim-steps", type=int, default=50, help="ours with DDIM too; 0: not")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    precisions = (args.precision or ("fp32,bf16" if gpu else "fp32")).split(",")
    channels_last = gpu if args.channels_last is None else args.channels_last
    nets = networks(args.preset, args.image_size, args.diffusers)
    count = parameters(nets["ddpm"])
    timing = Timing(args.steps, args.warmup, args.repeats)

    cpu = f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    shown = vars(args) | {"precision": ",".join(precisions), "channels_last": channels_last}
    command = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in shown.items())
    print(f"# {date.today()}, {torch.cuda.get_device_name(device) if gpu else cpu}, torch {torch.__version__}, "
          f"{args.preset}: {count:,} parameters{' each' if len(nets) > 1 else ''}")  # fmt: skip
    print(f"# python bench/throughput.py {command}")
    print("| task | precision | ddpm | diffusers | ddpm / diffusers |")
    print("|---|---|---:|---:|---:|")
    figures: dict[str, float | None] = {}
    for precision in precisions:
        fast = FastPath(bf16=precision == "bf16", channels_last=channels_last, compile=args.compile)
        train = {name: train_figures(net, fast, device, args.image_size, args.batch_size, timing)
                 for name, net in nets.items()}  # fmt: skip
        figures |= {f"train.{precision}.{name}.{k}": finite(v) for name, f in train.items() for k, v in f.items()}
        setting = f"{args.image_size}², batch {args.batch_size}{', compiled' if args.compile else ''}"
        for task, key, fmt in (("train img/s, " + setting, "img_s", ",.1f"), ("train TFLOP/s", "tflop_s", ".1f"),
                               ("train peak memory, MiB", "peak_mib", ",.0f")):  # fmt: skip
            if key == "peak_mib" and not gpu:
                continue
            print(row(task, precision, {name: f[key] for name, f in train.items()}, fmt, key != "tflop_s"))
        if not args.sample_steps:
            continue
        bf16 = precision == "bf16"
        size, batch, steps = args.image_size, args.sample_batch, args.sample_steps
        samplers = {"ddpm": OurSampler(nets["ddpm"], size, batch, steps, bf16, device)}
        if "diffusers" in nets:
            samplers["diffusers"] = DiffusersSampler(nets["diffusers"], size, batch, steps, bf16, device)
        for sampler in samplers.values():
            sampler.warm_up()
        chains = [("DDPM", steps, 0)] + ([("DDIM", args.ddim_steps, args.ddim_steps)] if args.ddim_steps else [])
        for chain, length, ddim in chains:
            seconds = {name: s.seconds(ddim, args.sample_repeats) for name, s in samplers.items()}
            figures |= {f"sample.{chain.lower()}{length}.{precision}.{name}.s": s for name, s in seconds.items()}
            task = f"sample {batch} images, {length} {chain} steps, s"
            print(row(task, precision, seconds, ".2f", ratio_of_inverse=True))
    if args.json:
        meta = {"date": str(date.today()), "device": torch.cuda.get_device_name(device) if gpu else cpu,
                "torch": torch.__version__, "command": f"python bench/throughput.py {command}",
                "parameters": count}  # fmt: skip
        args.json.write_text(json.dumps({"meta": meta, "figures": figures}, indent=1) + "\n")


def row(task: str, precision: str, values: dict[str, float | None], fmt: str, ratio: bool = True,
        ratio_of_inverse: bool = False) -> str:  # fmt: skip
    """A table row: ours, diffusers' (blank when not measured) and ddpm / diffusers, or for times how
    many times faster ours is."""
    ours, theirs = values.get("ddpm"), values.get("diffusers")
    shown = [format(v, fmt) if v is not None else "" for v in (ours, theirs)]
    both = ours is not None and theirs is not None and ours > 0 and theirs > 0
    if not (ratio and both):
        times = ""
    elif ratio_of_inverse:
        times = f"{theirs / ours:.2f}× faster"
    else:
        times = f"{ours / theirs:.2f}×"
    return f"| {task} | {precision} | {shown[0]} | {shown[1]} | {times} |"


if __name__ == "__main__":
    main()
