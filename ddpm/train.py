"""The training loop: Algorithm 1 of Ho et al. 2020, read top to bottom.

    ddpm train --beta-schedule cosine --model tiny --image-size 32 --steps 500
    ddpm train --nproc 4            # DistributedDataParallel; or: torchrun --nproc_per_node=4 -m ddpm train

AdamW with a linear learning-rate warm-up and gradient clipping, and an EMA of the weights for
sampling. Every `train.checkpoint_every` steps a checkpoint saves the whole TrainState (weights,
EMA, optimizer, the loop's generator and the RNG states, the loss record), and `train` resumes from
the newest one, so a run stopped at any moment ends bit for bit where an uninterrupted one would.

Nothing inside a step waits for the device: a step whose loss is not finite is skipped by the
fused AdamW kernel itself, and the loss statistics are summed on the device and read back at log
entries and checkpoints only. Under torchrun every rank runs this loop on its share of each global
batch; rank 0 alone keeps the EMA, writes files and reports to the tracker.
"""

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ddpm.checkpoint import save_checkpoint
from ddpm.config import Config, TrainConfig
from ddpm.data import InMemoryImages, training_images
from ddpm.diffusion import MIN_SNR_GAMMA, GaussianDiffusion, LossWeighting
from ddpm.distributed import ONE_PROCESS, Ranks, agree_to_stop, join_process_group, stop_requests
from ddpm.errors import Interrupted, UserError
from ddpm.fastpath import FastPath
from ddpm.files import folder_lock, remove_partial_outputs, write_bytes, write_json
from ddpm.layout import FEATURE_CACHE, RunFolder, checkpoint_path, step_checkpoints
from ddpm.quality import QualityProbe
from ddpm.sample import preview
from ddpm.state import Record, TrainState, Window, starting_point


@dataclass
class TrainResult:
    checkpoint: Path  # model.pt
    losses: list[tuple[int, float]]  # (step, mean finite loss over the steps since the previous entry)
    images_per_second: float  # over the steps this call ran
    seconds: float  # this call's
    total_seconds: float  # training time over every call of the run, resumes included
    resumed_from: int  # the step of the checkpoint this call started from (0: a fresh start)
    nonfinite: int  # steps skipped for a non-finite loss, over the whole run
    steps: int
    batch_size: int

    @classmethod
    def of(cls, path: Path, record: Record, clock: "Clock", cfg: TrainConfig) -> "TrainResult":
        seconds = clock.seconds()
        speed = (cfg.steps - clock.start_step) * cfg.batch_size / max(seconds, 1e-9)
        return cls(path, record.losses, speed, seconds, clock.total(), clock.start_step, record.nonfinite, cfg.steps,
                   cfg.batch_size)  # fmt: skip

    def summary(self) -> str:
        """What `ddpm train` prints."""
        resumed = f" (resumed at step {self.resumed_from})" if self.resumed_from else ""
        skipped = f", {self.nonfinite} non-finite steps skipped" if self.nonfinite else ""
        loss = f"final loss {self.losses[-1][1]:.4f}" if self.losses else "no finite loss"
        return (f"trained {self.steps} steps{resumed} in {self.seconds:.0f} s ({self.images_per_second:.0f} img/s)"
                f"{skipped}, {loss}: {self.checkpoint}")  # fmt: skip

    def metrics(self) -> dict[str, float | int | None]:
        """What train.json holds and MLflow gets: the same numbers in both."""
        return {
            "final_loss": self.losses[-1][1] if self.losses else None,
            "steps": self.steps,
            "train_seconds": round(self.total_seconds, 1),
            "images_per_second": round(self.steps * self.batch_size / self.total_seconds, 1),  # over the whole run
            "nonfinite_steps": self.nonfinite,
        }


class LossTally:
    """The loss statistics between read-backs, summed on the device so that no step waits for it."""

    def __init__(self, record: Record, device: torch.device, ranks: Ranks) -> None:
        def scalar(value: float) -> torch.Tensor:
            return torch.tensor(value, dtype=torch.float64, device=device)

        # under torchrun each rank sums the mean loss of its share; the record holds the global sum
        self.loss_sum = scalar(record.window_loss_sum * ranks.world if ranks.main else 0.0)
        self.finite, self.nonfinite = scalar(record.window_count), scalar(record.nonfinite)
        self.in_a_row = scalar(record.nonfinite_in_a_row)
        self.ranks = ranks

    def add(self, loss: torch.Tensor, skipped: torch.Tensor) -> None:
        self.loss_sum += torch.where(skipped > 0, 0.0, loss.double())
        self.finite += 1 - skipped
        self.nonfinite += skipped
        self.in_a_row.copy_((self.in_a_row + 1) * skipped)

    def read(self) -> Window:
        """The statistics on the host: the one sync of a read-back (an all-reduce under torchrun)."""
        values = torch.stack([self.loss_sum, self.finite, self.nonfinite, self.in_a_row])
        if self.ranks.world > 1:
            dist.all_reduce(values)  # the shares' loss sums; the counts are the same on every rank
            values /= self.ranks.world
        loss_sum, finite, nonfinite, in_a_row = values.tolist()
        return Window(loss_sum, round(finite), round(nonfinite), round(in_a_row))

    def new_window(self) -> None:
        self.loss_sum.zero_()
        self.finite.zero_()


