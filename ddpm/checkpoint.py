"""Checkpoints: plain dicts of tensors, numbers and strings, loadable with weights_only=True.

The format is defined here once, as two dataclasses whose fields are the file's keys: a
ModelCheckpoint is a final model (model.pt, trained or imported), and a TrainingCheckpoint
(checkpoints/) adds what resuming needs. A checkpoint describes its run completely, as nanoGPT's
`model_args` do: `arch` holds the UNet's keyword arguments (`UNet(**arch)` rebuilds it, no preset
table or pydantic needed), `diffusion` the process (schedule, T, prediction); `build_model` rebuilds
both. Loading never unpickles arbitrary objects, and writes are atomic (temporary file, fsync,
rename), so a kill at any instant leaves the previous one intact.
"""

import pickle
import zipfile
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Self

import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import UserError
from ddpm.files import atomic_output
from ddpm.schedules import process_betas
from ddpm.unet import ARCH_VERSION, UNet

Weights = dict[str, torch.Tensor]  # a state_dict


class UnreadableCheckpoint(UserError):
    """A checkpoint file that cannot be loaded at all: missing, truncated, damaged or tampered with."""


class EarlierArchitecture(UserError):
    """A checkpoint made by another UNet than this ddpm builds: its weights fit no model here."""

    def __init__(self, path: Path, saved: dict[str, Any]) -> None:
        self.version = saved.get("arch_version", "none")
        self.step = saved.get("step", 0)  # for a resume's refusal, which says whether that run had finished
        super().__init__(
            f"{path}: made by an earlier UNet (architecture version {self.version}, this ddpm builds version "
            f"{ARCH_VERSION}); retrain it, or import the weights again"
        )


def inconsistent(path: Path, reason: str) -> UserError:
    """A resumable state that cannot be resumed: a key missing, or contents that do not fit together."""
    return UserError(f"{path}: inconsistent checkpoint ({reason[:200]}); delete it, or --no-resume")


def _weights(optional: bool = False) -> Any:
    """A field of weights, which a checkpoint's description leaves out."""
    metadata = {"weights": True, "optional": optional}
    return field(default=None, metadata=metadata) if optional else field(metadata=metadata)


def _optional() -> Any:
    """A field that one kind of model lacks (an imported one: EMA, config, data): None, and then not in
    the file at all, so that the files keep the keys they always had."""
    return field(default=None, metadata={"optional": True})


@dataclass(kw_only=True)
class ModelCheckpoint:
    """A final model (model.pt), trained or imported: enough to rebuild it, and where it came from."""

    arch: dict[str, Any]  # the UNet's keyword arguments: UNet(**arch)
    arch_version: int  # the ARCH_VERSION of the UNet that made it: another one's weights fit no model here
    diffusion: dict[str, Any]  # the process: schedule, timesteps, prediction
    model: Weights = _weights()  # the weights as trained (or imported)
    step: int  # training steps done; 0 for an imported model
    ema: Weights | None = _weights(optional=True)  # trained: the EMA of the weights, which sampling uses
    config: dict[str, Any] | None = _optional()  # trained: the resolved config, which a resume compares
    data_sha256: str | None = _optional()  # trained: the prepared images'
    run_id: str | None = None  # the MLflow run that trained it; written as None where none did
    imported: dict[str, Any] | None = _optional()  # imported: the folder, files and sha256 of the weights
    variant: str | None = _optional()  # trained as a variant of params.yaml (ddpm.variants): its name

    @classmethod
    def _required(cls) -> list[str]:
        """The keys a file of this kind must hold: the fields without a default."""
        return [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]

    def to_dict(self) -> dict[str, Any]:
        """What torch.save writes: every field, less the optional ones this model lacks."""
        kept = [f for f in fields(self) if not (f.metadata.get("optional") and getattr(self, f.name) is None)]
        return {f.name: getattr(self, f.name) for f in kept}

    def description(self) -> dict[str, Any]:
        """What the file holds besides the weights: what `ddpm import` reports and `compare` reads."""
        weights = {f.name for f in fields(self) if f.metadata.get("weights")}
        return {name: value for name, value in self.to_dict().items() if name not in weights}

    @classmethod
    def from_dict(cls, path: Path, saved: dict[str, Any]) -> Self:
        """The checkpoint `saved` (torch.load's dict of the file at `path`); a one-line error where an
        earlier UNet made it or a key is missing. Keys this version does not know are ignored."""
        if saved.get("arch_version") != ARCH_VERSION:  # first: an earlier version's files hold other keys
            raise EarlierArchitecture(path, saved)
        missing = [name for name in cls._required() if name not in saved]
        if missing:
            raise cls._incomplete(path, missing)
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in saved.items() if key in names})

    @classmethod
    def _incomplete(cls, path: Path, missing: list[str]) -> UserError:
        keys = ", ".join(sorted(cls._required()))
        return UserError(f"{path}: not a ddpm checkpoint of this version (expected the keys {keys})")


