"""Checkpoints: plain dicts of tensors, numbers and the resolved config, loadable with weights_only=True.

Loading never unpickles arbitrary objects, and a checkpoint rebuilds its model and diffusion
process from the config it carries alone. Writes are atomic (temporary file, fsync, rename), so a
kill at any instant leaves the previous checkpoint intact.
"""

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from ddpm.config import Config
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import UserError
from ddpm.files import atomic_output
from ddpm.schedules import beta_schedule
from ddpm.unet import UNet

STEP_FILE = re.compile(r"step-(\d+)\.pt")


def build_model(config: Config) -> UNet:
    """The UNet that `config` describes."""
    return UNet(config.data.image_size, **config.model.architecture(config.data.image_size))


def build_diffusion(config: Config) -> GaussianDiffusion:
    """The diffusion process that `config` describes."""
    betas = beta_schedule(config.diffusion.schedule, config.diffusion.timesteps)
    return GaussianDiffusion(betas, config.diffusion.prediction)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` (tensors, numbers, strings and containers of them) to `path`, atomically."""
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def read_checkpoint(path: Path, device: torch.device, keys: set[str]) -> dict[str, Any]:
    """The dict saved at `path`, with tensors on `device`; a clear error if it is missing, truncated,
    tampered with (anything but tensors and plain data is refused unexecuted) or lacks `keys`."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found; train first with `ddpm train`") from None
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a valid ddpm checkpoint ({first_line})") from None
    if not isinstance(state, dict) or not keys <= state.keys():
        raise UserError(f"{path}: not a ddpm checkpoint (expected the keys {', '.join(sorted(keys))})")
    return state


def load_checkpoint(path: Path, device: torch.device) -> tuple[UNet, Config, int]:
    """The model for sampling (its EMA weights where saved; in eval mode, on `device`), its config
    and its step."""
    state = read_checkpoint(path, device, {"model", "config", "step"})
    try:
        config = Config.model_validate(state["config"])
        model = build_model(config).to(device)
        model.load_state_dict(state.get("ema", state["model"]))
    except (ValidationError, ValueError, RuntimeError) as e:
        raise UserError(
            f"{path}: its weights or config do not fit this version of ddpm ({str(e).splitlines()[0]})"
        ) from None
    return model.eval(), config, int(state["step"])


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step-{step:08d}.pt"


def step_checkpoints(folder: Path) -> list[Path]:
    """The checkpoints `checkpoint_path` wrote in `folder`, oldest first."""
    found = [p for p in folder.glob("step-*.pt") if STEP_FILE.fullmatch(p.name)] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(STEP_FILE.fullmatch(p.name).group(1)))
