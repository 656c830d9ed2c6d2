"""The diffusion process of a diffusers model folder, from its scheduler config: which named schedule, how
many timesteps, what the UNet predicts, zero terminal SNR and the variance type (`ddpm import diffusers`).
Only what defines the forward process is read; how to sample is ddpm's sample.*. Also the JSON reading
and value checks that ddpm.convert shares.
"""

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ddpm.errors import UserError
from ddpm.schedules import beta_schedule

# diffusers' beta_schedule → ddpm's schedule of the same betas (linear ones checked for their ends)
SCHEDULES = {"linear": "linear", "scaled_linear": "quadratic", "squaredcos_cap_v2": "cosine"}
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
# diffusers' variance_type → ddpm's diffusion.variance; "learned" (an unbounded log-variance) has none
VARIANCES = {"fixed_small": "fixed", "fixed_small_log": "fixed", "fixed_large": "fixed", "fixed_large_log": "fixed",
             "learned_range": "learned_range"}  # fmt: skip
# The schedulers whose betas come from beta_schedule, beta_start and beta_end as DDPMScheduler's do
# (tests/test_convert.py compares them); others (KarrasVeScheduler, flow matching, ...) have no betas.
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
              "DPMSolverSinglestepScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler",
              "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
              "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler")  # fmt: skip
MAX_TIMESTEPS = 100_000  # num_train_timesteps: sets the schedule's length


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object at `path`; a one-line error where it is unreadable or not an object."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(content, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(content).__name__}")
    return content


def shown(value: Any) -> str:
    """`value` as the JSON file has it, cut short for a one-line message."""
    text = json.dumps(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def count_in(low: int, high: int) -> Callable[[Any], bool]:
    """A test for an integer (not a bool) from `low` to `high`."""
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def finite(value: Any) -> bool:
    """Whether `value` is a finite number (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def diffusion_process(folder: Path) -> tuple[dict[str, Any], Path]:
    """The checkpoint's `diffusion` entry from the scheduler config beside `folder` or in ../scheduler/,
    and that file. Only what defines the forward process is read; how to sample is ddpm's sample.*."""
    candidates = [folder / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise UserError(f"{folder}: no scheduler config ({' or '.join(map(str, candidates))}); "
                        "it says which beta schedule the model was trained with")  # fmt: skip
    c = read_json(path)
    kind = c.get("_class_name", "DDPMScheduler")
    if kind not in SCHEDULERS:
        raise UserError(f"{path}: _class_name = {shown(kind)}; expected a scheduler whose betas come from "
                        f"beta_schedule ({', '.join(SCHEDULERS[:3])}, ...)")  # fmt: skip
    timesteps, name = c.get("num_train_timesteps", 1000), c.get("beta_schedule", "linear")
    if c.get("trained_betas") is not None:
        raise UserError(f"{path}: trained_betas = {shown(c['trained_betas'])}; ddpm computes its betas from a "
                        "named schedule")  # fmt: skip
    zero_terminal_snr = c.get("rescale_betas_zero_snr", False)
    if not isinstance(zero_terminal_snr, bool):
        raise UserError(f"{path}: rescale_betas_zero_snr = {shown(zero_terminal_snr)}; expected true or false")
    if not isinstance(name, str) or name not in SCHEDULES:
        raise UserError(f"{path}: beta_schedule = {shown(name)}; ddpm imports {', '.join(SCHEDULES)} only")
    if not count_in(2, MAX_TIMESTEPS)(timesteps):
        raise UserError(f"{path}: num_train_timesteps = {shown(timesteps)}; expected an integer from 2 to "
                        f"{MAX_TIMESTEPS}")  # fmt: skip
    if name != "squaredcos_cap_v2":
        _check_beta_ends(c, path, SCHEDULES[name], timesteps)
    prediction = c.get("prediction_type", "epsilon")
    if not isinstance(prediction, str) or prediction not in PREDICTIONS:
        raise UserError(f"{path}: prediction_type = {shown(prediction)}; expected one of {', '.join(PREDICTIONS)}")
    if zero_terminal_snr and prediction == "epsilon":  # as the config refuses it (ddpm.config)
        raise UserError(f"{path}: rescale_betas_zero_snr = true with prediction_type = \"epsilon\": at t = T x_T "
                        "holds no signal, so x̂_0 = (x_T − eps)/0 (diffusers PR #3664's black images)")  # fmt: skip
    variance = c.get("variance_type") or "fixed_small"  # some schedulers save null: fixed
    if not isinstance(variance, str) or variance not in VARIANCES:
        raise UserError(f"{path}: variance_type = {shown(variance)}; expected one of {', '.join(VARIANCES)}")
    schedule = SCHEDULES[name]
    beta_schedule(schedule, timesteps)  # a schedule that cannot be built at this T raises here, not at sampling
    process = {"schedule": schedule, "timesteps": timesteps, "prediction": PREDICTIONS[prediction]}
    return {
        **process,
        "zero_terminal_snr": zero_terminal_snr,
        "input_scale": 1.0,
        "variance": VARIANCES[variance],
    }, path


def _check_beta_ends(c: dict[str, Any], path: Path, schedule: str, timesteps: int) -> None:
    """ddpm's linear and quadratic schedules run from 1e-4 to 0.02, scaled by 1000/T: the config's
    beta_start and beta_end must be those."""
    ends = (c.get("beta_start", 0.0001), c.get("beta_end", 0.02))
    for key, value in zip(("beta_start", "beta_end"), ends, strict=True):
        if not finite(value):
            raise UserError(f"{path}: {key} = {shown(value)}; expected a finite number")
    expected = (1e-4 * 1000 / timesteps, 0.02 * 1000 / timesteps)
    if any(abs(a - b) > 1e-9 * b for a, b in zip(ends, expected, strict=True)):
        raise UserError(f"{path}: beta_start, beta_end = {ends[0]}, {ends[1]}; ddpm's {schedule} schedule "
                        f"at T = {timesteps} runs from {expected[0]:.6g} to {expected[1]:.6g}")  # fmt: skip
