"""The training loop: Algorithm 1 of Ho et al. 2020, read top to bottom.

    ddpm train --beta-schedule cosine --model tiny --image-size 32 --steps 500

AdamW with a linear learning-rate warm-up and gradient clipping, and an EMA of the weights for
sampling. Every `train.checkpoint_every` steps a checkpoint saves everything needed to go on bit
for bit: weights, EMA, optimizer, RNG states and the loss record. `train` resumes from the latest
one unless told not to. A step whose loss is not finite is skipped and counted, and
`train.max_nonfinite` of them in a row stop the run. SIGINT and SIGTERM write a checkpoint and stop.

Nothing inside a step waits for the device: the loss and the counts are summed there and read back
at log entries and checkpoints, and a non-finite step is skipped by the fused AdamW kernel itself.
The fast path (bf16 autocast, channels_last, torch.compile) is chosen by params, on for a GPU.
Under torchrun the same loop runs on every rank with DistributedDataParallel, each rank on its
share of every global batch; rank 0 alone writes, logs and keeps the EMA.
"""

import copy
import os
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
import torch.distributed as dist
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
from ddpm.config import Config, TrainConfig
from ddpm.data import InMemoryImages, file_digest, load_images
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import UserError
from ddpm.files import atomic_output, remove_partial_outputs, write_json
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


class Tracker(Protocol):
    """Where the loop reports besides its files: an MLflow run when the CLI trains (ddpm.tracking)."""

    def start(self, run_id: str | None) -> str:
        """Open the run `run_id` (the resumed checkpoint's), or a new one if None; return its id."""

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_images(self, step: int, grid: np.ndarray) -> None:
        """A uint8 (H, W, 3) picture of samples at `step`."""


