"""Pictures of the beta schedules: alphā(t) and log-SNR(t) curves, and the forward process strip.

Only the plotting imports matplotlib, and it does so inside the functions, so the training core
never needs it.
"""

from pathlib import Path

import numpy as np
import torch

from ddpm.data import to_uint8, to_unit_range
from ddpm.diffusion import GaussianDiffusion
from ddpm.files import atomic_output
from ddpm.schedules import beta_schedule

STRIP_STEPS = 10  # columns of the forward-process strip


def _pyplot():  # noqa: ANN202
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:  # noqa: ANN001
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
    _pyplot().close(fig)


def plot_schedules(names: list[str], timesteps: int, path: Path) -> None:
    """alphā(t) and log-SNR(t) = log(alphā/(1 − alphā)) of each schedule, over t/T, side by side."""
    fig, (left, right) = _pyplot().subplots(1, 2, figsize=(10, 4))
    t = np.arange(1, timesteps + 1) / timesteps
    for name in names:
        alphas_cumprod = torch.cumprod(1 - beta_schedule(name, timesteps), 0).numpy()
        left.plot(t, alphas_cumprod, label=name)
        right.plot(t, np.log(alphas_cumprod / (1 - alphas_cumprod)), label=name)
    left.set(xlabel="t / T", ylabel="alphā(t)", title="signal kept, alphā(t)")
    right.set(xlabel="t / T", ylabel="log SNR(t)", title="log signal-to-noise ratio")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"beta schedules, T = {timesteps}")
    fig.tight_layout()
    _save(fig, path)


def noised_strip(names: list[str], timesteps: int, image: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """One image (uint8, (3, H, W)) drawn from q(x_t | x_0) at STRIP_STEPS evenly spaced t from 0 to
    T − 1, a row per schedule, with the same noise in every row so that only the schedule differs.
    Returns the uint8 picture (rows·H, STRIP_STEPS·W, 3) and the t of each column."""
    x0 = to_unit_range(torch.tensor(image))[None].double()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    steps = [int(t) for t in np.linspace(0, timesteps - 1, STRIP_STEPS).round()]
    rows = []
    for name in names:
        diffusion = GaussianDiffusion(beta_schedule(name, timesteps))
        x_t = [diffusion.q_sample(x0, torch.tensor([t]), noise)[0] for t in steps]
        rows.append(torch.cat([to_uint8(x) for x in x_t], dim=2))  # (3, H, STRIP_STEPS·W)
    return torch.cat(rows, dim=1).permute(1, 2, 0).numpy(), steps


def forward_strip(names: list[str], timesteps: int, image: np.ndarray, path: Path, seed: int = 0) -> None:
    """`noised_strip` as a labelled picture: schedules down the side, t along the bottom."""
    strip, steps = noised_strip(names, timesteps, image, seed)
    h, w = image.shape[1:]
    fig, ax = _pyplot().subplots(figsize=(1.1 * STRIP_STEPS + 1.5, 1.1 * len(names) + 1))
    ax.imshow(strip, interpolation="nearest")
    ax.set_xticks([(i + 0.5) * w for i in range(STRIP_STEPS)], [f"t={t}" for t in steps])
    ax.set_yticks([(i + 0.5) * h for i in range(len(names))], names)
    ax.tick_params(length=0)
    ax.set_title(f"forward process q(x_t | x_0), T = {timesteps}, the same noise in every row")
    fig.tight_layout()
    _save(fig, path)
