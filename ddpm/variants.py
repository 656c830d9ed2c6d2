"""Variants: named runs that set some model.*, diffusion.* and train.* keys over the rest of params.yaml,
so that one comparison can hold "cosine" beside "cosine with min-SNR" and "linear with zero terminal SNR
and v-prediction". `schedules` lists schedules and variants alike, and each is run as its name says:

    variants:
      cosine-minsnr:
        diffusion: {schedule: cosine}
        train: {loss_weighting: min_snr}

`ddpm train --beta-schedule cosine-minsnr` (what dvc.yaml's matrix runs) trains it into runs/cosine-minsnr/.
A variant's keys come after the file's and before the command line's, so `--set` still has the last word.
"""

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from ddpm.config_errors import Override
from ddpm.errors import UserError
from ddpm.schedules import SCHEDULES

RUN_KEY = "diffusion.schedule"  # the key --beta-schedule sets: a schedule's name, or a variant's
# A run's name is its folder's under runs/ and appears in dvc.yaml's stage names: no spaces, slashes or "@"
RunName = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="a name of letters, digits, _ . and -")
]
VARIANTS = "a mapping of names to the model, diffusion and train keys each sets"


class Variant(BaseModel):
    """A named run: the model.*, diffusion.* and train.* keys it sets over the rest of params.yaml (each
    checked when the config is loaded, by ddpm.config)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: dict[str, Any] = {}
    diffusion: dict[str, Any] = {}
    train: dict[str, Any] = {}


def recipe() -> dict[str, Variant]:
    """params.yaml's variants: the literature's comparison, each schedule with and without Min-SNR-γ (Hang et
    al. 2023), and v-prediction with zero terminal SNR (Lin et al. 2023). Defined, not run: `schedules`
    names the runs."""
    minsnr = {name: {"diffusion": {"schedule": name.split("-")[0]}, "train": {"loss_weighting": "min_snr"}}
              for name in ("linear-minsnr", "cosine-minsnr")}  # fmt: skip
    ztsnr = {"diffusion": {"schedule": "linear", "prediction": "v", "zero_terminal_snr": True}}
    return {name: Variant(**spec) for name, spec in {**minsnr, "linear-ztsnr-v": ztsnr}.items()}


def variant_overrides(name: str, variant: dict[str, Any], label: str) -> list[Override]:
    """The variant's keys as overrides, each named after its place in the file (`label`), e.g.
    ("params.yaml: variants.cosine-minsnr.train.loss_weighting", "train.loss_weighting", "min_snr")."""
    return [
        (f"{label}: variants.{name}.{section}.{key}", f"{section}.{key}", value)
        for section, keys in variant.items()
        for key, value in keys.items()
    ]


def expand_variant(raw: dict[str, Any], overrides: Sequence[Override], label: str) -> tuple[list[Override], str | None]:
    """`overrides` with the variant that the last of them to set diffusion.schedule names (if it names one
    of `raw`'s variants) in its place: the variant's keys first, then the other overrides; and the
    variant's name (None where no variant is named). A malformed `variants` is left to validation."""
    named = [(source, value) for source, key, value in overrides if key == RUN_KEY]
    variants = raw.get("variants", {name: spec.model_dump() for name, spec in recipe().items()})  # none: the defaults'
    if not named or not isinstance(variants, dict) or not isinstance(named[-1][1], str):
        return list(overrides), None
    source, name = named[-1]
    if name not in variants and name not in SCHEDULES:
        where = source if RUN_KEY in source else f"{source} ({RUN_KEY})"
        raise UserError(f'{where}: expected a schedule ({", ".join(SCHEDULES)}) or a variant '
                        f'({", ".join(variants) or "none defined"}), got "{name}"')  # fmt: skip
    variant = variants.get(name)
    if not isinstance(variant, dict) or not all(isinstance(keys, dict) for keys in variant.values()):
        return list(overrides), None
    rest = [override for override in overrides if override[1] != RUN_KEY]
    return [*variant_overrides(name, variant, label), *rest], name
