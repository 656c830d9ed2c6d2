"""A training run's state and when it may go on: the TrainState a checkpoint holds (weights, EMA,
optimizer, the loop's generator, RNG states, the loss record), and the start-or-resume policy.
The checkpoint's format is ddpm.checkpoint's TrainingCheckpoint.
"""

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpm.checkpoint import (
    EarlierArchitecture,
    TrainingCheckpoint,
    UnreadableCheckpoint,
    build_model,
    inconsistent,
    load_checkpoint,
)
from ddpm.config import BOOKKEEPING, Config, TrainConfig
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import UserError
from ddpm.layout import step_checkpoints
from ddpm.unet import ARCH_VERSION, UNet


@dataclass
class Record:
    """What the loop accumulates, saved with every checkpoint."""

    losses: list[tuple[int, float]] = field(default_factory=list)  # the log entries; none for a window of NaNs
    window_loss_sum: float = 0.0  # finite losses since the last entry (a checkpoint can fall between entries)
    window_count: int = 0
    nonfinite: int = 0
    nonfinite_in_a_row: int = 0
    seconds: float = 0.0  # training time up to the checkpoint, resumes included
    quality: list[dict[str, float]] = field(default_factory=list)  # quality.csv's rows (ddpm.quality)

    def update(self, window: "Window") -> None:
        """Take in the statistics read back from the device."""
        self.window_loss_sum, self.window_count = window.loss_sum, window.finite
        self.nonfinite, self.nonfinite_in_a_row = window.nonfinite, window.in_a_row


@dataclass
class Window:
    """The loss statistics read back from the device."""

    loss_sum: float  # of the finite losses since the last log entry
    finite: int  # steps with a finite loss since the last log entry
    nonfinite: int  # skipped steps, in all
    in_a_row: int  # skipped steps, the latest run of them


class EMA:
    """Exponential moving average of a model's parameters, theta_ema ← d·theta_ema + (1 − d)·theta.

    With `warmup`, d = min(decay, (1 + n)/(10 + n)) after n updates, so the average forgets the
    random initialisation early instead of dragging it along for ~1/(1 − decay) steps. The count
    and the decay live on the device, so that a skipped step (d = 1) needs no host sync."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        self.updates = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)

    def current_decay(self) -> torch.Tensor:
        n = self.updates
        return ((1 + n) / (10 + n)).clamp(max=self.decay) if self.warmup else torch.full_like(n, self.decay)

    @torch.no_grad()
    def update(self, model: nn.Module, skipped: torch.Tensor | None = None) -> None:
        """One update; none at all (d = 1, the count unchanged) where `skipped` (a 0/1 tensor) is 1."""
        d = self.current_decay() if skipped is None else torch.where(skipped > 0, 1.0, self.current_decay())
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), (1 - d).float())
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)
        self.updates += 1 if skipped is None else 1 - skipped.double()


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the fused kernel (CPU and CUDA): one launch for all weights, and a step it is told
    to skip (`found_inf`) is skipped on the device, without reading anything back."""
    return torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
        fused=True,
    )  # fmt: skip


@dataclass
class TrainState:
    """Everything a checkpoint holds: created fresh from the seed or from a checkpoint, saved as one."""

    model: UNet
    ema: EMA
    optimizer: torch.optim.AdamW
    generator: torch.Generator  # the loop's own: it draws the batches, the timesteps and the noise
    diffusion: GaussianDiffusion  # not saved: the checkpoint's description rebuilds it
    data_sha256: str  # the prepared images it trains on
    step: int = 0
    record: Record = field(default_factory=Record)
    run_id: str | None = None  # the MLflow run it reports to, once the tracker has started one

    @classmethod
    def create(
        cls, config: Config, device: torch.device, data_sha256: str, saved: TrainingCheckpoint | None, path: Path | None
    ) -> "TrainState":
        """A fresh state from the seed, or the one `saved` (the checkpoint at `path`) holds."""
        cfg = config.train
        torch.manual_seed(cfg.seed)  # the initial weights; the global stream also draws dropout's masks
        model, diffusion = build_model(config.arch(), config.diffusion.model_dump(), device)
        model.train()
        ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
        generator = torch.Generator(device).manual_seed(cfg.seed)
        state = cls(model, ema, make_optimizer(model, cfg), generator, diffusion, data_sha256)
        if saved is not None:
            state._restore(saved, path)
        return state

    def _restore(self, saved: TrainingCheckpoint, path: Path | None) -> None:
        """Take in what `saved` holds; an inconsistent checkpoint is one line, before any MLflow run."""
        try:
            self.model.load_state_dict(saved.model)
            self.ema.model.load_state_dict(saved.ema)
            self.ema.updates.fill_(saved.ema_updates)
            self.optimizer.load_state_dict(saved.optimizer)
            self.generator.set_state(saved.generator.cpu())
            set_rng_state(saved.rng)
            self.step, self.record = int(saved.step), Record(**saved.record)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise inconsistent(path, f"no {reason}" if isinstance(e, KeyError) else reason) from None

    def checkpoint(self, config: Config, device: torch.device) -> TrainingCheckpoint:
        """The checkpoint of this state: the run's description (arch, diffusion, config, data, MLflow run)
        and everything the loop needs to go on."""
        return TrainingCheckpoint(
            arch=config.arch(), arch_version=ARCH_VERSION, diffusion=config.diffusion.model_dump(),
            config=config.model_dump(mode="json"), data_sha256=self.data_sha256, run_id=self.run_id,
            model=self.model.state_dict(), ema=self.ema.model.state_dict(), ema_updates=int(self.ema.updates),
            optimizer=self.optimizer.state_dict(), generator=self.generator.get_state(), rng=rng_state(device),
            step=self.step, record=asdict(self.record), variant=config._variant,
        )  # fmt: skip

    def finite(self) -> bool:
        """Whether the weights and the EMA are all finite: one check on the device, one sync."""
        tensors = [*self.model.parameters(), *self.ema.model.parameters()]
        return bool(torch.stack([torch.isfinite(p).all() for p in tensors]).all())