@dataclass(frozen=True)
class FastPath:
    """How a training step runs: the params' "auto" resolved for the device (on for a GPU, off for
    the CPU, where bf16 and NHWC do not pay)."""

    bf16: bool  # autocast the UNet to bfloat16; the loss and the weights stay float32
    channels_last: bool  # NHWC memory format, what cuDNN's fastest convolutions want
    compile: bool  # torch.compile the UNet (and its backward)

    @classmethod
    def resolve(cls, cfg: TrainConfig, device: torch.device) -> "FastPath":
        gpu = device.type == "cuda"

        def pick(value: str | bool) -> bool:
            return gpu if value == "auto" else bool(value)

        bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and gpu)
        return cls(bf16, pick(cfg.channels_last), pick(cfg.compile))

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def memory_format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the fused kernel (CPU and CUDA): one launch for all weights, and a step it is told
    to skip (`found_inf`) is skipped on the device, without reading anything back."""
    return torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
        fused=True,
    )  # fmt: skip


def draw_batch(
    dataset: InMemoryImages, num_timesteps: int, batch_size: int, rank: int = 0, world: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 1's draws for one global batch: images x_0, timesteps t ~ U{0..T−1} and noise ε.
    Every rank draws the whole batch from the same random stream and keeps its own share, so N
    processes see exactly the batches that one process would."""
    x0 = dataset.batch(batch_size)
    t = torch.randint(0, num_timesteps, (batch_size,), device=x0.device)
    noise = torch.randn_like(x0)
    share = slice(rank * batch_size // world, (rank + 1) * batch_size // world)
    return x0[share], t[share], noise[share]


def training_step(
    forward: nn.Module,
    diffusion: GaussianDiffusion,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    grad_clip: float,
    fast: FastPath,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Algorithm 1, with no host sync: returns the loss and `skipped` (1.0 where the
    loss was not finite on any rank, in which case nothing changed), both on the device."""
    x0, t, noise = batch
    with fast.autocast(x0.device):
        loss = diffusion.training_loss(forward, fast.memory_format(x0), t, fast.memory_format(noise))
    skipped = (~torch.isfinite(loss.detach())).float()
    if dist.is_initialized():
        dist.all_reduce(skipped, op=dist.ReduceOp.MAX)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(forward.parameters(), grad_clip)
    optimizer.found_inf = skipped  # read by the fused kernel
    optimizer.step()
    return loss.detach(), skipped


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job (rank 0 of 1 when there is none)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def join_process_group(device: torch.device) -> tuple[Ranks, torch.device]:
    """Under torchrun (WORLD_SIZE > 1), join the process group (NCCL on GPUs, gloo on CPUs) and
    return this rank and its device (cuda:LOCAL_RANK for CUDA); otherwise a single rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size()), device


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
    are set aside and training starts over, instead of resuming or refusing. Under torchrun each
    rank trains on its share of every batch; only rank 0 writes, logs and reports to `tracker`."""
    cfg = config.train
    ranks, device = join_process_group(device)
    if cfg.batch_size % ranks.world:
        raise UserError(f"train.batch_size: expected a multiple of the {ranks.world} processes, got {cfg.batch_size}")
    tracker = tracker if ranks.main else None
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
            if ranks.main:
                tqdm.write(f"ddpm: {latest[0]} was made with other settings ({', '.join(changed)}); starting over",
                           file=sys.stderr)  # fmt: skip
            saved = None
    if saved:
        _check_resumable(latest[0], saved, config)
    run_id = tracker.start(saved.get("run_id") if saved else None) if tracker else None
    dataset = InMemoryImages(images, device)

    # model, EMA, diffusion process, optimizer: fresh from the seed, then overwritten by a checkpoint
    torch.manual_seed(cfg.seed)
    fast = FastPath.resolve(cfg, device)
    model = build_model(config).to(device).train()
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
    diffusion = build_diffusion(config).to(device)
    optimizer = make_optimizer(model, cfg)
    record, start_step = Record(), 0
    if saved:
        model.load_state_dict(saved["model"])
        ema.model.load_state_dict(saved["ema"])
        ema.updates.fill_(saved["ema_updates"])
        optimizer.load_state_dict(saved["optimizer"])
        for group in optimizer.param_groups:  # the settings in force are today's, the moments are saved
            group.update(betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, weight_decay=cfg.weight_decay, fused=True,
                         foreach=None)  # fmt: skip
        _set_rng_state(saved["rng"])
        record, start_step = Record(**saved["record"]), saved["step"]
    elif ranks.main:  # a fresh start: earlier checkpoints here belong to another run
        for old in step_checkpoints(checkpoints):
            old.unlink()
    if ranks.main:
        remove_partial_outputs(checkpoints)
        remove_partial_outputs(out_dir)
    forward: nn.Module = model
    if ranks.world > 1:
        devices = [device.index] if device.type == "cuda" else None
        forward = nn.parallel.DistributedDataParallel(model, device_ids=devices)
    if fast.compile:
        forward = torch.compile(forward)

    def save(step: int) -> Path:
        path = checkpoint_path(checkpoints, step)
        if ranks.main:
            save_checkpoint(path, {
                "model": model.state_dict(), "ema": ema.model.state_dict(), "ema_updates": int(ema.updates),
                "optimizer": optimizer.state_dict(), "step": step, "config": config.model_dump(mode="json"),
                "rng": _rng_state(device), "record": vars(record), "data_sha256": data_sha256, "run_id": run_id,
            })  # fmt: skip
            for old in step_checkpoints(checkpoints)[: -cfg.keep_checkpoints]:
                old.unlink()
        return path

    # on the device between read-backs: the sum of finite losses (the rank's share) since the last
    # log entry, their count, non-finite steps in all, and in a row
    tally = torch.tensor(
        [record.loss_sum * ranks.world if ranks.main else 0.0, record.loss_count, record.nonfinite,
         record.nonfinite_in_a_row], dtype=torch.float64, device=device,
    )  # fmt: skip
    start = last_log = time.perf_counter()
    seconds_before = record.seconds
    last_log_step = start_step
    bar = tqdm(total=cfg.steps, initial=start_step, desc=f"train {config.diffusion.schedule}",
               disable=not (progress and ranks.main))  # fmt: skip
    with _stop_requests() as stop:
        for step in range(start_step + 1, cfg.steps + 1):
            # learning rate: linear warm-up from 0 (Ho et al., appendix B)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr

            # one step of Algorithm 1; a non-finite loss skips it, on the device
            batch = draw_batch(dataset, diffusion.num_timesteps, cfg.batch_size, ranks.rank, ranks.world)
            loss, skipped = training_step(forward, diffusion, optimizer, batch, cfg.grad_clip, fast)
            if ranks.main:
                ema.update(model, skipped)
            tally[0] += torch.where(skipped > 0, 0.0, loss.double())
            tally[1] += 1 - skipped
            tally[2] += skipped
            tally[3] = (tally[3] + 1) * skipped
            if tracker and (step % cfg.sample_every == 0 or step == cfg.steps):  # only rank 0 has a tracker
                tracker.log_images(step, preview(ema.model, diffusion, config.data.image_size, device, cfg.seed))

            # read back (log, checkpoint, stop on a signal), only every so often
            at_log = step % cfg.log_every == 0 or step == cfg.steps
            at_checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.steps
            stopping = _stopping(stop, ranks, at_log or at_checkpoint)
            if not (at_log or at_checkpoint or stopping):
                bar.update(1)
                continue
            totals = tally.clone()
            if ranks.world > 1:
                dist.all_reduce(totals)  # the loss sums of every share; the counts are the same on all ranks
                totals[1:] /= ranks.world
            loss_sum, loss_count, nonfinite, in_a_row = totals.tolist()
            loss_sum /= ranks.world  # a sum of per-rank means, over ranks: the global batch's means
            record.loss_count, record.nonfinite = int(loss_count), int(nonfinite)
            record.nonfinite_in_a_row = int(in_a_row)
            if record.nonfinite_in_a_row >= cfg.max_nonfinite:
                good = step_checkpoints(checkpoints)
                raise UserError(
                    f"the loss was not finite for {record.nonfinite_in_a_row} steps in a row "
                    f"(steps {step - record.nonfinite_in_a_row + 1}-{step}); stopped. Last good checkpoint: "
                    f"{good[-1] if good else 'none'}. Try a lower train.lr or train.grad_clip"
                )
            if at_log:
                now = time.perf_counter()
                mean_loss = loss_sum / max(record.loss_count, 1)
                images_per_second = (step - last_log_step) * cfg.batch_size / (now - last_log)
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{images_per_second:.0f}")
                record.losses.append((step, mean_loss))
                if tracker:
                    lr = optimizer.param_groups[0]["lr"]
                    tracker.log(
                        step, {"train/loss": mean_loss, "train/lr": lr, "train/images_per_second": images_per_second}
                    )
                tally[:2] = 0
                loss_sum, record.loss_count, last_log, last_log_step = 0.0, 0, now, step
            if at_checkpoint or stopping:
                record.loss_sum = loss_sum
                record.seconds = seconds_before + time.perf_counter() - start
                path = save(step)
            bar.update(1)
            if stopping:
                bar.close()
                raise Interrupted(stop[0] if stop else signal.SIGTERM, step, path)
    bar.close()
    seconds = time.perf_counter() - start

    final = out_dir / "model.pt"
    ran = cfg.steps - start_step
    result = TrainResult(
        final, record.losses, ran * cfg.batch_size / seconds, seconds, record.nonfinite, start_step,
        seconds_before + seconds, cfg.steps, cfg.batch_size,
    )  # fmt: skip
    if ranks.main:
        save_checkpoint(final, {
            "model": model.state_dict(), "ema": ema.model.state_dict(), "config": config.model_dump(mode="json"),
            "step": cfg.steps,
        })  # fmt: skip
        write_record(out_dir, result)
    if ranks.world > 1:
        dist.barrier()
    return result


def _stopping(stop: list[int], ranks: Ranks, read_back: bool) -> bool:
    """Whether to stop now for a signal. One process checks every step (no device involved); under
    torchrun the ranks agree at read-back points, so that they all stop at the same step."""
    if ranks.world == 1:
        return bool(stop)
    if not read_back:
        return False
    flag = torch.tensor([len(stop)], dtype=torch.float64, device=_device_of_group())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _device_of_group() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def write_record(out_dir: Path, result: TrainResult) -> None:
    """train.json (the run's numbers) and losses.csv (the loss curve, x = step) for DVC and the comparison."""
    write_json(out_dir / "train.json", result.metrics())
    with atomic_output(out_dir / "losses.csv") as tmp:
        tmp.write_text("step,loss\n" + "".join(f"{step},{loss:.6f}\n" for step, loss in result.losses))


def _check_resumable(path: Path, saved: dict[str, Any], config: Config) -> None:
    """Refuse to resume a checkpoint into another model or diffusion process, or past its end."""
    try:
        before = _identity(Config.model_validate(saved["config"]))
    except ValueError as e:
        raise UserError(f"{path}: its config does not fit this version of ddpm ({str(e).splitlines()[0]})") from None
    changed = _differences(before, _identity(config))
    if changed:
        raise UserError(
            f"{path}: cannot resume, the model or diffusion process differs from the checkpoint's in "
            f"{', '.join(changed)}; use --no-resume to start over, or --out for another folder"
        )
    if saved["step"] > config.train.steps:
        raise UserError(f"{path}: the checkpoint is at step {saved['step']}, past train.steps = {config.train.steps}")


# Keys that change how a run is watched or stored, not the weights it ends with.
BOOKKEEPING = {"steps", "log_every", "checkpoint_every", "keep_checkpoints", "max_nonfinite", "sample_every"}
BOOKKEEPING |= {"channels_last", "compile"}  # how the same arithmetic is laid out and scheduled


def _changes(saved: dict[str, Any], config: Config, data_sha256: str) -> list[str]:
    """What differs between a checkpoint's run and the run `config` asks for, in a few words each:
    the data, any model, diffusion or train setting but the bookkeeping ones, or fewer steps."""
    try:
        before = Config.model_validate(saved["config"])
    except ValueError:
        return ["a config this version of ddpm cannot read"]
    changed = [] if saved.get("data_sha256") == data_sha256 else ["the prepared images"]
    changed += _differences(_identity(before), _identity(config))
    changed += _differences(_training(before), _training(config))
    if saved["step"] > config.train.steps:
        changed.append(f"train.steps ({saved['step']} done, {config.train.steps} asked for)")
    return changed


def _differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """ "key (old → new)" for each key whose value changed."""
    return [f"{key} ({before[key]} → {now[key]})" for key in now if before[key] != now[key]]


def _training(config: Config) -> dict[str, Any]:
    """The train settings the weights depend on: all but the BOOKKEEPING ones."""
    return {f"train.{k}": v for k, v in config.train.model_dump().items() if k not in BOOKKEEPING}


def _identity(config: Config) -> dict[str, Any]:
    """The settings a checkpoint's weights belong to: the UNet's shape and the diffusion process."""
    arch = config.model.architecture(config.data.image_size)
    shape = {f"model.{k}": list(v) if isinstance(v, tuple) else v for k, v in arch.items() if k != "dropout"}
    return {"data.image_size": config.data.image_size, **shape, **{f"diffusion.{k}": v for k, v in config.diffusion}}


def _rng_state(device: torch.device) -> dict[str, Any]:
    """The CPU's generator and the training device's: under torchrun every rank's are the same."""
    cuda = [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0].cpu())


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
