"""Whether runs compare: their samples drawn alike (each run's samples.json) and their likelihood
measured alike (eval.json). A paired comparison needs more than equal settings in params.yaml: sample
i of every run must start from the same x_T (sample.seed and sample.batch_size decide which) and be
drawn by the same chain, so compare refuses runs that differ, in one line naming the key, each run's
value and the commands that draw or score the others as the first run was.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ddpm.errors import UserError


@dataclass
class Measured:
    """What one run's numbers were measured with."""

    label: str  # "cosine", "cosine seed 1"
    command: Callable[[str, str], str]  # (stage, extra arguments) → "`ddpm <stage> … <extra>`" for this run
    sample: dict[str, Any] | None  # samples.json's sample settings; None: drawn elsewhere
    evaluation: dict[str, Any]  # eval.json


# samples.json's sample settings that decide what sample i of a run is, and whether each matters
# for the run's sampler: DDIM has steps, a spacing and η, DPM-Solver++ steps and a spacing, DDPM a
# reverse variance (ddpm.sample.generate).
SAMPLED = {
    "sampler": lambda s: True,
    "steps": lambda s: s.get("sampler") != "ddpm",
    "spacing": lambda s: s.get("sampler") != "ddpm",
    "eta": lambda s: s.get("sampler") == "ddim",
    "variance": lambda s: s.get("sampler") == "ddpm",
    "seed": lambda s: True,
    "batch_size": lambda s: True,  # a batch's x_T follow the chains of the batches before it
    "precision": lambda s: True,
    "clip_mode": lambda s: True,
    "num_samples": lambda s: True,
}
# eval.json's likelihood settings: the key, the setting that sets it ("" where rerunning evaluate does)
MEASURED = {"nll_images": "evaluate.nll_images", "nll_variance": "evaluate.nll_variance",
            "nll_clip_mode": "sample.clip_mode", "nll_precision": "", "holdout_sha256": ""}  # fmt: skip


def check_comparable(runs: list[Measured]) -> None:
    """A one-line UserError at the first setting in which the runs differ; the fix draws or scores
    each other run as the first run that recorded the setting did."""
    drawn = [r.sample for r in runs]
    if any(d is not None for d in drawn):  # none recorded: samples drawn elsewhere, nothing to check
        for key, matters in SAMPLED.items():
            values = [None if d is None else d.get(key) if matters(d) else "" for d in drawn]  # "": unused
            _check(f"sample.{key}", runs, values, f"sample.{key}", ("sample", "evaluate"))
    if any("nll_bpd" in r.evaluation for r in runs):
        for key, setting in MEASURED.items():
            _check(key, runs, _settings_of(key, [r.evaluation.get(key) for r in runs]), setting, ("evaluate",))


def _settings_of(key: str, values: list[Any]) -> list[Any]:
    """`values` as settings to agree on: a learned variance (nll_variance learned_range) is the model's own,
    not evaluate.nll_variance's (ddpm.knobs checks diffusion.variance), so it agrees with any setting."""
    fixed = [v for v in values if v != "learned_range"] if key == "nll_variance" else values
    return [fixed[0] if v == "learned_range" and fixed else v for v in values]


def _check(key: str, runs: list[Measured], values: list[Any], setting: str, stages: tuple[str, ...]) -> None:
    """Refuse `runs` whose `values` of `key` differ: the fix runs `stages` of each run that differs
    from the first recorded value, with that value as `setting` ("": rerunning the stages is the fix)."""
    if len({json.dumps(v) for v in values}) == 1:
        return
    reference = next(v for v in values if v is not None)
    extra = f"--set {setting}={_text(reference)}" if setting else ""
    shown = ", ".join(f"{r.label}: {_text(v)}" for r, v in zip(runs, values, strict=True))
    fixes = "; ".join(" then ".join(r.command(stage, extra) for stage in stages)
                      for r, v in zip(runs, values, strict=True) if v != reference)  # fmt: skip
    raise UserError(f"{key} differs between the runs ({shown}), so their numbers do not compare; run {fixes}")


def _text(value: Any) -> str:
    """`value` as params.yaml and --set write it; "unknown" where the run did not record it, a sha256
    by its first 12 digits."""
    if value is None:
        return "unknown"
    if isinstance(value, str):
        return value[:12] if len(value) == 64 else value
    return json.dumps(value)