class Tracker(Protocol):
    """Where the loop reports besides its files: an MLflow run when the CLI trains (ddpm.tracking)."""

    def start(self, run_id: str | None) -> str:
        """Open the run `run_id` (the resumed checkpoint's), or a new one if None; return its id."""

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_images(self, step: int, grid: np.ndarray) -> None:
        """A uint8 (H, W, 3) picture of samples at `step`."""

    def finish(self, result: TrainResult, files: list[Path]) -> None:
        """The run's numbers and files, once the final weights are written."""


def draw_batch(
    dataset: InMemoryImages, num_timesteps: int, batch_size: int, generator: torch.Generator,
    ranks: Ranks = ONE_PROCESS, hflip: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Algorithm 1's draws for one global batch, from the loop's generator: images x_0 (`hflip`: flipped
    left-right with probability ½), t ~ U{0..T−1} and noise ε. Every rank draws the whole batch from the
    same stream and keeps its own share, so N processes see exactly the batches one process would."""
    x0 = dataset.batch(batch_size, generator, hflip)
    t = torch.randint(0, num_timesteps, (batch_size,), device=x0.device, generator=generator)
    noise = torch.randn(x0.shape, device=x0.device, generator=generator)
    share = slice(ranks.rank * batch_size // ranks.world, (ranks.rank + 1) * batch_size // ranks.world)
    return x0[share], t[share], noise[share]


def training_step(
    forward: nn.Module, diffusion: GaussianDiffusion, optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], grad_clip: float, fast: FastPath,
    weighting: LossWeighting = "none", min_snr_gamma: float = MIN_SNR_GAMMA,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One step of Algorithm 1, the loss weighted as `weighting` says, with no host sync: returns the loss
    and `skipped` (1.0 where the loss was not finite on any rank, in which case nothing changed), both
    on the device."""
    x0, t, noise = batch
    with fast.autocast(x0.device):
        x0, noise = fast.memory_format(x0), fast.memory_format(noise)
        loss = diffusion.training_loss(forward, x0, t, noise, weighting, min_snr_gamma)
    skipped = (~torch.isfinite(loss.detach())).float()
    if dist.is_initialized():
        dist.all_reduce(skipped, op=dist.ReduceOp.MAX)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(forward.parameters(), grad_clip)
    optimizer.found_inf = skipped  # read by the fused kernel
    optimizer.step()
    return loss.detach(), skipped


def train(
    config: Config,
    data_path: Path,
    out_dir: Path,
    device: torch.device,
    resume: bool = True,
    progress: bool = True,
    tracker: Tracker | None = None,
    restart_if_changed: bool = False,
    feature_cache: Path = FEATURE_CACHE,
) -> TrainResult:
    """Train the model `config` describes on the images at `data_path`. Checkpoints go to
    `out_dir`/checkpoints, the final weights (raw and EMA) to `out_dir`/model.pt, the run's numbers
    to train.json, losses.csv and quality.csv (ddpm.quality, with the real features cached in
    `feature_cache`). `ddpm.state.starting_point` says when a run resumes."""
    cfg = config.train
    ranks, device = join_process_group(device)
    if cfg.batch_size % ranks.world:
        raise UserError(f"train.batch_size: expected a multiple of the {ranks.world} processes, got {cfg.batch_size}")
    images, data_sha256 = training_images(data_path, config.data.image_size)
    folder = RunFolder(out_dir)
    say = (lambda line: tqdm.write(f"ddpm: note: {line}", file=sys.stderr)) if ranks.main else (lambda line: None)
    saved, newest = starting_point(folder.checkpoints, config, data_sha256, resume, restart_if_changed, device, say)
    state = TrainState.create(config, device, data_sha256, saved, newest)  # a bad checkpoint fails here, before MLflow
    quality = (
        QualityProbe(config, data_path, data_sha256, feature_cache, device, folder.quality) if ranks.main else None
    )
    tracker = tracker if ranks.main else None
    state.run_id = tracker.start(saved.run_id if saved else None) if tracker else None
    if ranks.main:
        _clear_outputs(out_dir, fresh=saved is None)
        quality.write(state.record)  # the points up to the resumed step, none past it
    loop = Loop(config, device, ranks, state, InMemoryImages(images, device), tracker, folder.checkpoints, newest,
                quality)  # fmt: skip
    bar = tqdm(total=cfg.steps, initial=state.step, desc=f"train {config.run_name}",
               disable=not (progress and ranks.main))  # fmt: skip

    with bar, stop_requests() as stop:  # the bar closes (and ends its line) however the loop ends
        loop.run(bar, stop)
        result = TrainResult.of(folder.model, state.record, loop.clock, cfg)
        if ranks.main:
            _finish(state, config, device, result, tracker)
        if stop:  # a signal during the final save or upload: all is saved, but say so as during training
            raise Interrupted(stop[0], cfg.steps, loop.newest)
    if ranks.world > 1:
        dist.barrier()
    return result


class Loop:
    """The steps of one call of `train`, and every so often a read-back between them: a log entry, a
    checkpoint, a stop on a signal. Nothing else waits for the device."""

    def __init__(
        self, config: Config, device: torch.device, ranks: Ranks, state: TrainState, dataset: InMemoryImages,
        tracker: Tracker | None, checkpoints: Path, newest: Path | None, quality: QualityProbe | None,
    ) -> None:  # fmt: skip
        self.config, self.cfg, self.device, self.ranks = config, config.train, device, ranks
        self.state, self.dataset, self.tracker, self.checkpoints = state, dataset, tracker, checkpoints
        self.newest = newest  # the last good checkpoint: the one resumed from, then each one written
        self.quality = quality  # rank 0's
        self.fast = FastPath.resolve(self.cfg, device)
        self.forward = _forward(state.model, self.fast, ranks, device)
        self.tally = LossTally(state.record, device, ranks)
        self.clock = Clock(state.step, state.record.seconds)

    def run(self, bar: tqdm, stop: list[int]) -> None:
        """From the state's step to train.steps; on a signal, Interrupted once the step is saved."""
        cfg = self.cfg
        for step in range(self.state.step + 1, cfg.steps + 1):
            self.step(step)
            bar.update(1)
            if self.tracker and (step % cfg.sample_every == 0 or step == cfg.steps):
                grid = preview(self.state.ema.model, self.state.diffusion, self.config.data.image_size, self.device,
                               cfg.seed, self.config.sample.clip_mode)  # fmt: skip
                self.tracker.log_images(step, grid)
            if self.quality and self.quality.due(step):  # FID_N and KID of EMA samples, to quality.csv
                scores = self.quality.measure(step, self.state.ema.model, self.state.diffusion, self.state.record)
                if self.tracker:
                    self.tracker.log(step, {f"quality/{name}": value for name, value in scores.items()})

            # read back (log, checkpoint, stop on a signal), only every so often
            at_log = step % cfg.log_every == 0 or step == cfg.steps
            at_checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.steps
            stopping = agree_to_stop(stop, self.ranks, at_log or at_checkpoint)
            if at_log or at_checkpoint or stopping:
                self.read_back(step, at_log, at_checkpoint or stopping, bar)
            if stopping:
                raise Interrupted(stop[0], step, self.newest)

    def step(self, step: int) -> None:
        """One step of Algorithm 1; a non-finite loss skips it, on the device."""
        state, cfg = self.state, self.cfg
        # learning rate: linear warm-up from 0 (Ho et al., appendix B)
        for group in state.optimizer.param_groups:
            group["lr"] = cfg.lr * min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
        batch = draw_batch(self.dataset, state.diffusion.num_timesteps, cfg.batch_size, state.generator, self.ranks,
                           cfg.hflip)  # fmt: skip
        loss, skipped = training_step(self.forward, state.diffusion, state.optimizer, batch, cfg.grad_clip, self.fast,
                                      cfg.loss_weighting, cfg.min_snr_gamma)  # fmt: skip
        if self.ranks.main:
            state.ema.update(state.model, skipped)
        self.tally.add(loss, skipped)
        state.step = step

    def read_back(self, step: int, at_log: bool, save: bool, bar: tqdm) -> None:
        """The loss statistics on the host (the one sync): a stop if the loss has not been finite for
        train.max_nonfinite steps, else a log entry (`at_log`) and a checkpoint (`save`)."""
        window = self.tally.read()
        self.state.record.update(window)
        if window.in_a_row >= self.cfg.max_nonfinite:
            raise _diverged(f"the loss was not finite for {window.in_a_row} steps in a row "
                            f"(steps {step - window.in_a_row + 1}-{step})", self.newest)  # fmt: skip
        if at_log:
            metrics = _log_entry(self.state, window, self.clock.images_per_second(step, self.cfg.batch_size), bar)
            if self.tracker:
                self.tracker.log(step, metrics)
            self.tally.new_window()
        if save:
            self.state.record.seconds = self.clock.total()
            self.newest = self.save_if_finite()

    def save_if_finite(self) -> Path:
        """Write a checkpoint of the state (rank 0), keeping the last `train.keep_checkpoints`, and return
        it; but stop, writing nothing, if a step with a finite loss has made the weights non-finite."""
        state = self.state
        if not state.finite():
            raise _diverged(f"the weights are not finite at step {state.step} (the loss was)", self.newest)
        path = checkpoint_path(self.checkpoints, state.step)
        if self.ranks.main:
            save_checkpoint(path, state.checkpoint(self.config, self.device))
            for old in step_checkpoints(self.checkpoints)[: -self.cfg.keep_checkpoints]:
                old.unlink()
        return path


class Clock:
    """Training time over the whole run (resumes included), and the speed between log entries."""

    def __init__(self, step: int, seconds_before: float) -> None:
        self.start_step, self.seconds_before = step, seconds_before
        self.start = time.perf_counter()
        self.last = (step, self.start)

    def images_per_second(self, step: int, batch_size: int) -> float:
        """Since the previous call (or the start)."""
        now = time.perf_counter()
        speed = (step - self.last[0]) * batch_size / max(now - self.last[1], 1e-9)
        self.last = (step, now)
        return speed

    def seconds(self) -> float:
        """In this call."""
        return time.perf_counter() - self.start

    def total(self) -> float:
        return self.seconds_before + self.seconds()


def _log_entry(state: TrainState, window: Window, speed: float, bar: tqdm) -> dict[str, float]:
    """One log entry: the window's mean finite loss to the record (none if every step in it was
    skipped: missing, not 0), and the metrics for the tracker."""
    metrics = {"train/lr": state.optimizer.param_groups[0]["lr"], "train/images_per_second": speed}
    if window.finite:
        mean_loss = window.loss_sum / window.finite
        state.record.losses.append((state.step, mean_loss))
        metrics["train/loss"] = mean_loss
        bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{speed:.0f}")
    state.record.window_loss_sum, state.record.window_count = 0.0, 0
    return metrics


def _finish(
    state: TrainState, config: Config, device: torch.device, result: "TrainResult", tracker: Tracker | None
) -> None:
    """The final weights (model.pt: the description, raw and EMA weights, no optimizer), train.json and
    losses.csv, and the tracker's copy of them."""
    save_checkpoint(result.checkpoint, state.checkpoint(config, device).final())
    folder = RunFolder(result.checkpoint.parent)
    write_json(folder.train_metrics, result.metrics())
    rows = "".join(f"{step},{loss:.6f}\n" for step, loss in result.losses)
    write_bytes(folder.losses, f"step,loss\n{rows}".encode())
    if tracker:
        tracker.finish(result, [result.checkpoint, folder.train_metrics, folder.losses, folder.quality])


def _diverged(what: str, good: Path | None) -> UserError:
    return UserError(
        f"{what}; stopped. Last good checkpoint: {good or 'none'}. Try a lower train.lr or train.grad_clip"
    )


def _clear_outputs(out_dir: Path, fresh: bool) -> None:
    """Remove what a killed process left half-written, and on a fresh start the older run's checkpoints."""
    checkpoints = RunFolder(out_dir).checkpoints
    for old in step_checkpoints(checkpoints) if fresh else []:
        old.unlink()
    remove_partial_outputs(checkpoints)
    remove_partial_outputs(out_dir)


def _forward(model: nn.Module, fast: FastPath, ranks: Ranks, device: torch.device) -> nn.Module:
    """What a step calls: the model in the fast path's memory format, under DDP with several ranks, compiled."""
    fast.place(model)
    if ranks.world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return fast.compiled(model)


def stage(
    config: Config, data_path: Path, out_dir: Path, device: torch.device, resume: bool, restart_if_changed: bool
) -> TrainResult | None:
    """`ddpm train`: `train` holding the output folder's lock, reporting to the model's MLflow run
    (where tracking is on). Under torchrun only rank 0 locks, tracks and gets the result; the
    other ranks get None."""
    main_rank = os.environ.get("RANK", "0") == "0"
    with (
        folder_lock(out_dir) if main_rank else contextlib.nullcontext(),
        _tracker(config, out_dir, main_rank) as tracker,
    ):
        result = train(
            config, data_path, out_dir, device, resume, tracker=tracker, restart_if_changed=restart_if_changed
        )
    return result if main_rank else None


def _tracker(config: Config, out_dir: Path, main_rank: bool) -> contextlib.AbstractContextManager:
    """The model's MLflow run as the loop's Tracker, or nothing when tracking is off."""
    if not (config.tracking.enabled and main_rank):
        return contextlib.nullcontext()
    from ddpm.tracking import ModelTracker

    return ModelTracker(config, out_dir)
