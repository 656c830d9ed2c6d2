"""The few-step samplers' speed on the CPU (issue 24): DDIM-50 against DPM-Solver++-20, ours against
diffusers' DDIMScheduler and DPMSolverMultistepScheduler(solver_order=2, algorithm_type="dpmsolver++")
driving the identical network, the `tiny` UNet (one instance, the same weights, in both loops), and each
solver's own overhead per step.

    python bench/samplers.py                         # 16² batch 64 and 32² batch 16: 2.5 minutes alone (2 cores)
    python bench/samplers.py --runs 8x4 --repeats 1  # seconds: that it runs

Ours is `ddpm sample`'s loop (ddpm.sample.generate), diffusers' the plain loop of its documentation
(bench/throughput.py's OurSampler and DiffusersSampler), at T = 1000 of the linear schedule, the
linspace spacing, float32, eager (as `ddpm sample` runs on a CPU). Each chain's wall time is the median
of --repeats chains after a warm-up chain (DDIM-10) of each loop; NFE/s is the chain's network
evaluations (of a whole batch) per second. The solver's overhead per step, everything but the network,
is the time of the same chain with a free stand-in network (it returns a tensor drawn beforehand) over
its time with the UNet; for ours it includes what generate does once a chain (x_T, the progression
frames, the uint8 images), so it is an upper bound. Issue 24's target: at most 5 % of a step, ours.
The stand-in also records its calls: each chain's NFE is measured, not assumed. Nothing else should run
meanwhile. The default run calls the UNet 2 × 440 times, about 0.36 s a call on one thread (a 16² batch of
64 costs what a 32² batch of 16 does), whence its time: 5 minutes on one thread, 2 min 27 s measured on two.
"""

import argparse
import platform
import sys
from datetime import date
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import throughput as tp  # noqa: E402

PRESET, T = "tiny", 1000
CHAINS = (("ddim", 50), ("dpmsolver++", 20))  # (sampler, NFE): the pair
NAMES = {"ddim": "DDIM", "dpmsolver++": "DPM-Solver++"}
LOOPS = ("ddpm", "diffusers")
TARGET = 0.05  # the solver's overhead, as a fraction of a step (issue 24)
CPU = torch.device("cpu")


class FreeNetwork(nn.Module):
    """A stand-in for the UNet that costs nothing: ε(x_t, t) is one tensor drawn beforehand, returned
    as it is, so that a chain with it times the solver alone. It records the timestep of each call
    (on the CPU, where it runs): the chain's NFE, and which timesteps the loop visits."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("eps", torch.randn(shape, generator=torch.Generator().manual_seed(0)))
        self.timesteps: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.timesteps.append(int(t[0]))
        return self.eps


def figures(nfe: int, seconds: float, free_seconds: float) -> dict[str, float]:
    """A chain's wall time, its NFE/s, and the solver's overhead: the free chain's time over the real
    one's, which is the overhead per step over the time of a step, both chains having `nfe` steps."""
    return {"s": seconds, "nfe_s": nfe / seconds, "overhead": free_seconds / seconds}


def verdict(overheads: list[float]) -> str:
    worst = max(overheads)
    return f"at most {100 * worst:.1f} % of a step: {'met' if worst <= TARGET else 'not met'}"


def stand_in(loop: tp.OurSampler | tp.DiffusersSampler) -> FreeNetwork:
    """The loop's own copy of the free network (the samplers copy what they are given)."""
    return loop.model if isinstance(loop, tp.OurSampler) else loop.network


def measure(size: int, batch: int, repeats: int, free_repeats: int) -> list[dict]:
    """One row per chain of CHAINS: for each loop, `figures` of its chains of `batch` images."""
    unet = tp.networks(PRESET, size, with_diffusers=False)["ddpm"]
    free = FreeNetwork((batch, 3, size, size))
    args = (size, batch, T, False, CPU)
    loops = {
        "ddpm": (tp.OurSampler(unet, *args), tp.OurSampler(free, *args)),
        "diffusers": (tp.DiffusersSampler(unet, *args), tp.DiffusersSampler(free, *args)),
    }
    for real, free_loop in loops.values():
        real.warm_up()
        free_loop.warm_up()
    rows = []
    for sampler, nfe in CHAINS:
        row: dict = {"size": size, "batch": batch, "sampler": sampler, "nfe": nfe}
        for name, (real, free_loop) in loops.items():
            seconds = real.seconds(nfe, repeats, sampler=sampler)
            stand_in(free_loop).timesteps.clear()
            free_seconds = free_loop.seconds(nfe, free_repeats, sampler=sampler)
            calls = len(stand_in(free_loop).timesteps) / free_repeats
            assert calls == nfe, f"{name}'s {sampler} chain called the network {calls} times, not {nfe}"
            row[name] = figures(nfe, seconds, free_seconds)
        rows.append(row)
        print(table_row(row), flush=True)
    return rows


def table_row(row: dict) -> str:
    ours, theirs = row["ddpm"], row["diffusers"]
    cells = [f"{row['size']}², batch {row['batch']}", NAMES[row["sampler"]], str(row["nfe"]),
             f"{ours['s']:.2f}", f"{theirs['s']:.2f}", f"{ours['nfe_s']:.1f}", f"{theirs['nfe_s']:.1f}",
             f"{theirs['s'] / ours['s']:.2f}×", f"{100 * ours['overhead']:.1f} %",
             f"{100 * theirs['overhead']:.1f} %"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def run(text: str) -> tuple[int, int]:
    """SIZExBATCH, e.g. 16x64."""
    size, _, batch = text.partition("x")
    if not (size.isdigit() and batch.isdigit() and int(size) >= 8 and int(batch) >= 1):
        raise argparse.ArgumentTypeError(f"expected SIZExBATCH with size ≥ 8 and batch ≥ 1, e.g. 16x64; got {text!r}")
    return int(size), int(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=run, nargs="+", default=[(16, 64), (32, 16)], help="SIZExBATCH ...")
    parser.add_argument("--repeats", type=int, default=3, help="chains with the UNet; the figure is their median")
    parser.add_argument("--free-repeats", type=int, default=10, help="chains with the free stand-in")
    args = parser.parse_args()
    import diffusers

    runs = " ".join(f"{size}x{batch}" for size, batch in args.runs)
    unet = tp.networks(PRESET, 8, with_diffusers=False)["ddpm"]
    print(f"# {date.today()}, {platform.processor() or 'CPU'}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, diffusers {diffusers.__version__}, {PRESET}: {tp.parameters(unet):,} parameters, "
          f"T = {T}, linear, linspace, float32")  # fmt: skip
    print(f"# python bench/samplers.py --runs {runs} --repeats {args.repeats} --free-repeats {args.free_repeats}")
    print("| images | sampler | NFE | ddpm s | diffusers s | ddpm NFE/s | diffusers NFE/s "
          "| ddpm speed-up (diffusers s / ddpm s) | ddpm solver overhead | diffusers' |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [row for size, batch in args.runs for row in measure(size, batch, args.repeats, args.free_repeats)]
    print(f"\nOur solver's overhead per step (issue 24: ≤ {100 * TARGET:.0f} % of a step, the tiny preset, CPU): "
          f"DDIM {verdict([r['ddpm']['overhead'] for r in rows if r['sampler'] == 'ddim'])}; DPM-Solver++ "
          f"{verdict([r['ddpm']['overhead'] for r in rows if r['sampler'] == 'dpmsolver++'])}.")  # fmt: skip


if __name__ == "__main__":
    main()
