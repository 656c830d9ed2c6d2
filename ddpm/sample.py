"""Drawing samples from a trained model: DDPM (Algorithm 2) or DDIM, in batches, reproducibly."""

from collections import deque
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image
from tqdm import tqdm

from ddpm.checkpoint import build_diffusion, load_checkpoint
from ddpm.config import SampleConfig
from ddpm.data import save_images, to_uint8
from ddpm.diffusion import GaussianDiffusion, Model
from ddpm.errors import UserError
from ddpm.files import atomic_output

GRID_IMAGES = 64


@torch.inference_mode()
def generate(
    model: Model,
    diffusion: GaussianDiffusion,
    cfg: SampleConfig,
    image_size: int,
    device: torch.device,
    progress: bool = True,
) -> torch.Tensor:
    """`cfg.num_samples` images, uint8 (N, 3, H, W) on the CPU. The same seed gives the same images."""
    generator = torch.Generator(device).manual_seed(cfg.seed)
    batches = []
    bar = tqdm(total=cfg.num_samples, desc=f"sample {cfg.sampler}", disable=not progress, unit="img")
    for start in range(0, cfg.num_samples, cfg.batch_size):
        n = min(cfg.batch_size, cfg.num_samples - start)
        noise = torch.randn((n, 3, image_size, image_size), generator=generator, device=device)
        if cfg.sampler == "ddpm":
            steps = diffusion.p_sample_loop_progressive(model, noise, generator, cfg.variance, cfg.clip_denoised)
        else:
            steps = diffusion.ddim_sample_loop_progressive(
                model, noise, cfg.ddim_steps, cfg.eta, generator, cfg.clip_denoised
            )
        _, x = deque(steps, maxlen=1)[0]  # run the chain, keeping only x_0
        batches.append(to_uint8(x).cpu())
        bar.update(n)
    bar.close()
    return torch.cat(batches)


def sample(
    cfg: SampleConfig, checkpoint: Path, out_dir: Path, device: torch.device, progress: bool = True
) -> torch.Tensor:
    """Sample from the model at `checkpoint`; write `out_dir`/samples.npy and `out_dir`/grid.png."""
    model, config, _ = load_checkpoint(checkpoint, device)
    diffusion = build_diffusion(config).to(device)
    if cfg.sampler == "ddim" and cfg.ddim_steps > diffusion.num_timesteps:
        raise UserError(
            f"sample.ddim_steps: expected at most diffusion.timesteps = {diffusion.num_timesteps}, got {cfg.ddim_steps}"
        )
    images = generate(model, diffusion, cfg, config.data.image_size, device, progress)
    save_images(out_dir / "samples.npy", images.numpy())
    with atomic_output(out_dir / "grid.png") as tmp:
        save_image(images[:GRID_IMAGES].float() / 255, tmp, nrow=int(np.ceil(np.sqrt(min(len(images), GRID_IMAGES)))))
    return images