@dataclass(kw_only=True)
class TrainingCheckpoint(ModelCheckpoint):
    """A resumable state (checkpoints/): a trained model, and what the loop needs to go on bit for bit."""

    ema: Weights = _weights()
    config: dict[str, Any]
    data_sha256: str
    ema_updates: int  # the EMA's count, which sets its warm-up decay
    optimizer: dict[str, Any]  # AdamW's state_dict: moments and step counts
    generator: torch.Tensor  # the loop's generator: it draws the batches, the timesteps and the noise
    rng: dict[str, Any]  # the global generators (dropout): {"cpu": tensor, "cuda": [tensor] or []}
    record: dict[str, Any]  # the loop's Record (ddpm.state), as a dict

    def final(self) -> ModelCheckpoint:
        """The final model of this state: what model.pt keeps of it (no optimizer, generators or record)."""
        return ModelCheckpoint(**{f.name: getattr(self, f.name) for f in fields(ModelCheckpoint)})

    @classmethod
    def _incomplete(cls, path: Path, missing: list[str]) -> UserError:
        return inconsistent(path, f"no {missing[0]!r}")


def build_model(
    arch: dict[str, Any], diffusion: dict[str, Any], device: torch.device
) -> tuple[UNet, GaussianDiffusion]:
    """The UNet `arch` describes (its initial weights drawn from the global generator) and the diffusion
    process `diffusion` describes (schedule, timesteps, prediction, zero_terminal_snr, input_scale), on
    `device`: what a checkpoint's model is rebuilt from, and what training starts from."""
    model = UNet(**arch).to(device)
    # checkpoints from before zero terminal SNR and the input scale lack their keys: neither was applied
    betas = process_betas(diffusion["schedule"], diffusion["timesteps"], diffusion.get("zero_terminal_snr", False),
                          diffusion.get("input_scale", 1.0))  # fmt: skip
    # one from before learned variances has no variance key: fixed
    process = GaussianDiffusion(betas, diffusion["prediction"], diffusion.get("variance", "fixed"))
    return model, process.to(device)


def save_checkpoint(path: Path, checkpoint: ModelCheckpoint) -> None:
    """Write `checkpoint` to `path`, atomically: a full disk leaves the previous file whole and says how
    much room the new one needs."""
    state = checkpoint.to_dict()
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


def load_checkpoint(path: Path, device: torch.device, mmap: bool = False) -> dict[str, Any]:
    """The dict saved at `path`, with tensors on `device`; an UnreadableCheckpoint if it is missing,
    truncated or tampered with (anything but tensors and plain data is refused unexecuted). `mmap` maps
    the weights instead of reading them (for the description only)."""
    try:
        saved = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise UnreadableCheckpoint(f"{path}: checkpoint not found; train first with `ddpm train`") from None
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: never relay that
        raise UnreadableCheckpoint(f"{path}: not a valid ddpm checkpoint (it holds objects other than tensors and "
                                   "plain data; refused without running them)") from None  # fmt: skip
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError):
        raise UnreadableCheckpoint(
            f"{path}: not a valid ddpm checkpoint (truncated, or not a file torch.save wrote)"
        ) from None
    if not isinstance(saved, dict):
        raise UnreadableCheckpoint(f"{path}: not a ddpm checkpoint (it holds a {type(saved).__name__}, not a dict)")
    return saved


def read_checkpoint(path: Path, device: torch.device, mmap: bool = False) -> ModelCheckpoint:
    """The model at `path` (any checkpoint holds one); a one-line error if the file cannot be read, lacks
    a key, or was made by an earlier UNet."""
    return ModelCheckpoint.from_dict(path, load_checkpoint(path, device, mmap))


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
    variant: str | None = None  # the variant it was trained as, where it was

    @property
    def name(self) -> str:
        """What the run is called (its MLflow runs' names): the variant's name, or the schedule's."""
        return self.variant or self.spec["schedule"]


def load_trained(path: Path, device: torch.device) -> Trained:
    """The model and diffusion process at `path`, rebuilt from the checkpoint alone."""
    saved = read_checkpoint(path, device)
    try:
        model, diffusion = build_model(saved.arch, saved.diffusion, device)
        model.load_state_dict(saved.model if saved.ema is None else saved.ema)
    except (TypeError, KeyError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: its weights do not fit its own description ({str(e).splitlines()[0]})") from None
    return Trained(model.eval(), diffusion, dict(saved.diffusion), saved.arch["image_size"], int(saved.step),
                   saved.run_id, path, saved.variant)  # fmt: skip


def describe(path: Path) -> dict[str, Any]:
    """A checkpoint's description without its weights (arch, diffusion, step, run id, ...), read without them."""
    return read_checkpoint(path, torch.device("cpu"), mmap=True).description()
