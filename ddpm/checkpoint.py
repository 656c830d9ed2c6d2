"""Checkpoints: plain dicts of tensors, numbers and strings, loadable with weights_only=True.

A checkpoint describes its run completely, as nanoGPT's `model_args` do: `arch` holds the UNet's
keyword arguments (`UNet(**arch)` rebuilds it, no preset table or pydantic needed), `diffusion`
the process (schedule, T, prediction). Training checkpoints also carry the resolved config,
which resume compares with today's. Loading never unpickles arbitrary objects, and writes are
atomic (temporary file, fsync, rename), so a kill at any instant leaves the previous one intact.
"""

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import UserError
from ddpm.files import atomic_output
from ddpm.schedules import beta_schedule
from ddpm.unet import ARCH_VERSION, UNet

STEP_FILE = re.compile(r"step-(\d+)\.pt")
MODEL_KEYS = {"arch", "arch_version", "diffusion", "model", "step"}  # what every checkpoint holds


class UnreadableCheckpoint(UserError):
    """A checkpoint file that cannot be loaded at all: missing, truncated, damaged or tampered with."""


def build_diffusion(spec: dict[str, Any]) -> GaussianDiffusion:
    """The diffusion process of a checkpoint's `diffusion` entry: {schedule, timesteps, prediction}."""
    return GaussianDiffusion(beta_schedule(spec["schedule"], spec["timesteps"]), spec["prediction"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` (tensors, numbers, strings and containers of them) to `path`, atomically: a full
    disk leaves the previous file whole and says how much room the new one needs."""
    with atomic_output(path, needed=_nbytes(state)) as tmp:
        torch.save(state, tmp)


def _nbytes(value: Any) -> int:
    """The bytes of the tensors in `value`, nested in dicts and lists: about what torch.save writes."""
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_nbytes(v) for v in value)
    return 0


def read_checkpoint(path: Path, device: torch.device, keys: set[str] = MODEL_KEYS, mmap: bool = False) -> dict:
    """The dict saved at `path`, with tensors on `device`; a clear error if it is missing, truncated,
    tampered with (anything but tensors and plain data is refused unexecuted), lacks `keys`, or was
    made by an earlier UNet. `mmap` maps the weights instead of reading them (for the metadata only)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise UnreadableCheckpoint(f"{path}: checkpoint not found; train first with `ddpm train`") from None
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: never relay that
        raise UnreadableCheckpoint(f"{path}: not a valid ddpm checkpoint (it holds objects other than tensors and "
                                   "plain data; refused without running them)") from None  # fmt: skip
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError):
        raise UnreadableCheckpoint(
            f"{path}: not a valid ddpm checkpoint (truncated, or not a file torch.save wrote)"
        ) from None
    if not isinstance(state, dict):
        raise UnreadableCheckpoint(f"{path}: not a ddpm checkpoint (it holds a {type(state).__name__}, not a dict)")
    if "arch_version" in keys and state.get("arch_version") != ARCH_VERSION:
        raise UserError(
            f"{path}: made by an earlier UNet (architecture version {state.get('arch_version', 'none')}, this ddpm "
            f"builds version {ARCH_VERSION}); retrain it, or import the weights again"
        )
    if not keys <= state.keys():
        raise UserError(f"{path}: not a ddpm checkpoint of this version (expected the keys {', '.join(sorted(keys))})")
    return state


@dataclass
class Trained:
    """A model to sample from and what it is: the checkpoint's EMA weights (where saved), in eval mode."""

    model: UNet
    diffusion: GaussianDiffusion
    spec: dict[str, Any]  # the checkpoint's `diffusion` entry: schedule, timesteps, prediction
    image_size: int
    step: int
    run_id: str | None  # the MLflow run that trained it, where one did
    path: Path


def load_trained(path: Path, device: torch.device) -> Trained:
    """The model and diffusion process at `path`, rebuilt from the checkpoint alone."""
    state = read_checkpoint(path, device)
    try:
        model = UNet(**state["arch"]).to(device)
        model.load_state_dict(state.get("ema", state["model"]))
        diffusion = build_diffusion(state["diffusion"]).to(device)
    except (TypeError, KeyError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: its weights do not fit its own description ({str(e).splitlines()[0]})") from None
    spec = dict(state["diffusion"])
    return Trained(model.eval(), diffusion, spec, state["arch"]["image_size"], int(state["step"]),
                   state.get("run_id"), path)  # fmt: skip


def describe(path: Path) -> dict[str, Any]:
    """A checkpoint's description without its weights: arch, diffusion, step and run id."""
    state = read_checkpoint(path, torch.device("cpu"), mmap=True)
    return {key: state.get(key) for key in ("arch", "diffusion", "step", "run_id")}


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step-{step:08d}.pt"


def step_checkpoints(folder: Path) -> list[Path]:
    """The checkpoints `checkpoint_path` wrote in `folder`, oldest first."""
    found = [p for p in folder.glob("step-*.pt") if STEP_FILE.fullmatch(p.name)] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(STEP_FILE.fullmatch(p.name).group(1)))
