"""The config's checks that involve more than one key of the sampling and the process, each a one-line
error naming the flags that set the keys, or the file (`label`)."""

from collections.abc import Sequence

from ddpm.config_errors import Override
from ddpm.errors import UserError
from ddpm.spacing import SPACINGS, timesteps


def where(label: str, overrides: Sequence[Override], keys: tuple[str, ...]) -> str:
    """The flags that set any of `keys`, else the file (the message names the keys)."""
    given = [source for source, k, _ in overrides if k in keys]
    return ", ".join(dict.fromkeys(given)) if given else label


def check_spacing(sampler: str, spacing: str, label: str, overrides: Sequence[Override]) -> None:
    """sample.spacing must be one that sample.sampler defines (ddpm.spacing.SPACINGS). (The sweep's samplers
    are checked by the sweep stage: `ddpm sample --sampler ddim --spacing quadratic` must not fail for the
    sweep's DPM-Solver++.)"""
    if sampler != "ddpm" and spacing not in SPACINGS[sampler]:
        named = where(label, overrides, ("sample.spacing", "sample.sampler"))
        named += "" if "sample.spacing" in named else ": sample.spacing"
        raise UserError(f"{named}: {spacing} is not defined for {sampler} (sample.sampler); "
                        f"expected one of: {', '.join(SPACINGS[sampler])}")  # fmt: skip


def check_zero_terminal_snr(
    prediction: str, samplers: list[str], spacing: str, steps: int, T: int, label: str, overrides: Sequence[Override]
) -> None:
    """Zero terminal SNR needs a target defined where x_T holds no signal, and chains (of `samplers`, at
    sample.spacing and sample.steps) that sample t = T − 1, the step of pure noise (Lin et al. 2023, §3.3)."""
    if prediction == "eps":
        named = where(label, overrides, ("diffusion.prediction", "diffusion.zero_terminal_snr"))
        raise UserError(f"{named}: diffusion.prediction eps cannot go with diffusion.zero_terminal_snr: at t = T "
                        "x_T holds no signal, so x̂_0 = (x_T − eps)/0 (diffusers PR #3664's black images); "
                        "use diffusion.prediction: v")  # fmt: skip
    for sampler in samplers:
        if sampler == "ddpm" or spacing not in SPACINGS[sampler] or not 1 <= steps <= T:
            continue
        if timesteps(sampler, spacing, steps, T)[0] != T - 1:
            named = where(label, overrides, ("sample.spacing", "diffusion.zero_terminal_snr"))
            raise UserError(f"{named}: sample.spacing {spacing} never samples t = T − 1 with {sampler}, the step "
                            "of pure noise that diffusion.zero_terminal_snr trains (Lin et al. 2023, section 3.3); "
                            "use sample.spacing: trailing")  # fmt: skip
