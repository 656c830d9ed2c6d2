"""Beta schedules: one pure function each, returning float64 betas of shape (T,), and the two
transformations of a schedule that `process_betas` applies on top: zero terminal SNR (Lin et al. 2023)
and the input scale (Chen 2023).

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


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"), Algorithm 1:
    √alphā shifted so that √alphā_T = 0 and scaled so that √alphā_1 is kept,

        √alphā'_t = (√alphā_t − √alphā_T)·√alphā_1/(√alphā_1 − √alphā_T),

    so that x_T holds no signal at all (SNR_T = 0), as the sampler's x_T ~ N(0, I) assumes. float64
    betas (T,) in, float64 betas out; the last beta is exactly 1 (alphā'_T = 0)."""
    sqrt_alphas_cumprod = torch.cumprod(1 - betas.to(torch.float64), 0).sqrt()
    first, last = sqrt_alphas_cumprod[0].clone(), sqrt_alphas_cumprod[-1].clone()
    sqrt_alphas_cumprod = (sqrt_alphas_cumprod - last) * (first / (first - last))
    alphas_cumprod = sqrt_alphas_cumprod**2
    alphas = torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1 - alphas


def shift_log_snr(betas: torch.Tensor, input_scale: float) -> torch.Tensor:
    """Chen 2023 ("On the importance of noise scheduling for diffusion models") input scaling by b:
    x_t = √alphā·b·x_0 + √(1 − alphā)·eps, divided by √(b²·alphā + 1 − alphā), its standard deviation
    for data of unit variance, is the variance-preserving process of

        alphā'_t = b²·alphā_t/(b²·alphā_t + 1 − alphā_t),  i.e.  log-SNR'(t) = log-SNR(t) + 2·log b,

    whose betas this returns, float64: beta'_t = 1 − alphā'_t/alphā'_{t−1} = beta_t/(1 + (b² − 1)·alphā_t),
    a form without cancellation (1 for beta_t = 1: zero terminal SNR is kept). x_0 stays the data in
    [-1, 1], so the samplers, the loss and the bound follow from the betas as for any schedule. The
    normalisation is a fixed one per t, not Chen's per-image empirical standard deviation: that
    would make q(x_t | x_0) non-Gaussian and the variational bound undefined. b = 1 returns `betas`."""
    if input_scale == 1:
        return betas
    betas = betas.to(torch.float64)
    return betas / (1 + (input_scale**2 - 1) * torch.cumprod(1 - betas, 0))


def process_betas(
    schedule: str, timesteps: int, zero_terminal_snr: bool = False, input_scale: float = 1.0
) -> torch.Tensor:
    """The betas of the diffusion process a config or checkpoint describes: `beta_schedule`, then
    rescaled to zero terminal SNR (the only way a beta reaches 1) if asked, then shifted by the input
    scale b. float64, shape (timesteps,)."""
    betas = beta_schedule(schedule, timesteps)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return shift_log_snr(betas, input_scale)
