"""Which of the T training timesteps a few-step sampler visits: the timestep spacings of Lin et al.
2023 (Table 2), each computed as diffusers' `timestep_spacing` of the same name computes it for that
sampler's scheduler, and the DDIM paper's quadratic one.

- DDIM (diffusers' DDIMScheduler): `linspace` rounds n points spread evenly over [0, T − 1], so it
  starts at T − 1 and ends at 0; `leading` takes every (T // n)-th timestep from 0, so it ends at 0
  and never reaches T − 1 (the flaw Lin et al. point out); `trailing` takes every (T / n)-th down from
  T − 1, so it never reaches 0; `quadratic` is Song et al. 2021's choice for CIFAR-10 (Appendix D.2,
  and their code): ⌊(i·√(0.8·T)/(n − 1))²⌋, i = 0..n−1, from 0 to 0.8·T, repeats of 0 included.
- DPM-Solver++ (diffusers' DPMSolverMultistepScheduler): the same rules over n + 1 points, the last
  (t = 0, or 0's place) dropped, because its final step goes to the data itself (σ = 0) rather than
  to a timestep.

Each list is descending, the timesteps at which the network is evaluated: n network evaluations (NFE).
"""

from typing import Literal

import numpy as np

Spacing = Literal["linspace", "leading", "trailing", "quadratic"]
SPACINGS: dict[str, tuple[Spacing, ...]] = {  # the spacings each few-step sampler defines
    "ddim": ("linspace", "leading", "trailing", "quadratic"),
    "dpmsolver++": ("linspace", "leading", "trailing"),
}


def timesteps(sampler: str, spacing: str, steps: int, num_timesteps: int) -> list[int]:
    """The `steps` timesteps (0-based, descending) at which `sampler` evaluates the network, for a
    model of `num_timesteps` = T. Raises ValueError for a sampler/spacing pair that is not defined, a
    step count outside 1..T, or a spacing other than quadratic that repeats a timestep at this count
    (rounding)."""
    if spacing not in SPACINGS.get(sampler, ()):
        raise ValueError(f"{sampler} has no {spacing} spacing; it has {', '.join(SPACINGS.get(sampler, ())) or 'none'}")
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"{steps} steps: expected from 1 to the model's T = {num_timesteps}")
    listed = _ddim(spacing, steps, num_timesteps) if sampler == "ddim" else _dpm_solver(spacing, steps, num_timesteps)
    # quadratic repeats t = 0 from 30 steps of T = 1000 on (⌊(i·c)²⌋ = 0 for the first few i), as the
    # DDIM paper's runs at 50 and 100 steps did: a DDIM step from t to t is the identity for η = 0
    # without clipping, a spent evaluation. Elsewhere a repeat is a step of h = 0 that DPM-Solver++
    # cannot take, or a count too large for the spacing: refused.
    if spacing != "quadratic" and len(set(listed)) != steps:
        raise ValueError(f"{spacing} repeats timesteps at {steps} steps of T = {num_timesteps}; take fewer steps")
    return listed


def _ddim(spacing: str, n: int, T: int) -> list[int]:
    if spacing == "linspace":
        # diffusers' rounding of np.linspace; for n = 1 it gives t = 0, which would read pure noise as
        # almost clean data: the chain starts from x_T, so its one step is at T − 1
        points = np.linspace(0, T - 1, n) if n > 1 else np.array([T - 1])
    elif spacing == "leading":
        points = np.arange(n) * (T // n)
    elif spacing == "trailing":
        points = _trailing(n, T)
    else:  # quadratic, Song et al. 2021: truncated, as their code truncates
        points = np.floor(np.linspace(0, np.sqrt(0.8 * T), n) ** 2)
    return _descending(points)


def _dpm_solver(spacing: str, n: int, T: int) -> list[int]:
    if spacing == "linspace":
        points = np.linspace(0, T - 1, n + 1)[1:]
    elif spacing == "leading":
        points = np.arange(1, n + 1) * (T // (n + 1))
    else:
        points = _trailing(n, T)
    return _descending(points)


def _trailing(n: int, T: int) -> np.ndarray:
    """round(T − i·T/n) − 1 for i = 0..n−1, as np.arange computes it. (diffusers' np.arange(T, 0, −T/n)
    yields an (n+1)-th point, −1 after the shift, where rounding leaves T − n·T/n just above 0, e.g. at
    n = 61 of T = 1000: taken n points, it is equal to diffusers' list wherever that has n.)"""
    return np.round(np.arange(T, 0, -T / n)[:n]) - 1


def _descending(points: np.ndarray) -> list[int]:
    return [int(t) for t in np.sort(np.round(points))[::-1]]


SAMPLER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpmsolver++": "DPM-Solver++"}


def sampling_name(sample: dict) -> str:
    """A sampling's chain in a few words, from its settings (samples.json's `sample`): "DDPM",
    "DDIM 50 steps, linspace", "DPM-Solver++ 20 steps, trailing". Settings recorded before the
    spacing was a setting (`ddim_steps`) were DDIM's linspace."""
    sampler = sample["sampler"]
    if sampler == "ddpm":
        return "DDPM"
    steps = sample["steps"] if "steps" in sample else sample["ddim_steps"]
    return f"{SAMPLER_NAMES[sampler]} {steps} steps, {sample.get('spacing', 'linspace')}"
