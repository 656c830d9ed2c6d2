"""Checkpoints: a plain dict of tensors and the resolved config, loadable with weights_only=True.

Loading never unpickles arbitrary objects, and a checkpoint rebuilds its model and diffusion
process from the config it carries alone.
"""

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from ddpm.config import Config
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import UserError
from ddpm.files import atomic_output
from ddpm.schedules import beta_schedule
from ddpm.unet import UNet


def build_model(config: Config) -> UNet:
    """The UNet that `config` describes."""
    return UNet(config.data.image_size, **config.model.architecture(config.data.image_size))


def build_diffusion(config: Config) -> GaussianDiffusion:
    """The diffusion process that `config` describes."""
    return GaussianDiffusion(
        beta_schedule(config.diffusion.schedule, config.diffusion.timesteps), config.diffusion.prediction
    )


def save_checkpoint(path: Path, model: nn.Module, config: Config, step: int) -> None:
    """Write the model's weights, the config and the step to `path`, atomically."""
    state = {"model": model.state_dict(), "config": config.model_dump(mode="json"), "step": step}
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, device: torch.device) -> tuple[UNet, Config, int]:
    """The model (in eval mode, on `device`), config and step saved at `path`."""
    try:
        state: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found; train first with `ddpm train`") from None
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a valid ddpm checkpoint ({first_line})") from None
    if not isinstance(state, dict) or not {"model", "config", "step"} <= state.keys():
        raise UserError(f"{path}: not a ddpm checkpoint (expected the keys model, config and step)")
    try:
        config = Config.model_validate(state["config"])
        model = build_model(config).to(device)
        model.load_state_dict(state["model"])
    except (ValidationError, ValueError, RuntimeError) as e:
        raise UserError(
            f"{path}: its weights or config do not match this version of ddpm ({str(e).splitlines()[0]})"
        ) from None
    return model.eval(), config, int(state["step"])
