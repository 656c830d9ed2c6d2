"""The training loop: Algorithm 1 of Ho et al. 2020, read top to bottom.

    ddpm train --beta-schedule cosine --model tiny --image-size 32 --steps 500

AdamW with a linear learning-rate warm-up and gradient clipping, and an EMA of the weights for
sampling. Every `train.checkpoint_every` steps a checkpoint saves everything needed to go on bit
for bit: weights, EMA, optimizer, RNG states and the loss record. `train` resumes from the latest
one unless told not to. A step whose loss is not finite is skipped and counted, and
`train.max_nonfinite` of them in a row stop the run. SIGINT and SIGTERM write a checkpoint and stop.
The mean loss is read back for the log every `train.log_every` steps.
"""

import copy
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ddpm.checkpoint import (
    build_diffusion,
    build_model,
    checkpoint_path,
    read_checkpoint,
    save_checkpoint,
    step_checkpoints,
)
from ddpm.config import Config
from ddpm.data import InMemoryImages, file_digest, load_images
from ddpm.errors import UserError
from ddpm.files import atomic_output, remove_partial_outputs
from ddpm.sample import preview

CHECKPOINT_KEYS = {"model", "ema", "ema_updates", "optimizer", "step", "config", "rng", "record"}


class Interrupted(Exception):
    """Training stopped on SIGINT or SIGTERM after writing a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(
            f"{signal.Signals(signum).name} at step {step}; saved {checkpoint}; run the same command to resume"
        )
        self.signum = signum


@dataclass
class TrainResult:
    checkpoint: Path
    losses: list[tuple[int, float]]  # (step, mean finite loss over the steps since the previous entry)
    images_per_second: float  # over the steps this call ran
    seconds: float
    nonfinite: int  # steps skipped for a non-finite loss, over the whole run
    resumed_from: int  # the step of the checkpoint this call started from (0: a fresh start)
    total_seconds: float  # training time over every call of the run, resumes included
    steps: int
    batch_size: int

    def metrics(self) -> dict[str, float | int]:
        """What train.json holds and MLflow gets: the same numbers in both."""
        return {
            "final_loss": self.losses[-1][1],
            "steps": self.steps,
            "train_seconds": round(self.total_seconds, 1),
            "images_per_second": round(self.steps * self.batch_size / self.total_seconds, 1),  # over the whole run
            "nonfinite_steps": self.nonfinite,
        }


@dataclass
class Record:
    """What the loop accumulates between checkpoints, saved with them."""

    losses: list[tuple[int, float]] = field(default_factory=list)
    loss_sum: float = 0.0  # finite losses since the last log entry
    loss_count: int = 0
    nonfinite: int = 0
    nonfinite_in_a_row: int = 0
    seconds: float = 0.0  # training time before the current call, resumes included


class EMA:
    """Exponential moving average of a model's parameters, theta_ema ← d·theta_ema + (1 − d)·theta.

    With `warmup`, d = min(decay, (1 + n)/(10 + n)) after n updates, so the average forgets the
    random initialisation early instead of dragging it along for ~1/(1 − decay) steps."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup, self.updates = decay, warmup, 0

    def current_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_params = list(self.model.parameters())
        torch._foreach_mul_(ema_params, d)
        torch._foreach_add_(ema_params, list(model.parameters()), alpha=1 - d)
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)
        self.updates += 1


class Tracker(Protocol):
    """Where the loop reports besides its files: an MLflow run when the CLI trains (ddpm.tracking)."""

    def start(self, run_id: str | None) -> str:
        """Open the run `run_id` (the resumed checkpoint's), or a new one if None; return its id."""

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_images(self, step: int, grid: np.ndarray) -> None:
        """A uint8 (H, W, 3) picture of samples at `step`."""


