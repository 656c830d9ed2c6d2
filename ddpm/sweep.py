"""The sweep stage (`ddpm sweep`): FID (or its stand-in) against the number of network evaluations
(NFE), each of sweep.samplers (DDIM, DPM-Solver++) at each of sweep.steps with sample.spacing, and
DDPM at full length, scored as ddpm.evaluate scores, each point with its bootstrap SD and labelled with
its N (by default the main evaluation's sample count). The DDPM point scores the sample stage's samples
where they were drawn exactly as it would draw them.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm.checkpoint import Trained, load_trained
from ddpm.config import Config, EvaluateConfig, SampleConfig, SweepConfig
from ddpm.data import load_images
from ddpm.errors import UserError
from ddpm.features import extract_features, load_extractor, real_features
from ddpm.files import folder_lock, sha256_hex, write_json
from ddpm.layout import RunFolder
from ddpm.metrics import fid_bootstrap, frechet_distance
from ddpm.origin import check_samples, read_origin
from ddpm.sample import check_learned_variance, generate
from ddpm.spacing import SAMPLER_NAMES, SPACINGS, timesteps


def sweep(
    cfg: SweepConfig,
    sample: SampleConfig,
    evaluate_cfg: EvaluateConfig,
    trained: Trained,
    real_path: Path,
    cache_dir: Path,
    device: torch.device,
    progress: bool = True,
    ready: Callable[[], None] | None = None,
    drawn: np.ndarray | None = None,
) -> dict[str, Any]:
    """FID (or its stand-in) of N = `sweep_count` images drawn with each of sweep.samplers at each of
    sweep.steps and with DDPM at full length, every other sampler setting (spacing included) sample.*'s,
    scored as `evaluate` scores, each with its bootstrap standard deviation (evaluate.bootstrap
    resamples; 0: none); what sweep.json holds: a table {NFE: score} per sampler, under its name.
    `drawn`: the sample stage's DDPM samples (`reusable_samples`), scored instead of drawing them again.
    `ready` is called once the inputs are checked, before the work."""
    count = sweep_count(cfg, sample)
    check_sweep(cfg, sample, trained, real_path)
    length = trained.diffusion.num_timesteps
    extractor = load_extractor(evaluate_cfg, device)
    if ready:
        ready()
    digest = sha256_hex(real_path)
    real_f, _ = real_features(extractor, real_path, digest, evaluate_cfg.batch_size, cache_dir, device, progress)

    def score(sampler: str, steps: int, images: np.ndarray | None = None) -> tuple[float, float | None]:
        """FID and its bootstrap SD (None without resamples) of `images`, or of images drawn here."""
        if images is None:
            settings = sample.model_copy(update={"sampler": sampler, "steps": steps, "num_samples": count})
            images = generate(trained.model, trained.diffusion, settings, trained.image_size, device, progress)[0]
            images = images.numpy()
        fake = extract_features(extractor, images, evaluate_cfg.batch_size, device, "features", progress)
        if not evaluate_cfg.bootstrap:
            return frechet_distance(real_f, fake), None
        resampled = fid_bootstrap(real_f.to(device), fake.to(device), evaluate_cfg.bootstrap)  # as `evaluate` does
        return frechet_distance(real_f, fake), float(resampled.std())

    # one table per sampler, {NFE: score}, in sweep.samplers' order, then DDPM at T
    scored = {sampler: {str(k): score(sampler, k) for k in cfg.steps} for sampler in cfg.samplers}
    scored["ddpm"] = {str(length): score("ddpm", length, drawn)}
    tables = {sampler: {k: fid for k, (fid, _) in points.items()} for sampler, points in scored.items()}
    if evaluate_cfg.bootstrap:
        tables |= {f"{sampler}_sd": {k: sd for k, (_, sd) in points.items()} for sampler, points in scored.items()}
        tables["bootstrap"] = evaluate_cfg.bootstrap
    return {
        "metric": f"fid{extractor.suffix}", "samplers": list(cfg.samplers), "spacing": sample.spacing, **tables,
        "clip_mode": sample.clip_mode,
        "num_samples": count, "ddpm_reused": drawn is not None,
        "eta": sample.eta, "variance": sample.variance, "seed": sample.seed,
        "num_real": int(real_f.shape[0]), "real_sha256": digest, "feature_extractor": extractor.name,
        "weights_sha256": extractor.weights_sha256, "resize": extractor.resize,
    }  # fmt: skip


def sweep_count(cfg: SweepConfig, sample: SampleConfig) -> int:
    """N, the sweep's samples per point: sweep.num_samples, or (null) the main evaluation's
    sample.num_samples, so that the sweep's FIDs and the table's have the same bias (FID_N falls with N)."""
    return cfg.num_samples or sample.num_samples


# The sample settings that decide the sample stage's DDPM samples, bit for bit: the same model
# (checkpoint_sha256), these, and sampler ddpm mean the sweep's DDPM point would draw the same images.
REUSED_SETTINGS = ("variance", "seed", "batch_size", "precision", "clip_mode", "num_samples")


def reusable_samples(checkpoint: Path, sample: SampleConfig, count: int) -> np.ndarray | None:
    """The sample stage's samples beside `checkpoint` (samples/samples.npy, checked against its
    samples.json), where they are what the sweep's DDPM point would draw: DDPM, by this checkpoint
    (its sha256), with `count` samples and sample.*'s other REUSED_SETTINGS; None otherwise."""
    samples = RunFolder(checkpoint.parent).samples_array
    drawn = read_origin(samples) if samples.is_file() else None
    wanted = sample.model_dump(mode="json") | {"sampler": "ddpm", "num_samples": count}
    if drawn is None or drawn.get("checkpoint_sha256") != sha256_hex(checkpoint):
        return None
    if any(drawn["sample"].get(key) != wanted[key] for key in ("sampler", *REUSED_SETTINGS)):
        return None
    images = load_images(samples)
    check_samples(samples, drawn, images)
    return images


