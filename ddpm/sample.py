"""Drawing samples from a trained model: DDPM (Algorithm 2) or DDIM, in batches, reproducibly.

Besides the samples, the first few of the first batch are recorded along the way, from x_T to
x_0, for a picture of the denoising and an animated GIF of it.
"""

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from ddpm.checkpoint import build_diffusion, load_checkpoint
from ddpm.config import SampleConfig
from ddpm.data import save_images, to_uint8
from ddpm.diffusion import GaussianDiffusion, Model
from ddpm.errors import UserError
from ddpm.files import atomic_output

GRID_IMAGES = 64
PROGRESSION_SAMPLES = 8  # samples followed through the chain
PROGRESSION_FRAMES = 40  # frames of the GIF, evenly spaced from x_T to x_0
PROGRESSION_COLUMNS = 12  # of those, the columns of the progression picture


@torch.inference_mode()
def generate(
    model: Model,
    diffusion: GaussianDiffusion,
    cfg: SampleConfig,
    image_size: int,
    device: torch.device,
    progress: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`cfg.num_samples` images, uint8 (N, 3, H, W) on the CPU, and the progression of the first
    PROGRESSION_SAMPLES: uint8 frames (k, 3, H, W) from x_T to x_0. The same seed gives the same images."""
    generator = torch.Generator(device).manual_seed(cfg.seed)
    gpu = device.type == "cuda"
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and gpu)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)  # the UNet only; x_t stays fp32
    if cfg.compile is True or (cfg.compile == "auto" and gpu):  # the chain calls it with one shape: CUDA graphs pay
        model = torch.compile(model, mode="reduce-overhead" if gpu else "default")
    batches, frames = [], []
    bar = tqdm(total=cfg.num_samples, desc=f"sample {cfg.sampler}", disable=not progress, unit="img")
    for start in range(0, cfg.num_samples, cfg.batch_size):
        n = min(cfg.batch_size, cfg.num_samples - start)
        noise = torch.randn((n, 3, image_size, image_size), generator=generator, device=device)  # x_T
        if cfg.sampler == "ddpm":
            chain = diffusion.p_sample_loop_progressive(model, noise, generator, cfg.variance, cfg.clip_denoised)
            length = diffusion.num_timesteps
        else:
            chain = diffusion.ddim_sample_loop_progressive(
                model, noise, cfg.ddim_steps, cfg.eta, generator, cfg.clip_denoised
            )
            length = cfg.ddim_steps
        # chain positions 0 (x_T, before the first step) to `length` (x_0) to keep for the progression
        keep = set(np.linspace(0, length, PROGRESSION_FRAMES).round().astype(int)) if start == 0 else set()
        with autocast:
            for position, (_, x) in enumerate(itertools.chain([(None, noise)], chain)):  # x_T, then each step
                if position in keep:
                    frames.append(to_uint8(x[:PROGRESSION_SAMPLES]).cpu())
        batches.append(to_uint8(x).cpu())
        bar.update(n)
    bar.close()
    return torch.cat(batches), frames


PREVIEW_IMAGES, PREVIEW_STEPS = 16, 50


@torch.inference_mode()
def preview(model: Model, diffusion: GaussianDiffusion, image_size: int, device: torch.device, seed: int) -> np.ndarray:
    """A 4×4 grid of DDIM samples (50 steps, η = 0) as uint8 (H, W, 3), always from the same x_T
    for a seed, so that grids taken along a training run differ by the model alone. It draws on
    its own generator, so the training run's random stream is untouched."""
    generator = torch.Generator(device).manual_seed(seed)
    noise = torch.randn((PREVIEW_IMAGES, 3, image_size, image_size), generator=generator, device=device)
    steps = min(PREVIEW_STEPS, diffusion.num_timesteps)
    *_, (_, x0) = diffusion.ddim_sample_loop_progressive(model, noise, steps, 0.0, generator)
    return make_grid(to_uint8(x0).cpu(), nrow=4).permute(1, 2, 0).numpy()


def sample(
    cfg: SampleConfig,
    checkpoint: Path,
    out_dir: Path,
    device: torch.device,
    progress: bool = True,
    ready: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Sample from the model at `checkpoint` (its EMA weights); write `out_dir`/samples.npy, grid.png,
    progression.png (the denoising of a few samples, x_T on the left) and progression.gif.
    `ready` is called once the inputs are checked, before the sampling (the CLI opens MLflow there)."""
    model, config, _ = load_checkpoint(checkpoint, device)
    diffusion = build_diffusion(config).to(device)
    if cfg.sampler == "ddim" and cfg.ddim_steps > diffusion.num_timesteps:
        raise UserError(
            f"sample.ddim_steps: expected at most diffusion.timesteps = {diffusion.num_timesteps}, got {cfg.ddim_steps}"
        )
    if ready:
        ready()
    images, frames = generate(model, diffusion, cfg, config.data.image_size, device, progress)
    save_images(out_dir / "samples.npy", images.numpy())
    with atomic_output(out_dir / "grid.png") as tmp:
        save_image(images[:GRID_IMAGES].float() / 255, tmp, nrow=int(np.ceil(np.sqrt(min(len(images), GRID_IMAGES)))))
    write_progression(frames, out_dir / "progression.png", out_dir / "progression.gif")
    return images


def write_progression(frames: list[torch.Tensor], picture: Path, gif: Path) -> None:
    """A picture with one row per sample and PROGRESSION_COLUMNS of the frames as columns, and a GIF
    of every frame (each a row of the samples) that holds the last one."""
    columns = [
        frames[i] for i in np.linspace(0, len(frames) - 1, min(PROGRESSION_COLUMNS, len(frames))).round().astype(int)
    ]
    stacked = torch.stack(columns, dim=1).flatten(0, 1)  # (k · columns, 3, H, W), row by row
    with atomic_output(picture) as tmp:
        save_image(stacked.float() / 255, tmp, nrow=len(columns))
    pictures = [Image.fromarray(make_grid(frame, nrow=len(frame)).permute(1, 2, 0).numpy()) for frame in frames]
    with atomic_output(gif) as tmp:
        durations = [80] * (len(pictures) - 1) + [2000]
        pictures[0].save(tmp, save_all=True, append_images=pictures[1:], duration=durations, loop=0)
