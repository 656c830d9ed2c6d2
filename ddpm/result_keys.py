"""What each file of a run folder must hold, key by key: the kind of each value (a number, an
integer, text, ...) and whether it is required; and the test of a value against its kind, in words.
"""

import json
from collections.abc import Iterable
from typing import Any

from ddpm.spacing import SPACINGS

# The few-step samplers a sweep runs, each with a table of scores by NFE in sweep.json under its own name.
FEW_STEP_SAMPLERS = tuple(SPACINGS)


def sampler_key(sampler: str) -> str:
    """`sampler` as metric names spell it: MLflow refuses "+" in a key, so dpmsolver++ is dpmsolverpp
    (fid_randconv_dpmsolverpp, fid_dpmsolverpp20)."""
    return sampler.replace("+", "p")


# The kinds of value the results hold: a test of the value, and what it is in words.
KINDS = {
    "number": (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    "integer": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "text": (lambda v: isinstance(v, str), "a string"),
    "text or null": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "flag": (lambda v: isinstance(v, bool), "true or false"),
    "pairs": (lambda v: isinstance(v, list) and all(_is_pair(p) for p in v), "a list of [sample, training, distance]"),
    "samplers": (lambda v: isinstance(v, list) and len(v) > 0 and len(set(map(str, v))) == len(v)
                 and all(s in FEW_STEP_SAMPLERS for s in v), "a list of distinct samplers: ddim, dpmsolver++"),
}  # fmt: skip


def _is_pair(pair: Any) -> bool:
    """[sample_index, training_index, pixel_distance], as ddpm.memorization's closest pairs are."""
    integer, number = KINDS["integer"][0], KINDS["number"][0]
    return isinstance(pair, list) and len(pair) == 3 and integer(pair[0]) and integer(pair[1]) and number(pair[2])


def value_problem(key: str, value: Any, kind: str) -> str | None:
    """What is wrong with `value` at `key` as a value of `kind` (a KINDS name, or "by steps": a
    sweep's scores by number of steps); None if nothing."""
    if kind == "by steps":
        return _by_steps(key, value)
    test, words = KINDS[kind]
    return None if test(value) else f"{key} is {json.dumps(value)}; expected {words}"


def _by_steps(key: str, value: Any) -> str | None:
    if not isinstance(value, dict) or not value:
        return f"{key} is {json.dumps(value)}; expected a mapping of step counts to scores"
    for steps, score in value.items():
        if not (steps.isascii() and steps.isdigit() and int(steps) > 0):
            return f"{key} has the key {json.dumps(steps)}; expected whole numbers of steps"
        if problem := value_problem(f"{key}[{json.dumps(steps)}]", score, "number"):
            return problem
    return None


# What each file holds: key → (kind, required). eval.json's metric names depend on the extractor (`scores_keys`).
TRAIN_KEYS = {"final_loss": ("number", True), "steps": ("integer", True), "train_seconds": ("number", True),
              "images_per_second": ("number", True)}  # fmt: skip
SCORES_KEYS = {"num_samples": ("integer", True), "num_real": ("integer", True), "feature_extractor": ("text", True),
               "feature_dim": ("integer", True), "weights": ("text", True), "resize": ("text", True),
               "bootstrap": ("integer", False), "bootstrap_seed": ("integer", False), "nll_bpd": ("number", False),
               "nll_bpd_sem": ("number", False), "nll_decoder_bpd": ("number", False),
               "nll_diffusion_bpd": ("number", False), "nll_prior_bpd": ("number", False),
               "nll_decoder_floor_bpd": ("number", False), "nll_images": ("integer", False),
               "nll_variance": ("text", False), "nll_clip_mode": ("text", False), "nll_precision": ("text", False),
               "memorized_fraction": ("number", False), "memorized_fraction_features": ("number", False),
               "nn_pixels_median": ("number", False), "nn_features_median": ("number", False),
               "memorization_mirrored": ("flag", False),
               "real_sha256": ("text", False), "weights_sha256": ("text or null", False),
               "holdout_sha256": ("text", False), "checkpoint_sha256": ("text", False),
               "samples_sha256": ("text", False), "nll_terms_sha256": ("text", False),
               "resamples_sha256": ("text", False), "closest_pairs": ("pairs", False)}  # fmt: skip
SWEEP_KEYS = {"metric": ("text", True), "samplers": ("samplers", True), "spacing": ("text", True),
              "clip_mode": ("text", True),
              "ddpm": ("by steps", True), "ddpm_sd": ("by steps", False), "bootstrap": ("integer", False),
              "ddpm_reused": ("flag", False), "num_samples": ("integer", True), "eta": ("number", True),
              "variance": ("text", True), "seed": ("integer", True), "feature_extractor": ("text", True),
              "checkpoint_sha256": ("text", False), "weights_sha256": ("text or null", False),
              "real_sha256": ("text", False)}  # fmt: skip


def sweep_keys(sweep: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """What sweep.json must hold: SWEEP_KEYS, and for each of its `samplers` (where they are a list of
    samplers) a table of scores by NFE under the sampler's name, with its bootstrap SDs under <name>_sd."""
    samplers = sweep.get("samplers")
    listed = samplers if KINDS["samplers"][0](samplers) else []
    return SWEEP_KEYS | {k: v for s in listed for k, v in ((s, ("by steps", True)), (f"{s}_sd", ("by steps", False)))}


LINK_KEYS = {"run_id": ("text or null", True)}


def scores_keys(scores: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """What eval.json must hold: SCORES_KEYS, its FID, FID_∞ and KID under the extractor's names, an
    estimate's spread and interval ends together, and with the likelihood what the report says it was
    measured with."""
    fid = fid_name(scores) or "fid…"
    kid = fid.replace("fid", "kid", 1)
    keys = {fid: ("number", True), f"{kid}_mean": ("number", True), **SCORES_KEYS}
    for estimate in (fid, f"{fid}_inf"):  # FID_N and FID_∞ with their bootstrap sd and interval, all together
        spread = [f"{estimate}_{x}" for x in ("sd", "ci_low", "ci_high")]
        together = any(k in scores for k in spread)
        keys |= {k: ("number", together or k == fid) for k in (estimate, *spread)}
    keys |= {f"{kid}_{x}": ("number", False) for x in ("se", "holdout_mean", "holdout_se")}
    likelihood = "nll_bpd" in scores
    return keys | {k: (SCORES_KEYS[k][0], likelihood) for k in ("nll_images", "nll_variance", "nll_clip_mode")}


def fid_name(keys: Iterable[str]) -> str | None:
    """fid, or fid_<extractor> for a stand-in: the shortest name starting with fid, as every other
    (fid_sd, fid_inf, fid_ddim10, …) extends it."""
    return min((k for k in keys if k.startswith("fid")), key=len, default=None)