def check_sweep(cfg: SweepConfig, sample: SampleConfig, trained: Trained, real_path: Path) -> None:
    """One line, before any work, for what would end a sweep after its sampling: a count of samples
    without a covariance, more steps than the model has, a step count that a sampler cannot take with
    sample.spacing (ddpm.spacing.timesteps: rounding repeats a timestep), real images missing or of
    another size, a sampler that has no such spacing."""
    count = sweep_count(cfg, sample)
    if count < 2:
        key = "sweep.num_samples" if cfg.num_samples else "sample.num_samples (sweep.num_samples: null)"
        raise UserError(f"{key}: {count} image per step count gives FID no covariance; expected at least 2")
    length = trained.diffusion.num_timesteps
    too_many = [k for k in cfg.steps if k > length]
    if too_many:
        raise UserError(f"sweep.steps: {too_many} exceed the model's {length} timesteps ({trained.path})")
    for sampler in cfg.samplers:
        check_learned_variance(sample.model_copy(update={"sampler": sampler}), trained.diffusion, str(trained.path))
        if sample.spacing not in SPACINGS[sampler]:
            having = ",".join(s for s in cfg.samplers if sample.spacing in SPACINGS[s])
            raise UserError(f"sweep.samplers: {SAMPLER_NAMES[sampler]} has no {sample.spacing} spacing "
                            f"(sample.spacing); expected one of: {', '.join(SPACINGS[sampler])}, or sweep only "
                            f"the samplers that have it (--set 'sweep.samplers=[{having}]')")  # fmt: skip
        for k in cfg.steps:
            try:
                timesteps(sampler, sample.spacing, k, length)
            except ValueError as e:
                raise UserError(f"sweep.steps: {SAMPLER_NAMES[sampler]} at {k} NFE with sample.spacing "
                                f"{sample.spacing} ({trained.path}): {e}") from None  # fmt: skip
    real, size = load_images(real_path), trained.image_size
    if real.shape[2:] != (size, size):
        raise UserError(
            f"{real_path}: real images are {real.shape[3]}×{real.shape[2]}, but the model ({trained.path}) makes "
            f"{size}×{size}; give the images it was trained on (--data)"
        )
    if len(real) < 2:
        raise UserError(f"{real_path}: {len(real)} real image; FID needs at least 2")


def sweep_stage(
    config: Config, checkpoint: Path, data: Path, out: Path | None, cache_dir: Path, device: torch.device
) -> tuple[dict[str, Any], Path]:
    """`ddpm sweep`: `sweep` of the model at `checkpoint` into `out` (default: sweep.json beside it)
    and its MLflow child run, its DDPM point the sample stage's samples where they fit
    (`reusable_samples`); returns sweep.json's content and its path."""
    from ddpm.tracking import session, sweep_run

    out = out or RunFolder(checkpoint.parent).sweep
    trained = load_trained(checkpoint, device)
    drawn = reusable_samples(checkpoint, config.sample, sweep_count(config.sweep, config.sample))
    with folder_lock(out.parent), session(config.tracking, checkpoint.parent) as tracked:
        results = sweep(config.sweep, config.sample, config.evaluate, trained, data, cache_dir, device,
                        ready=tracked.open, drawn=drawn)  # fmt: skip
        results["checkpoint_sha256"] = sha256_hex(checkpoint)
        write_json(out, results)
        if tracked.store:
            sweep_run(tracked.store, trained, config, results, out)
    return results, out


def sweep_summary(results: dict[str, Any], out: Path) -> str:
    """What `ddpm sweep` prints: each sampler's score at each NFE, ± its bootstrap SD, and its N."""

    def shown(sampler: str) -> str:
        spread = results.get(f"{sampler}_sd", {})
        points = [f"{k}: {v:.4g}" + (f" ± {spread[k]:.2g}" if k in spread else "") for k, v in results[sampler].items()]
        return f"{SAMPLER_NAMES[sampler]} " + ", ".join(points)

    reused = " (the sample stage's samples)" if results.get("ddpm_reused") else ""
    tables = "; ".join([shown(s) for s in results["samplers"]] + [shown("ddpm") + reused])
    return (f"{results['metric']} (N = {results['num_samples']:,}, {results['spacing']} spacing) by NFE: {tables}: "
            f"{out}")  # fmt: skip
