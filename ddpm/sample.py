"""Drawing samples from a trained model: DDPM (Algorithm 2), DDIM or DPM-Solver++, in batches,
reproducibly.

Besides the samples, the first few of the first batch are recorded along the way, from x_T to
x_0, for a picture of the denoising and an animated GIF of it.
"""

import hashlib
import io
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ddpm.checkpoint import Trained, load_trained
from ddpm.config import Config, SampleConfig
from ddpm.data import to_uint8
from ddpm.diffusion import ClipMode, GaussianDiffusion, Model
from ddpm.errors import UserError
from ddpm.fastpath import FastPath
from ddpm.files import atomic_outputs, folder_lock, npy_size, sha256_hex
from ddpm.layout import GRID, PROGRESSION_GIF, PROGRESSION_PICTURE, SAMPLES_ARRAY, SAMPLES_ORIGIN
from ddpm.spacing import timesteps

GRID_IMAGES = 64
GRID_MIN_WIDTH = 512  # pixels: small images are enlarged (nearest neighbour) so a grid is legible
PROGRESSION_SAMPLES = 8  # samples followed through the chain
PROGRESSION_FRAMES = 40  # frames of the GIF, evenly spaced from x_T to x_0
PROGRESSION_COLUMNS = 12  # of those, the columns of the progression picture


def chain_length(diffusion: GaussianDiffusion, cfg: SampleConfig) -> int:
    """The number of denoising steps from x_T to x_0 with the configured sampler: its NFE."""
    return diffusion.num_timesteps if cfg.sampler == "ddpm" else cfg.steps


def chain_timesteps(cfg: SampleConfig, diffusion: GaussianDiffusion, source: str) -> list[int]:
    """The timesteps at which DDIM or DPM-Solver++ evaluates the model of process `diffusion`
    (`ddpm.spacing.timesteps`); a UserError naming the key and `source` (the model) where they are not
    defined, or where a zero-terminal-SNR model's chain would skip t = T − 1 (as ddpm.config refuses)."""
    num_timesteps = diffusion.num_timesteps
    if cfg.steps > num_timesteps:
        raise UserError(f"sample.steps: expected at most the model's {num_timesteps} timesteps ({source}), "
                        f"got {cfg.steps}")  # fmt: skip
    try:
        listed = timesteps(cfg.sampler, cfg.spacing, cfg.steps, num_timesteps)
    except ValueError as e:
        raise UserError(f"sample.spacing ({cfg.sampler}, {source}): {e}") from None
    if diffusion.alphas_cumprod[-1] == 0 and listed[0] != num_timesteps - 1:
        raise UserError(f"sample.spacing ({cfg.sampler}, {source}): {cfg.spacing} never samples t = T − 1, the "
                        "step of pure noise this zero-terminal-SNR model was trained on (Lin et al. 2023, "
                        "section 3.3); use sample.spacing: trailing")  # fmt: skip
    return listed


def check_learned_variance(cfg: SampleConfig, diffusion: GaussianDiffusion, source: str) -> None:
    """A UserError for DDIM at eta > 0 on a model that learned its variance (diffusion.variance
    learned_range): its sigma_t(eta) (Song et al. eq. 16) would replace the learned one. (At eta 0,
    DDIM and DPM-Solver++ add no noise and read the model's mean only.)"""
    if diffusion.variance == "learned_range" and cfg.sampler == "ddim" and cfg.eta > 0:
        raise UserError(f"sample.eta: DDIM at eta {cfg.eta} draws its own variance, not the one the model "
                        f"({source}) learned (diffusion.variance learned_range); expected sample.eta 0, or "
                        "sample.sampler ddpm, which samples with it")  # fmt: skip


