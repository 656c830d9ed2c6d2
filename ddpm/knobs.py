"""The settings besides the schedule that make a trained model what it is (issue 25's knobs): what the
UNet predicts, the process (zero terminal SNR, input scale, learned variances) and the loss weighting.
`ddpm compare` checks them and the report states them, each read from the run's model.pt.

Runs may differ in a knob only where a compared variant sets it (ddpm.variants): "cosine" against
"cosine-minsnr" judges the weighting, which the variant declares; two plain schedules trained with
different weightings by hand would pass a gap off as the schedule's, and are refused.
"""

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from ddpm.errors import UserError

# knob → its value for a model.pt that predates it (what that version did)
PROCESS_DEFAULTS = {"prediction": "eps", "zero_terminal_snr": False, "input_scale": 1.0, "variance": "fixed"}
WEIGHTING = "train.loss_weighting"
KNOBS = [*(f"diffusion.{k}" for k in PROCESS_DEFAULTS), WEIGHTING]
PREDICTIONS = {"eps": "predicts ε", "x0": "predicts x_0", "v": "predicts v (Salimans & Ho 2022)"}


class Run(Protocol):
    name: str
    seed: int
    model: dict[str, Any]  # model.pt's description: diffusion, and config where it was trained here


def knobs(model: Mapping[str, Any]) -> dict[str, Any]:
    """A model.pt description's knobs by key; the weighting is None where it is unknown (imported)."""
    process = model.get("diffusion", {})
    values: dict[str, Any] = {f"diffusion.{k}": process.get(k, default) for k, default in PROCESS_DEFAULTS.items()}
    train = (model.get("config") or {}).get("train")
    values[WEIGHTING] = None if train is None else _weighting(train)
    return values


def _weighting(train: Mapping[str, Any]) -> str:
    if train.get("loss_weighting", "none") == "none":
        return "none"
    return f"min_snr, γ = {train['min_snr_gamma']:g}"


def variant_keys(variants: Mapping[str, Any], names: Iterable[str]) -> set[str]:
    """The keys that the variants among `names` set (`variants`: params.yaml's, each a Variant or its
    dict): where the compared runs may differ."""
    keys: set[str] = set()
    for name in names:
        if name in variants:
            spec = variants[name] if isinstance(variants[name], Mapping) else variants[name].model_dump()
            keys |= {f"{section}.{key}" for section, values in spec.items() for key in values}
    return keys | ({WEIGHTING} if "train.min_snr_gamma" in keys else set())


def check_knobs(runs: list[Run], declared: set[str], label: Any) -> None:
    """A one-line error where runs differ in a knob that no compared variant sets (`declared`)."""
    for key in KNOBS:
        if key in declared:
            continue
        values = {label(r): knobs(r.model)[key] for r in runs}
        known = {k: v for k, v in values.items() if v is not None}
        if len(set(map(str, known.values()))) > 1:
            shown = ", ".join(f"{k}: {v}" for k, v in known.items())
            raise UserError(f"the runs were trained with different {key} ({shown}) and no compared variant sets it; "
                            "compare like with like, or declare the difference as a variant (params.yaml's "
                            "`variants`)")  # fmt: skip


def check_variants_trained(runs: list[Run], variants: Mapping[str, Any]) -> None:
    """A one-line error where a variant's run folder holds a model trained otherwise than the variant now
    says (the variant changed since, or the folder was filled by hand): every key it sets must hold its
    value in model.pt's config. (`dvc repro` retrains such a run; a bare `ddpm compare` must not judge it.)"""
    for r in runs:
        if r.name not in variants or "config" not in r.model:
            continue
        spec = variants[r.name] if isinstance(variants[r.name], Mapping) else variants[r.name].model_dump()
        for section, values in spec.items():
            trained = r.model["config"].get(section, {})
            wrong = {key: value for key, value in values.items() if key in trained and trained[key] != value}
            for key, value in wrong.items():
                seed = f" --seed {r.seed}" if r.seed else ""
                raise UserError(f"{r.name} seed {r.seed}: trained with {section}.{key} = {trained[key]}, but "
                                f"variants.{r.name} sets {value}; retrain it (`ddpm train --beta-schedule {r.name}"
                                f"{seed} --restart-if-changed`)")  # fmt: skip


def _phrases(values: dict[str, Any]) -> list[str]:
    """A run's knobs in words, its weighting last."""
    phrases = [PREDICTIONS[values["diffusion.prediction"]]]
    phrases += ["zero terminal SNR (Lin et al. 2023)"] if values["diffusion.zero_terminal_snr"] else []
    scale = values["diffusion.input_scale"]
    phrases += [f"input scale b = {scale:g} (Chen 2023)"] if scale != 1 else []
    learned = values["diffusion.variance"] == "learned_range"
    phrases += ["learned variances (Nichol & Dhariwal 2021)" if learned else "fixed variances"]
    weighting = values[WEIGHTING]
    if weighting is None:
        return [*phrases, "loss weighting not recorded (imported)"]
    if weighting == "none":
        return [*phrases, "loss unweighted (L_simple, Ho et al. eq. 14)"]
    return [*phrases, f"loss Min-SNR-γ weighted, γ = {weighting.split('= ')[1]} (Hang et al. 2023)"]


def knob_sentence(runs: list[Run], label: Any) -> str:
    """The report's sentence on the runs' knobs: what all share, then what each run does besides."""
    phrases = {label(r): _phrases(knobs(r.model)) for r in runs}
    shared = [p for p in next(iter(phrases.values())) if all(p in ps for ps in phrases.values())]
    own = {k: [p for p in ps if p not in shared] for k, ps in phrases.items()}
    text = f"Process and loss, every run: {', '.join(shared)}" if shared else "Process and loss:"
    listed = "; ".join(f"{k}: {', '.join(ps)}" for k, ps in own.items() if ps)
    return f"{text}{'; ' if shared and listed else ' ' if listed else ''}{listed}."
