"""The sweep stage (`ddpm sweep`): FID (or its stand-in) against the number of sampling steps, DDIM
at each of sweep.steps and DDPM at full length, scored as ddpm.evaluate scores.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ddpm.checkpoint import Trained, load_trained
from ddpm.config import Config, EvaluateConfig, SampleConfig, SweepConfig
from ddpm.data import load_images
from ddpm.errors import UserError
from ddpm.features import extract_features, load_extractor, real_features
from ddpm.files import folder_lock, sha256_hex, write_json
from ddpm.layout import RunFolder
from ddpm.metrics import frechet_distance
from ddpm.sample import generate


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
) -> dict[str, Any]:
    """FID (or its stand-in) of sweep.num_samples images drawn with DDIM at each of sweep.steps and with
    DDPM at full length, every other sampler setting sample.*'s, scored as `evaluate` scores; what
    sweep.json holds. `ready` is called once the inputs are checked, before the work."""
    check_sweep(cfg, trained, real_path)
    timesteps = trained.diffusion.num_timesteps
    extractor = load_extractor(evaluate_cfg, device)
    if ready:
        ready()
    digest = sha256_hex(real_path)
    real_f, _ = real_features(extractor, real_path, digest, evaluate_cfg.batch_size, cache_dir, device, progress)
    fid = f"fid{extractor.suffix}"

    def score(sampler: str, steps: int) -> float:
        settings = sample.model_copy(update={"sampler": sampler, "ddim_steps": steps, "num_samples": cfg.num_samples})
        images, _ = generate(trained.model, trained.diffusion, settings, trained.image_size, device, progress)
        fake = extract_features(extractor, images.numpy(), evaluate_cfg.batch_size, device, "features", progress)
        return frechet_distance(real_f, fake)

    return {
        "metric": fid,
        "ddim": {str(k): score("ddim", k) for k in cfg.steps},
        "ddpm": {str(timesteps): score("ddpm", timesteps)},
        "num_samples": cfg.num_samples, "eta": sample.eta, "variance": sample.variance, "seed": sample.seed,
        "num_real": int(real_f.shape[0]), "real_sha256": digest, "feature_extractor": extractor.name,
        "weights_sha256": extractor.weights_sha256, "resize": extractor.resize,
    }  # fmt: skip


def check_sweep(cfg: SweepConfig, trained: Trained, real_path: Path) -> None:
    """One line, before any work, for what would end a sweep after its sampling: a count of samples
    without a covariance, more steps than the model has, real images missing or of another size."""
    if cfg.num_samples < 2:
        raise UserError(f"sweep.num_samples: {cfg.num_samples} image per step count gives FID no covariance; "
                        "expected at least 2")  # fmt: skip
    timesteps = trained.diffusion.num_timesteps
    too_many = [k for k in cfg.steps if k > timesteps]
    if too_many:
        raise UserError(f"sweep.steps: {too_many} exceed the model's {timesteps} timesteps ({trained.path})")
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
    and its MLflow child run; returns sweep.json's content and its path."""
    from ddpm.tracking import session, sweep_run

    out = out or RunFolder(checkpoint.parent).sweep
    trained = load_trained(checkpoint, device)
    with folder_lock(out.parent), session(config.tracking, checkpoint.parent) as tracked:
        results = sweep(config.sweep, config.sample, config.evaluate, trained, data, cache_dir, device,
                        ready=tracked.open)  # fmt: skip
        results["checkpoint_sha256"] = sha256_hex(checkpoint)
        write_json(out, results)
        if tracked.store:
            sweep_run(tracked.store, trained, config, results, out)
    return results, out


def sweep_summary(results: dict[str, Any], out: Path) -> str:
    """What `ddpm sweep` prints: the score at each number of steps."""
    shown = [f"DDIM {k}: {v:.4g}" for k, v in results["ddim"].items()]
    shown += [f"DDPM {k}: {v:.4g}" for k, v in results["ddpm"].items()]
    return f"{results['metric']} by sampling steps ({results['num_samples']} samples each): {', '.join(shown)}: {out}"
