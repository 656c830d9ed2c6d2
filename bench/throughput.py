"""Training and sampling speed: our UNet against diffusers' UNet2DModel at the identical
ddpm-cifar10 architecture (35.7 M parameters, asserted equal), in one process, on the same
device, batch and precision.

    pip install -e ".[bench]"          # diffusers, for this comparison only
    python bench/throughput.py         # on a GPU: 32×32, batch 128, fp32 and bf16, and sampling
    python bench/throughput.py --device cpu --batch-size 8 --sample-batch 8 --sample-steps 100

Training: both networks go through the training loop's own step (ddpm.train.training_step: our
loss, fused AdamW, gradient clipping, and --precision / --channels-last / --compile), on random
data; only the network differs. Sampling: ours is `ddpm sample`'s loop (ddpm.sample.generate);
diffusers' is the plain loop of its documentation (UNet2DModel + DDPMScheduler.step). Times are
CUDA events on a GPU and wall clock on the CPU; warm-up is excluded; each figure is the median
of --repeats. TFLOP/s counts the FLOPs that torch.utils.flop_counter sees in one step.
"""

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ddpm.config import SampleConfig, TrainConfig
from ddpm.diffusion import GaussianDiffusion
from ddpm.fastpath import FastPath
from ddpm.sample import generate
from ddpm.schedules import beta_schedule
from ddpm.state import make_optimizer
from ddpm.train import training_step
from ddpm.unet import UNet


def diffusers_unet(image_size: int) -> nn.Module:
    """diffusers' UNet2DModel with our ddpm-cifar10 architecture (google/ddpm-cifar10-32's config)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=image_size, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        dropout=0.1, attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, downsample_padding=0,
        flip_sin_to_cos=False, freq_shift=1,
    )  # fmt: skip


class EpsOf(nn.Module):
    """diffusers' model as a plain ε(x_t, t) callable, what our loss and samplers call."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def timed(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int, calls: int) -> float:
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


def train_figures(
    network: nn.Module, args: argparse.Namespace, fast: FastPath, device: torch.device
) -> tuple[float, float, float]:
    """img/s, FLOPs per image and peak memory (MiB, GPU only) of training `network`."""
    size, batch = args.image_size, args.batch_size
    model = copy.deepcopy(network).to(device).train()
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if fast.compile else model
    optimizer = make_optimizer(model, TrainConfig(lr=2e-4))
    diffusion = GaussianDiffusion(beta_schedule("linear", 1000)).to(device)
    g = torch.Generator(device).manual_seed(0)
    data = (
        torch.randn(batch, 3, size, size, generator=g, device=device),
        torch.randint(0, 1000, (batch,), generator=g, device=device),
        torch.randn(batch, 3, size, size, generator=g, device=device),
    )

    def step() -> None:
        training_step(forward, diffusion, optimizer, data, 1.0, fast)

    with FlopCounterMode(display=False) as counter:
        training_step(model, diffusion, optimizer, data, 1.0, fast)  # eager: what the network costs
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, device, args.warmup, args.repeats, args.steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return batch / seconds, counter.get_total_flops() / batch, peak


def sample_seconds_ours(
    network: nn.Module, args: argparse.Namespace, bf16: bool, device: torch.device, ddim_steps: int = 0
) -> float:
    """`ddpm sample`'s loop: DDPM over all --sample-steps, or DDIM in `ddim_steps` of them."""
    model = copy.deepcopy(network).to(device).eval()
    diffusion = GaussianDiffusion(beta_schedule("linear", args.sample_steps)).to(device)
    sampler = {"sampler": "ddim", "ddim_steps": ddim_steps} if ddim_steps else {}
    precision = "bf16" if bf16 else "fp32"
    cfg = SampleConfig(num_samples=args.sample_batch, batch_size=args.sample_batch, precision=precision, **sampler)
    return timed(lambda: generate(model, diffusion, cfg, args.image_size, device, progress=False),
                 device, 1, args.sample_repeats, 1)  # fmt: skip