def train(
    config: Config,
    data_path: Path,
    out_dir: Path,
    device: torch.device,
    resume: bool = True,
    progress: bool = True,
    tracker: Tracker | None = None,
    restart_if_changed: bool = False,
) -> TrainResult:
    """Train the model `config` describes on the images at `data_path`. Checkpoints go to
    `out_dir`/checkpoints, the final weights (raw and EMA) to `out_dir`/model.pt. With
    `restart_if_changed` (the pipeline's way), checkpoints made with other settings or other data
    are set aside and training starts over, instead of resuming or refusing."""
    cfg = config.train
    images = load_images(data_path)
    if images.shape[2:] != (config.data.image_size,) * 2:
        raise UserError(
            f"{data_path}: images are {images.shape[3]}×{images.shape[2]}, but data.image_size is "
            f"{config.data.image_size}; prepare the data at that size or set --image-size {images.shape[2]}"
        )
    data_sha256 = file_digest(data_path, "sha256:")
    checkpoints = out_dir / "checkpoints"
    latest = step_checkpoints(checkpoints)[-1:] if resume else []
    saved = read_checkpoint(latest[0], device, CHECKPOINT_KEYS) if latest else None
    if saved and restart_if_changed:
        changed = _changes(saved, config, data_sha256)
        if changed:
            tqdm.write(
                f"ddpm: {latest[0]} was made with other settings ({', '.join(changed)}); starting over", file=sys.stderr
            )
            saved = None
    if saved:
        _check_resumable(latest[0], saved, config)
    run_id = tracker.start(saved.get("run_id") if saved else None) if tracker else None
    dataset = InMemoryImages(images, device)

    # model, EMA, diffusion process, optimizer: fresh from the seed, then overwritten by a checkpoint
    torch.manual_seed(cfg.seed)
    model = build_model(config).to(device).train()
    ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
    diffusion = build_diffusion(config).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, weight_decay=cfg.weight_decay
    )
    record, start_step = Record(), 0
    if saved:
        model.load_state_dict(saved["model"])
        ema.model.load_state_dict(saved["ema"])
        ema.updates = saved["ema_updates"]
        optimizer.load_state_dict(saved["optimizer"])
        for group in optimizer.param_groups:  # the settings in force are today's, the moments are saved
            group.update(betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
        _set_rng_state(saved["rng"])
        record, start_step = Record(**saved["record"]), saved["step"]
    else:  # a fresh start: earlier checkpoints here belong to another run
        for old in step_checkpoints(checkpoints):
            old.unlink()
    remove_partial_outputs(checkpoints)
    remove_partial_outputs(out_dir)

    def save(step: int) -> Path:
        path = checkpoint_path(checkpoints, step)
        save_checkpoint(path, {
            "model": model.state_dict(), "ema": ema.model.state_dict(), "ema_updates": ema.updates,
            "optimizer": optimizer.state_dict(), "step": step, "config": config.model_dump(mode="json"),
            "rng": _rng_state(), "record": vars(record), "data_sha256": data_sha256, "run_id": run_id,
        })  # fmt: skip
        for old in step_checkpoints(checkpoints)[: -cfg.keep_checkpoints]:
            old.unlink()
        return path

    loss_sum = torch.tensor(record.loss_sum, device=device)  # on the device between log entries
    start = last_log = time.perf_counter()
    seconds_before = record.seconds
    last_log_step = start_step
    bar = tqdm(total=cfg.steps, initial=start_step, desc=f"train {config.diffusion.schedule}", disable=not progress)
    with _stop_requests() as stop:
        for step in range(start_step + 1, cfg.steps + 1):
            # learning rate: linear warm-up from 0 (Ho et al., appendix B)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr

            # one step of Algorithm 1, skipped if the loss is not finite
            loss = diffusion.training_loss(model, dataset.batch(cfg.batch_size))
            if torch.isfinite(loss):
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                ema.update(model)
                loss_sum += loss.detach()
                record.loss_count += 1
                record.nonfinite_in_a_row = 0
            else:
                record.nonfinite += 1
                record.nonfinite_in_a_row += 1
                if record.nonfinite_in_a_row >= cfg.max_nonfinite:
                    good = step_checkpoints(checkpoints)
                    raise UserError(
                        f"the loss was not finite for {cfg.max_nonfinite} steps in a row "
                        f"(steps {step - cfg.max_nonfinite + 1}-{step}); stopped. Last good checkpoint: "
                        f"{good[-1] if good else 'none'}. Try a lower train.lr or train.grad_clip"
                    )

            # log, checkpoint, stop on a signal
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                mean_loss = loss_sum.item() / max(record.loss_count, 1)  # the read-back
                images_per_second = (step - last_log_step) * cfg.batch_size / (now - last_log)
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{images_per_second:.0f}")
                record.losses.append((step, mean_loss))
                if tracker:
                    lr = optimizer.param_groups[0]["lr"]
                    tracker.log(
                        step, {"train/loss": mean_loss, "train/lr": lr, "train/images_per_second": images_per_second}
                    )
                loss_sum.zero_()
                record.loss_count, last_log, last_log_step = 0, now, step
            if tracker and (step % cfg.sample_every == 0 or step == cfg.steps):
                tracker.log_images(step, preview(ema.model, diffusion, config.data.image_size, device, cfg.seed))
            stopping = bool(stop)  # read once: a signal may land at any line
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopping:
                record.loss_sum = loss_sum.item()
                record.seconds = seconds_before + time.perf_counter() - start
                path = save(step)
            bar.update(1)
            if stopping:
                bar.close()
                raise Interrupted(stop[0], step, path)
    bar.close()
    seconds = time.perf_counter() - start

    final = out_dir / "model.pt"
    save_checkpoint(final, {
        "model": model.state_dict(), "ema": ema.model.state_dict(), "config": config.model_dump(mode="json"),
        "step": cfg.steps,
    })  # fmt: skip
    ran = cfg.steps - start_step
    result = TrainResult(
        final, record.losses, ran * cfg.batch_size / seconds, seconds, record.nonfinite, start_step,
        seconds_before + seconds, cfg.steps, cfg.batch_size,
    )  # fmt: skip
    write_record(out_dir, result)
    return result


def write_record(out_dir: Path, result: TrainResult) -> None:
    """train.json (the run's numbers) and losses.csv (the loss curve, x = step) for DVC and the comparison."""
    with atomic_output(out_dir / "train.json") as tmp:
        tmp.write_text(json.dumps(result.metrics(), indent=2) + "\n")
    with atomic_output(out_dir / "losses.csv") as tmp:
        tmp.write_text("step,loss\n" + "".join(f"{step},{loss:.6f}\n" for step, loss in result.losses))


def _check_resumable(path: Path, saved: dict[str, Any], config: Config) -> None:
    """Refuse to resume a checkpoint into another model or diffusion process, or past its end."""
    try:
        before = _identity(Config.model_validate(saved["config"]))
    except ValueError as e:
        raise UserError(f"{path}: its config does not fit this version of ddpm ({str(e).splitlines()[0]})") from None
    now = _identity(config)
    changed = [f"{key} ({before[key]} → {now[key]})" for key in now if before[key] != now[key]]
    if changed:
        raise UserError(
            f"{path}: cannot resume, the model or diffusion process differs from the checkpoint's in "
            f"{', '.join(changed)}; use --no-resume to start over, or --out for another folder"
        )
    if saved["step"] > config.train.steps:
        raise UserError(f"{path}: the checkpoint is at step {saved['step']}, past train.steps = {config.train.steps}")


# Keys that change how a run is watched or stored, not the weights it ends with.
BOOKKEEPING = {"steps", "log_every", "checkpoint_every", "keep_checkpoints", "max_nonfinite", "sample_every"}


def _changes(saved: dict[str, Any], config: Config, data_sha256: str) -> list[str]:
    """What differs between a checkpoint's run and the run `config` asks for, in a few words each:
    the data, any model, diffusion or train setting but the bookkeeping ones, or fewer steps."""
    try:
        before = Config.model_validate(saved["config"])
    except ValueError:
        return ["a config this version of ddpm cannot read"]
    changed = [] if saved.get("data_sha256") == data_sha256 else ["the prepared images"]
    old, new = _identity(before), _identity(config)
    changed += [f"{k} ({old[k]} → {new[k]})" for k in new if old[k] != new[k]]
    old_train, new_train = before.train.model_dump(), config.train.model_dump()
    changed += [
        f"train.{k} ({old_train[k]} → {new_train[k]})"
        for k in new_train
        if k not in BOOKKEEPING and old_train[k] != new_train[k]
    ]
    if saved["step"] > config.train.steps:
        changed.append(f"train.steps ({saved['step']} done, {config.train.steps} asked for)")
    return changed


def _identity(config: Config) -> dict[str, Any]:
    """The settings a checkpoint's weights belong to: the UNet's shape and the diffusion process."""
    arch = config.model.architecture(config.data.image_size)
    shape = {f"model.{k}": list(v) if isinstance(v, tuple) else v for k, v in arch.items() if k != "dropout"}
    return {"data.image_size": config.data.image_size, **shape, **{f"diffusion.{k}": v for k, v in config.diffusion}}


def _rng_state() -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if state["cuda"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@contextmanager
def _stop_requests() -> Iterator[list[int]]:
    """Inside the block, SIGINT and SIGTERM are appended to the yielded list instead of stopping
    the process, so the loop can finish its step and save. (Only the main thread gets signals.)"""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {
        s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
