"""Processes and signals: this process's rank under torchrun, and SIGINT/SIGTERM turned into a
request the training loop answers at the end of its step.
"""

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ddpm.errors import UserError


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job (rank 0 of 1 when there is none)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


ONE_PROCESS = Ranks()


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


def agree_to_stop(stop: list[int], ranks: Ranks, read_back: bool) -> bool:
    """Whether to stop now for a signal. One process checks every step (no device involved); under
    torchrun the ranks agree at read-back points, so that they all stop at the same step."""
    if ranks.world == 1:
        return bool(stop)
    if not read_back:
        return False
    on_gpu = dist.get_backend() == "nccl"
    flag = torch.tensor([len(stop)], dtype=torch.float64, device="cuda" if on_gpu else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


@contextmanager
def stop_requests() -> Iterator[list[int]]:
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


def device_named(name: str) -> torch.device:
    """ "auto" → the first CUDA device if there is one, else the CPU; otherwise a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device: {name} requested, but PyTorch sees no CUDA device")
    return device


def torchrun(nproc: int, args: list[str]) -> int:
    """Run the `ddpm` command `args` (less its --nproc) as `nproc` ranks of a single-node torchrun job."""
    kept, skip = [], False
    for arg in args:
        if skip or arg.startswith("--nproc="):
            skip = False
            continue
        skip = arg == "--nproc"
        kept += [] if skip else [arg]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.call([*launcher, "-m", "ddpm", *kept])
