"""How fast the variational bound (GaussianDiffusion.nll_bpd) runs on the CPU, at the offline preset's size.

    python bench/nll_speed.py                  # the tiny UNet at 16×16, T = 50, 32 images, batch 200 (the preset)
    python bench/nll_speed.py --threads 1 --images 8 --timesteps 1000

The bound evaluates the network at every timestep of every image, in batches of --batch-size
(image, timestep) pairs. The network has random weights (the speed does not depend on them), runs
in float32 and eval mode; the images are synthetic flowers. One warm-up call of the network at the
batch size comes first; the figure is the median of --repeats full evaluations, wall clock.
"""

import argparse
import platform
import statistics
import time
from datetime import date

import torch

from ddpm.data import synthetic_flowers, to_unit_range
from ddpm.diffusion import GaussianDiffusion
from ddpm.schedules import beta_schedule
from ddpm.unet import UNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--schedule", default="linear")
    parser.add_argument("--timesteps", type=int, default=50)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=200, help="(image, timestep) pairs per network call")
    parser.add_argument("--variance", choices=["fixed_large", "fixed_small"], default="fixed_small")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = UNet.from_preset(args.preset, args.image_size).eval()
    diffusion = GaussianDiffusion(beta_schedule(args.schedule, args.timesteps))
    x0 = to_unit_range(torch.from_numpy(synthetic_flowers(args.images, args.image_size, seed=0)))
    with torch.inference_mode():  # warm-up: the first call at a new shape allocates and picks kernels
        model(x0[:1].expand(args.batch_size, -1, -1, -1), torch.zeros(args.batch_size, dtype=torch.long))
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        bound = diffusion.nll_bpd(
            model, x0, args.variance, "recompute", torch.Generator().manual_seed(0), args.batch_size
        )
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)

    print(f"# {date.today()}, {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"# nll_bpd: {args.preset} UNet at {args.image_size}×{args.image_size}, {args.schedule} T = {args.timesteps}")
    print("| images | timesteps | batch size | threads | seconds | images/s | pairs/s | bits/dim (random weights) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    pairs = args.images * args.timesteps
    print(
        f"| {args.images} | {args.timesteps} | {args.batch_size} | {torch.get_num_threads()} | {median:.2f} "
        f"| {args.images / median:.2f} | {pairs / median:,.0f} | {bound.total.mean().item():.3f} |"
    )


if __name__ == "__main__":
    main()