def _chain(diffusion: GaussianDiffusion, network: Model, noise: torch.Tensor, cfg: SampleConfig,
           generator: torch.Generator) -> Iterator[tuple[int, torch.Tensor]]:  # fmt: skip
    """The configured sampler's chain from x_T = `noise`."""
    if cfg.sampler == "ddpm":
        return diffusion.p_sample_loop_progressive(network, noise, generator, cfg.variance, cfg.clip_mode)
    listed = chain_timesteps(cfg, diffusion, "the model")
    if cfg.sampler == "ddim":
        return diffusion.ddim_sample_loop_progressive(network, noise, listed, cfg.eta, generator, cfg.clip_mode)
    return diffusion.dpm_solver_sample_loop_progressive(network, noise, listed, cfg.clip_mode)


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    diffusion: GaussianDiffusion,
    cfg: SampleConfig,
    image_size: int,
    device: torch.device,
    progress: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`cfg.num_samples` images, uint8 (N, 3, H, W) on the CPU, and the progression of the first
    PROGRESSION_SAMPLES: uint8 frames (k, 3, H, W) from x_T to x_0. The same seed gives the same
    images. Raises NonFiniteSamples if the chain leaves the finite numbers."""
    generator = torch.Generator(device).manual_seed(cfg.seed)
    fast = FastPath.resolve(cfg, device)  # the chain calls the UNet with one shape: CUDA graphs pay on a GPU
    network = fast.compiled(fast.place(model), cuda_graphs=device.type == "cuda")
    length = chain_length(diffusion, cfg)
    batches, frames = [], []
    bar = tqdm(total=length * -(-cfg.num_samples // cfg.batch_size), desc=f"sample {cfg.sampler}", unit="step",
               disable=not progress)  # fmt: skip
    with bar:  # closed (its line ended) however the sampling ends
        for start in range(0, cfg.num_samples, cfg.batch_size):
            n = min(cfg.batch_size, cfg.num_samples - start)
            noise = fast.memory_format(torch.randn((n, 3, image_size, image_size), generator=generator, device=device))
            chain = _chain(diffusion, network, noise, cfg, generator)
            # chain positions 0 (x_T, before the first step) to `length` (x_0) to keep for the progression
            keep = set(np.linspace(0, length, PROGRESSION_FRAMES).round().astype(int)) if start == 0 else set()
            with fast.autocast(device):  # the UNet only: x_t stays float32
                for position, (_, x) in enumerate(itertools.chain([(None, noise)], chain)):  # x_T, then each step
                    if position in keep:
                        frames.append(to_uint8(x[:PROGRESSION_SAMPLES]).cpu())
                    bar.update(position > 0)
            if not torch.isfinite(x).all():
                raise NonFiniteSamples(f"the samples of batch {start // cfg.batch_size + 1} are not finite")
            batches.append(to_uint8(x).cpu())
            bar.set_postfix(images=f"{start + n}/{cfg.num_samples}")
    return torch.cat(batches), frames


class NonFiniteSamples(UserError):
    """The sampling chain produced NaN or infinity: the model or the sampler's settings are broken."""


PREVIEW_IMAGES, PREVIEW_STEPS = 16, 50


@torch.inference_mode()
def preview(
    model: Model, diffusion: GaussianDiffusion, image_size: int, device: torch.device, seed: int, clip_mode: ClipMode
) -> np.ndarray:
    """A 4×4 grid of DDIM samples (50 steps, η = 0, x_0 kept in range by `clip_mode`, as `ddpm sample`
    will keep it) as uint8 (H, W, 3), always from the same x_T for a seed, so that grids taken along a
    training run differ by the model alone. It draws on its own generator, so the training run's random
    stream is untouched."""
    generator = torch.Generator(device).manual_seed(seed)
    noise = torch.randn((PREVIEW_IMAGES, 3, image_size, image_size), generator=generator, device=device)
    listed = timesteps("ddim", "linspace", min(PREVIEW_STEPS, diffusion.num_timesteps), diffusion.num_timesteps)
    *_, (_, x0) = diffusion.ddim_sample_loop_progressive(model, noise, listed, 0.0, generator, clip_mode)
    return grid_picture(to_uint8(x0).cpu(), 4)


