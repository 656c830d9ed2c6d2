"""The evaluation stages: FID (with a bootstrap interval) and KID of generated samples against the
prepared real images (`evaluate`), the likelihood bound in bits/dim on held-out images
(`likelihood`, the math in ddpm.diffusion), and FID against the number of sampling steps (`sweep`).
The features come from ddpm.features, the statistics from ddpm.metrics (float64); the KID subsets
and the bootstrap resamples are drawn from fixed seeds, so the same images give the same numbers.
"""

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm.checkpoint import Trained, load_trained
from ddpm.config import Config, EvaluateConfig, SampleConfig, SweepConfig
from ddpm.data import load_images, to_unit_range
from ddpm.errors import UserError
from ddpm.fastpath import FastPath
from ddpm.features import extract_features, load_extractor, real_features
from ddpm.files import atomic_outputs, folder_lock, sha256_hex, write_json
from ddpm.layout import MODEL, NLL_TERMS, SAMPLES_ORIGIN, RunFolder, run_folder_of
from ddpm.metrics import fid_basic_interval, fid_bootstrap, frechet_distance, kernel_distance_subsets
from ddpm.origin import check_samples, read_origin
from ddpm.sample import generate


def evaluate(
    cfg: EvaluateConfig,
    samples_path: Path,
    real_path: Path,
    cache_dir: Path,
    device: torch.device,
    progress: bool = True,
    ready: Callable[[], None] | None = None,
) -> tuple[dict[str, Any], bool]:
    """FID (with its 95 % bootstrap interval where evaluate.bootstrap > 0) and KID of the samples at
    `samples_path` against the prepared images at `real_path`;
    the metrics (numbers and what they were measured with) and whether the real features were cached.
    `ready` is called once the inputs are checked, before the work (the CLI opens MLflow there)."""
    fake, real = load_images(samples_path), load_images(real_path)
    if fake.shape[1:] != real.shape[1:]:
        raise UserError(
            f"{samples_path}: samples are {fake.shape[3]}×{fake.shape[2]}, but the real images ({real_path}) are "
            f"{real.shape[3]}×{real.shape[2]}; evaluate samples of a model trained on these images"
        )
    for path, images in ((samples_path, fake), (real_path, real)):
        if len(images) < max(2, cfg.kid_subset_size):
            raise UserError(
                f"{path}: {len(images)} images, fewer than evaluate.kid_subset_size = {cfg.kid_subset_size} "
                "(and FID needs at least 2); draw more samples (sample.num_samples) or lower evaluate.kid_subset_size"
            )
    extractor = load_extractor(cfg, device)
    if ready:
        ready()
    digest = sha256_hex(real_path)
    real_f, cached = real_features(extractor, real_path, digest, cfg.batch_size, cache_dir, device, progress)
    fake_f = extract_features(extractor, fake, cfg.batch_size, device, "features samples", progress)
    kid_mean, kid_std = kernel_distance_subsets(real_f, fake_f, cfg.kid_subsets, cfg.kid_subset_size)
    s = extractor.suffix
    fid = frechet_distance(real_f, fake_f)
    interval = {}
    if cfg.bootstrap:
        # on the device: 200 products and eigenvalue problems of 2048² take seconds on a GPU, minutes on a CPU
        resampled = fid_bootstrap(real_f.to(device), fake_f.to(device), cfg.bootstrap)
        low, high = fid_basic_interval(fid, resampled.cpu())
        interval = {f"fid{s}_ci_low": low, f"fid{s}_ci_high": high, "bootstrap": cfg.bootstrap}
    metrics = {
        f"fid{s}": fid,
        **interval,
        f"kid{s}_mean": kid_mean,
        f"kid{s}_std": kid_std,
        "num_samples": len(fake),
        "num_real": len(real),
        "real_sha256": digest,
        "feature_extractor": extractor.name,
        "feature_dim": int(real_f.shape[1]),
        "weights": extractor.source,
        "weights_sha256": extractor.weights_sha256,
        "resize": extractor.resize,
    }
    return metrics, cached


# --- the likelihood bound on held-out images ---------------------------------------------------------


