"""Beta schedules: one pure function each, returning float64 betas of shape (T,).

Every schedule is defined for any number of steps T. Schedules given in terms of
alphā(t) (cosine, sigmoid) are turned into betas by beta_t = 1 − alphā(t)/alphā(t−1),
clipped at 0.999 as in Nichol & Dhariwal 2021, so that the last steps stay finite.
"""

import math
from collections.abc import Callable

import torch

MAX_BETA = 0.999


def linear(timesteps: int) -> torch.Tensor:
    """Ho et al. 2020: beta_t linear from 1e-4 to 0.02 at T = 1000.

    Both ends are scaled by 1000/T (Nichol & Dhariwal 2021, improved-diffusion)
    so that another T traces the same curve of alphā over t/T.
    """
    scale = 1000 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)


def quadratic(timesteps: int) -> torch.Tensor:
    """betas = linspace(√beta_1, √beta_T, T)², with beta_1, beta_T as in `linear` (scaled by 1000/T).

    The "quad" schedule of Ho et al.'s code release (diffusers' "scaled_linear").
    """
    scale = 1000 / timesteps
    start, end = math.sqrt(scale * 1e-4), math.sqrt(scale * 0.02)
    return torch.linspace(start, end, timesteps, dtype=torch.float64) ** 2


def cosine(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alphā(t) = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s))·π/2).

    The offset s = 0.008 keeps beta_1 from being vanishingly small. The betas are ratios of
    consecutive alphā, so f needs no dividing by f(0).
    """
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    return _betas_from_alphas_cumprod(torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2)


def sigmoid(timesteps: int, start: float = -3.0, end: float = 3.0) -> torch.Tensor:
    """Sigmoid schedule in alphā-space: Jabri et al. 2022 (RIN), Chen 2023 ("On the importance
    of noise scheduling"), the default of lucidrains' denoising-diffusion-pytorch (τ = 1):

        alphā(t) = (σ(end) − σ(t/T·(end − start) + start)) / (σ(end) − σ(start)),

    with σ the logistic function. The betas are ratios of consecutive alphā, so the constant
    denominator drops out. Not diffusers' "sigmoid", which puts a sigmoid on the betas themselves.
    """
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    top = torch.sigmoid(torch.tensor(end, dtype=torch.float64))
    return _betas_from_alphas_cumprod(top - torch.sigmoid(t * (end - start) + start))


def _betas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """betas from alphā(0..T) up to a constant factor (T + 1 values): beta_t = 1 − alphā(t)/alphā(t−1), ≤ 0.999."""
    return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=MAX_BETA)


SCHEDULES: dict[str, Callable[[int], torch.Tensor]] = {
    "linear": linear,
    "cosine": cosine,
    "quadratic": quadratic,
    "sigmoid": sigmoid,
}


def beta_schedule(name: str, timesteps: int) -> torch.Tensor:
    """The betas of schedule `name` for `timesteps` steps: float64, shape (timesteps,), each in (0, 1)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; expected one of: {', '.join(SCHEDULES)}")
    if timesteps < 2:
        raise ValueError(f"timesteps must be at least 2, got {timesteps}")
    betas = SCHEDULES[name](timesteps)
    if not (betas > 0).all() or not (betas < 1).all():
        raise ValueError(
            f"the {name} schedule with timesteps={timesteps} gives betas outside (0, 1) "
            f"(largest {betas.max().item():.3g}); use more timesteps"
        )
    return betas