def grid_picture(images: torch.Tensor, columns: int, gap: int = 2) -> np.ndarray:
    """uint8 images (N, 3, H, W) in rows of `columns` with `gap`-pixel black borders, as uint8
    (H', W', 3), enlarged by a whole factor (nearest neighbour) to be at least GRID_MIN_WIDTH wide."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    grid = np.zeros((gap + rows * (h + gap), gap + columns * (w + gap), 3), np.uint8)
    for i, image in enumerate(images.numpy()):
        top, left = gap + (i // columns) * (h + gap), gap + (i % columns) * (w + gap)
        grid[top : top + h, left : left + w] = image.transpose(1, 2, 0)
    factor = max(1, -(-GRID_MIN_WIDTH // grid.shape[1]))
    return grid.repeat(factor, axis=0).repeat(factor, axis=1)


def sample(
    cfg: SampleConfig,
    checkpoint: Path,
    out_dir: Path,
    device: torch.device,
    progress: bool = True,
    ready: Callable[[Trained], None] | None = None,
) -> tuple[torch.Tensor, Trained]:
    """Sample from the model at `checkpoint` (its EMA weights); write `out_dir`/samples.npy, grid.png,
    progression.png (the denoising of a few samples, x_T on the left) and progression.gif. Returns
    the samples and the model's description. `ready` is called once the inputs are checked, before
    the sampling (the CLI opens MLflow there). Nothing is written if the samples are not finite."""
    trained = load_trained(checkpoint, device)
    check_learned_variance(cfg, trained.diffusion, str(checkpoint))
    if cfg.sampler != "ddpm":
        chain_timesteps(cfg, trained.diffusion, str(checkpoint))
    if ready:
        ready(trained)
    try:
        images, frames = generate(trained.model, trained.diffusion, cfg, trained.image_size, device, progress)
    except NonFiniteSamples as e:
        raise NonFiniteSamples(f"{checkpoint}: {e}; its weights or the sample settings are broken") from None
    write_samples(out_dir, images, frames, origin(trained, cfg))
    return images, trained


def write_samples(out_dir: Path, images: torch.Tensor, frames: list[torch.Tensor], record: dict[str, Any]) -> None:
    """samples.npy, its pictures and samples.json (`record` and the sha256 of each of the others) in
    `out_dir`, as one set: a failure leaves the previous set whole, and a set that a kill mixed
    between two renames fails `ddpm.origin.check_samples`. The pictures are encoded first, so that a
    full disk says the whole size of each file."""
    array = images.numpy()
    columns = int(np.ceil(np.sqrt(min(len(images), GRID_IMAGES))))
    pictures = {
        GRID: png_bytes(grid_picture(images[:GRID_IMAGES], columns)),
        PROGRESSION_PICTURE: png_bytes(progression_picture(frames)),
        PROGRESSION_GIF: gif_bytes(frames),
    }
    with atomic_outputs() as output:
        np.save(tmp := output(out_dir / SAMPLES_ARRAY, npy_size(array)), array)
        digests = {SAMPLES_ARRAY: sha256_hex(tmp)}
        for name, data in pictures.items():
            output(out_dir / name, len(data)).write_bytes(data)
            digests[name] = hashlib.sha256(data).hexdigest()
        described = (json.dumps(record | {"sha256": digests}, indent=2) + "\n").encode()
        output(out_dir / SAMPLES_ORIGIN, len(described)).write_bytes(described)


def origin(trained: Trained, cfg: SampleConfig) -> dict:
    """What samples.json holds: the checkpoint (and its sha256: the sweep reuses only this model's
    samples), its run folder and MLflow run, the process, the settings."""
    return {
        "checkpoint": str(trained.path), "checkpoint_sha256": sha256_hex(trained.path),
        "run_dir": str(trained.path.parent), "model_run_id": trained.run_id,
        "step": trained.step, "image_size": trained.image_size, **trained.spec, "sample": cfg.model_dump(mode="json"),
        **({"variant": trained.variant} if trained.variant else {}),
    }  # fmt: skip


def png_bytes(picture: np.ndarray) -> bytes:
    """`picture` (uint8, (H, W, 3)) encoded as a PNG."""
    encoded = io.BytesIO()
    Image.fromarray(picture).save(encoded, format="PNG")
    return encoded.getvalue()


def progression_picture(frames: list[torch.Tensor]) -> np.ndarray:
    """A row per sample followed through the chain, PROGRESSION_COLUMNS of the frames as columns."""
    columns = [
        frames[i] for i in np.linspace(0, len(frames) - 1, min(PROGRESSION_COLUMNS, len(frames))).round().astype(int)
    ]
    stacked = torch.stack(columns, dim=1).flatten(0, 1)  # (k · columns, 3, H, W), row by row
    return grid_picture(stacked, len(columns))


def gif_bytes(frames: list[torch.Tensor]) -> bytes:
    """An animated GIF of every frame (each a row of the samples) that holds the last one."""
    pictures = [Image.fromarray(grid_picture(frame, len(frame))) for frame in frames]
    encoded, durations = io.BytesIO(), [80] * (len(pictures) - 1) + [2000]
    pictures[0].save(encoded, format="GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return encoded.getvalue()


def stage(config: Config, checkpoint: Path, out_dir: Path, device: torch.device) -> tuple[torch.Tensor, Trained]:
    """`ddpm sample`: `sample` into `out_dir`, holding its lock, with the pictures logged to the child
    run of this sampling configuration under the model's MLflow run (where tracking is on)."""
    from ddpm.tracking import log_samples, session

    with folder_lock(out_dir), session(config.tracking, checkpoint.parent) as tracked:
        images, trained = sample(config.sample, checkpoint, out_dir, device, ready=tracked.open)
        if tracked.store:
            evaluation = config.evaluate.model_dump(mode="json")
            log_samples(tracked.store, origin(trained, config.sample), evaluation, out_dir)
    return images, trained