def sample_seconds_diffusers(network: nn.Module, args: argparse.Namespace, bf16: bool, device: torch.device) -> float:
    from diffusers import DDPMScheduler

    unet = copy.deepcopy(network).to(device).eval()
    scheduler = DDPMScheduler(num_train_timesteps=args.sample_steps, beta_schedule="linear")
    scheduler.set_timesteps(args.sample_steps)
    shape = (args.sample_batch, 3, args.image_size, args.image_size)

    @torch.inference_mode()
    def loop() -> None:
        g = torch.Generator(device).manual_seed(0)
        x = torch.randn(shape, generator=g, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for t in scheduler.timesteps:
                eps = unet(x, t).sample
                x = scheduler.step(eps, t, x, generator=g).prev_sample

    return timed(loop, device, 1, args.sample_repeats, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", default=None, help="comma-separated fp32,bf16 [default: both on a GPU, fp32]")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="[default: GPU]")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--steps", type=int, default=20, help="training steps per timing")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sample-steps", type=int, default=1000, help="DDPM steps; 0: no sampling")
    parser.add_argument("--sample-batch", type=int, default=256)
    parser.add_argument("--sample-repeats", type=int, default=3)
    parser.add_argument("--ddim-steps", type=int, default=50, help="ours with DDIM too; 0: not")
    args = parser.parse_args()

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    precisions = (args.precision or ("fp32,bf16" if gpu else "fp32")).split(",")
    channels_last = gpu if args.channels_last is None else args.channels_last
    torch.manual_seed(0)
    networks = {
        "ddpm": UNet.from_preset("ddpm-cifar10", args.image_size),
        "diffusers": EpsOf(diffusers_unet(args.image_size)),
    }
    counts = {name: sum(p.numel() for p in net.parameters()) for name, net in networks.items()}
    assert counts["ddpm"] == counts["diffusers"], counts

    cpu = f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    shown = vars(args) | {"precision": ",".join(precisions), "channels_last": channels_last}
    command = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in shown.items())
    print(f"# {date.today()}, {torch.cuda.get_device_name(device) if gpu else cpu}, torch {torch.__version__}, "
          f"{counts['ddpm']:,} parameters each")  # fmt: skip
    print(f"# python bench/throughput.py {command}")
    print("| task | precision | ddpm | diffusers | ddpm / diffusers |")
    print("|---|---|---:|---:|---:|")
    for precision in precisions:
        fast = FastPath(bf16=precision == "bf16", channels_last=channels_last, compile=args.compile)
        figures = {name: train_figures(net, args, fast, device) for name, net in networks.items()}
        (ours, flops, peak), (theirs, their_flops, their_peak) = figures["ddpm"], figures["diffusers"]
        setting = f"{args.image_size}², batch {args.batch_size}{', compiled' if args.compile else ''}"
        print(f"| train img/s, {setting} | {precision} | {ours:,.1f} | {theirs:,.1f} | {ours / theirs:.2f}× |")
        print(f"| train TFLOP/s | {precision} | {ours * flops / 1e12:.1f} | {theirs * their_flops / 1e12:.1f} | |")
        if gpu:
            print(
                f"| train peak memory, MiB | {precision} | {peak:,.0f} | {their_peak:,.0f} | {peak / their_peak:.2f}× |"
            )
        if args.sample_steps:
            bf16 = precision == "bf16"
            ours_s = sample_seconds_ours(networks["ddpm"], args, bf16, device)
            theirs_s = sample_seconds_diffusers(networks["diffusers"].unet, args, bf16, device)
            task = f"sample {args.sample_batch} images, {args.sample_steps} DDPM steps, s"
            print(f"| {task} | {precision} | {ours_s:.2f} | {theirs_s:.2f} | {theirs_s / ours_s:.2f}× faster |")
        if args.sample_steps and args.ddim_steps:
            ddim_s = sample_seconds_ours(networks["ddpm"], args, precision == "bf16", device, args.ddim_steps)
            task = f"sample {args.sample_batch} images, DDIM {args.ddim_steps} steps, s"
            print(f"| {task} | {precision} | {ddim_s:.2f} | | |")


if __name__ == "__main__":
    main()
