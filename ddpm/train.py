"""The training loop: Algorithm 1 of Ho et al. 2020 with AdamW, read top to bottom.

    ddpm train --beta-schedule cosine --model tiny --image-size 32 --steps 500 --data images.npy

The loss is read back from the device only every `train.log_every` steps, so the loop does
not wait on the GPU between steps.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ddpm.checkpoint import build_diffusion, build_model, save_checkpoint
from ddpm.config import Config
from ddpm.data import InMemoryImages, load_images
from ddpm.errors import UserError


@dataclass
class TrainResult:
    checkpoint: Path
    losses: list[tuple[int, float]]  # (step, mean loss over the steps since the previous entry)
    images_per_second: float
    seconds: float


def train(config: Config, data_path: Path, out_dir: Path, device: torch.device, progress: bool = True) -> TrainResult:
    """Train the model `config` describes on the images at `data_path`; write `out_dir`/model.pt."""
    cfg = config.train
    images = load_images(data_path)
    if images.shape[2:] != (config.data.image_size,) * 2:
        raise UserError(
            f"{data_path}: images are {images.shape[3]}×{images.shape[2]}, but data.image_size is "
            f"{config.data.image_size}; prepare the data at that size or set --image-size {images.shape[2]}"
        )
    dataset = InMemoryImages(images, device)

    torch.manual_seed(cfg.seed)
    model = build_model(config).to(device).train()
    diffusion = build_diffusion(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    losses: list[tuple[int, float]] = []
    loss_sum = torch.zeros((), device=device)  # accumulated on the device between read-backs
    start = last_log = time.perf_counter()
    bar = tqdm(total=cfg.steps, desc=f"train {config.diffusion.schedule}", disable=not progress, unit="step")
    for step in range(1, cfg.steps + 1):
        x0 = dataset.batch(cfg.batch_size)
        loss = diffusion.training_loss(model, x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()

        if step % cfg.log_every == 0 or step == cfg.steps:
            window = step - (losses[-1][0] if losses else 0)
            mean_loss = loss_sum.item() / window  # the one host-device sync
            loss_sum.zero_()
            now = time.perf_counter()
            images_per_second = window * cfg.batch_size / (now - last_log)
            last_log = now
            losses.append((step, mean_loss))
            bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{images_per_second:.0f}")
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - start

    checkpoint = out_dir / "model.pt"
    save_checkpoint(checkpoint, model, config, cfg.steps)
    return TrainResult(checkpoint, losses, cfg.steps * cfg.batch_size / seconds, seconds)