def likelihood(
    cfg: EvaluateConfig, sample: SampleConfig, trained: Trained, holdout_path: Path, device: torch.device
) -> tuple[dict[str, Any], np.ndarray]:
    """The variational bound (Ho et al. eq. 5) of the model in `trained` on the first evaluate.nll_images
    held-out images, in bits/dim: the metrics, and each timestep's term averaged over the images (T,),
    the paper's t = 1 (the decoder L_0) first. The UNet runs as in sampling (sample.precision,
    sample.channels_last), in batches of sample.batch_size (image, timestep) pairs, clipping the
    predicted x_0 where sample.clip_denoised says so; the noise is drawn from a generator seeded 0."""
    holdout = held_out(holdout_path, cfg.nll_images)
    if holdout.shape[1:] != (3, trained.image_size, trained.image_size):
        raise UserError(
            f"{holdout_path}: held-out images are {holdout.shape[3]}×{holdout.shape[2]}, but the model "
            f"({trained.path}) makes {trained.image_size}×{trained.image_size}; prepare the data it was trained on"
        )
    x0 = to_unit_range(torch.from_numpy(np.array(holdout[: cfg.nll_images]))).to(device)
    fast = FastPath.resolve(sample, device)
    network = fast.place(trained.model)

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with fast.autocast(device):
            return network(fast.memory_format(x_t), t)

    generator = torch.Generator(device).manual_seed(0)
    bound = trained.diffusion.nll_bpd(model, x0, cfg.nll_variance, sample.clip_denoised, generator, sample.batch_size)
    total = bound.total.double().cpu()
    metrics = {
        "nll_bpd": float(total.mean()),
        "nll_bpd_sem": float(total.std() / len(total) ** 0.5) if len(total) > 1 else 0.0,  # standard error
        "nll_prior_bpd": float(bound.prior.double().mean()),
        "nll_images": len(total),
        "nll_variance": cfg.nll_variance,
        "nll_clip_denoised": sample.clip_denoised,
        "holdout_sha256": sha256_hex(holdout_path),
    }
    return metrics, bound.terms.double().mean(0).cpu().numpy()


def held_out(path: Path, wanted: int) -> np.ndarray:
    """The held-out images at `path`, at least `wanted` of them; a one-line error otherwise."""
    if not path.is_file():
        raise UserError(f"{path}: not found; `ddpm prepare` writes the held-out images there (data.holdout), "
                        "or set evaluate.nll_images: 0 to skip the likelihood")  # fmt: skip
    try:  # counted first: load_images refuses an empty file (data.holdout: 0) in words about images in general
        count = len(np.load(path, mmap_mode="r", allow_pickle=False))
    except (ValueError, OSError, TypeError, EOFError):
        count = wanted  # not a plain array: load_images says what is wrong with it
    if count < wanted:
        raise UserError(
            f"{path}: {count} held-out images, fewer than evaluate.nll_images = {wanted}; raise data.holdout "
            "and run `ddpm prepare` again, or lower evaluate.nll_images (0 skips the likelihood)"
        )
    return load_images(path)


# --- FID against the number of sampling steps --------------------------------------------------------


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


# --- the stages ------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """What `ddpm evaluate` measured: eval.json's content, where it went, and whether the real
    images' features came from the cache."""

    metrics: dict[str, Any]
    out: Path
    cached: bool

    def summary(self) -> str:
        """What `ddpm evaluate` prints: the scores, and what they were measured with."""
        m = self.metrics
        shown = ("fid", "kid", "nll_bpd")
        scores = ", ".join(f"{k} {v:.4g}" for k, v in m.items() if k.startswith(shown) and isinstance(v, float))
        real = "from the cache" if self.cached else "computed and cached"
        counts = f"{m['num_samples']} samples, {m['feature_extractor']} features; real features {real}"
        return f"{scores} ({counts}): {self.out}"