def starting_point(
    checkpoints: Path, config: Config, data_sha256: str, resume: bool, restart_if_changed: bool,
    device: torch.device, say: Callable[[str], None],
) -> tuple[TrainingCheckpoint | None, Path | None]:  # fmt: skip
    """Where training starts: the checkpoint to resume and its path, or (None, None) for a fresh start.

    With `resume`, the newest readable checkpoint in `checkpoints` (an unreadable newer one is
    passed over with a note) is resumed if it belongs to this run: the same UNet and data, every
    setting the weights depend on the same (bookkeeping such as train.steps or log_every aside), and
    no more steps done than asked for. One that does not is refused with what differs; with
    `restart_if_changed` (the pipeline's way) it is set aside instead and training starts over."""
    if not resume:
        return None, None
    found, path = _newest_readable(checkpoints, device, say)
    if found is None:
        return None, None
    try:
        saved = TrainingCheckpoint.from_dict(path, found)
    except EarlierArchitecture as e:  # an earlier ddpm's run: a change like any other, not a damaged file
        changed, steps_done = [f"the UNet's architecture version ({e.version} → {ARCH_VERSION})"], e.step
    else:
        changed, steps_done = _changes(saved, config, data_sha256), saved.step
        if not changed:
            return saved, path
    if restart_if_changed:
        say(f"{path} was made with other settings ({', '.join(changed)}); starting over")
        return None, None
    done = "the run there finished" if steps_done >= config.train.steps else "cannot resume"
    raise UserError(
        f"{path}: {done} with other settings ({', '.join(changed)}); nothing was trained or recorded. "
        "Use --no-resume to start over, or --out for another folder"
    )


def _newest_readable(
    folder: Path, device: torch.device, say: Callable[[str], None]
) -> tuple[dict[str, Any] | None, Path | None]:
    """The newest checkpoint in `folder` that loads (as torch.load's dict), and its path."""
    unreadable: list[Path] = []
    for path in reversed(step_checkpoints(folder)):
        try:
            found = load_checkpoint(path, device)
        except UnreadableCheckpoint:
            unreadable.append(path)
            continue
        if unreadable:
            say(f"{unreadable[0]} cannot be read (truncated or damaged); resuming from {path}")
        return found, path
    if unreadable:
        say(f"{unreadable[0]} cannot be read (truncated or damaged), nor any older checkpoint; starting over")
    return None, None


def _changes(saved: TrainingCheckpoint, config: Config, data_sha256: str) -> list[str]:
    """What differs between a checkpoint's run and the run `config` asks for, a few words each."""
    try:
        before = Config.model_validate(saved.config)
    except ValueError:
        return ["a config this version of ddpm cannot read"]
    changed = [] if saved.data_sha256 == data_sha256 else ["the prepared images"]
    changed += [f"{key} ({old} → {new})" for key, (old, new) in _differences(before, config).items()]
    if saved.step > config.train.steps:
        changed.append(f"train.steps ({saved.step} done, {config.train.steps} asked for)")
    return changed


def _differences(before: Config, now: Config) -> dict[str, tuple[Any, Any]]:
    """The settings the weights depend on that differ: the UNet, the process, training (bookkeeping aside)."""
    old, new = _settings(before), _settings(now)
    # .get: model.learned_variance is in the arch only where learned (Config.arch)
    return {key: (old.get(key), new[key]) for key in new if old.get(key) != new[key]}


def _settings(config: Config) -> dict[str, Any]:
    arch = {f"model.{k}": v for k, v in config.arch().items() if k != "image_size"}
    process = {f"diffusion.{k}": v for k, v in config.diffusion.model_dump().items()}
    training = {f"train.{k}": v for k, v in config.train.model_dump().items() if k not in BOOKKEEPING}
    return {"data.image_size": config.data.image_size, **arch, **process, **training}


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global generators (the CPU's, and the device's for dropout): under torchrun every rank's are the same."""
    cuda = [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0].cpu())