def stage(
    config: Config, samples: Path, checkpoint: Path | None, data: Path, holdout: Path, out: Path | None,
    cache_dir: Path, device: torch.device,
) -> Evaluation:  # fmt: skip
    """`ddpm evaluate`: FID, KID and (with evaluate.nll_images) the likelihood of the model that drew
    `samples` (samples.json names it, or `checkpoint`), into `out` (default: eval.json in the
    samples' run folder, `layout.run_folder_of`) and nll_terms.csv beside it, and into their MLflow
    child run. Where the scores go is the arguments' choice: samples.json only has to agree with it."""
    from ddpm.tracking import log_evaluation, note, session

    images = load_images(samples)
    drawn = read_origin(samples)  # the model and settings that drew them, where `ddpm sample` did
    out = out or RunFolder(run_folder_of(samples)).eval_metrics
    checkpoint = _scored_model(samples, drawn, checkpoint, out)
    samples_sha256 = check_samples(samples, drawn, images) if drawn else sha256_hex(samples)
    trained = _likelihood_model(config.evaluate, samples, checkpoint, holdout, device)
    kept = checkpoint.parent if checkpoint else out.parent  # where MLflow writes that must wait are kept
    with folder_lock(out.parent), session(config.tracking, kept) as tracked:
        metrics, cached = evaluate(config.evaluate, samples, data, cache_dir, device, ready=tracked.open)
        metrics["samples_sha256"] = samples_sha256  # so that compare never pairs these with other samples
        if checkpoint is not None and checkpoint.is_file():  # nor with another model
            metrics["checkpoint_sha256"] = sha256_hex(checkpoint)
        terms = []  # without the likelihood, a header alone: the file the pipeline expects is there
        if trained:
            bound, terms = likelihood(config.evaluate, config.sample, trained, holdout, device)
            metrics |= bound
        write_scores(metrics, terms, out)
        if tracked.store and drawn:
            log_evaluation(tracked.store, drawn, config.evaluate.model_dump(mode="json"), metrics, samples.parent, out)
        elif tracked.store:
            note(f"{samples} has no {samples.parent / SAMPLES_ORIGIN} (`ddpm sample` did not draw them here), "
                 f"so its scores go to {out} only, not to MLflow")  # fmt: skip
    return Evaluation(metrics, out, cached)


def _scored_model(samples: Path, drawn: dict[str, Any] | None, checkpoint: Path | None, out: Path) -> Path | None:
    """The model these scores are of: `checkpoint` (--checkpoint) or the one samples.json (`drawn`)
    names, which must agree; and never another one than the model beside `out` (its run folder's),
    so that a samples.json can never send scores into another run's eval.json."""
    named = Path(drawn["checkpoint"]) if drawn else None
    origin = samples.parent / SAMPLES_ORIGIN
    if checkpoint and named and checkpoint.resolve() != named.resolve():
        raise UserError(f"--checkpoint {checkpoint}: {origin} says {named} drew these samples; give that checkpoint, "
                        "or leave --checkpoint out")  # fmt: skip
    model, beside = checkpoint or named, out.parent / MODEL
    if model is None or not beside.is_file() or model.resolve() == beside.resolve():
        return model
    elsewhere = f"their scores would go to {out}, beside another model ({beside})"
    if checkpoint:
        raise UserError(f"--checkpoint {checkpoint}: {elsewhere}; give --out for them")
    raise UserError(f"{origin}: says {named} drew these samples, but {elsewhere}; draw that model's samples "
                    f"(`ddpm sample --checkpoint {beside}`), or give --out")  # fmt: skip


def write_scores(metrics: dict[str, Any], terms: np.ndarray | list[float], out: Path) -> None:
    """eval.json (`metrics`) and the bound's per-timestep terms in nll_terms.csv beside it, as one set,
    eval.json recording the sha256 of the terms it goes with (compare checks it). The terms as CSV:
    t (the paper's, 1 = the decoder L_0), bits/dim; no terms, the header alone."""
    rows = "".join(f"{t},{v!r}\n" for t, v in enumerate(np.asarray(terms).tolist(), start=1))
    table = f"t,bpd\n{rows}".encode()  # encoded first, so that a full disk says the whole size
    metrics["nll_terms_sha256"] = hashlib.sha256(table).hexdigest()
    scores = (json.dumps(metrics, indent=2) + "\n").encode()
    with atomic_outputs() as output:
        output(out.parent / NLL_TERMS, len(table)).write_bytes(table)
        output(out, len(scores)).write_bytes(scores)


def _likelihood_model(
    cfg: EvaluateConfig, samples: Path, checkpoint: Path | None, holdout: Path, device: torch.device
) -> Trained | None:
    """The model whose likelihood is measured, with the held-out images checked before the work;
    None where evaluate.nll_images is 0."""
    if not cfg.nll_images:
        return None
    if checkpoint is None:
        raise UserError(f"evaluate.nll_images: the likelihood needs the model, and {samples} has no "
                        f"{SAMPLES_ORIGIN} naming it; give --checkpoint, or set evaluate.nll_images: 0")  # fmt: skip
    trained = load_trained(checkpoint, device)
    held_out(holdout, cfg.nll_images)
    return trained


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
