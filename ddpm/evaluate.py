"""The evaluation stages: FID (with a bootstrap interval) and KID of generated samples against the
prepared real images (`evaluate`), the likelihood bound in bits/dim on held-out images
(`likelihood`, the math in ddpm.diffusion); FID against the number of sampling steps is ddpm.sweep.
The features come from ddpm.features, the statistics from ddpm.metrics (float64); the KID subsets
and the bootstrap resamples are drawn from fixed seeds, so the same images give the same numbers.
"""

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ddpm.checkpoint import Trained, load_checkpoint, load_trained
from ddpm.config import Config, EvaluateConfig, SampleConfig
from ddpm.data import load_images, to_unit_range
from ddpm.errors import UserError
from ddpm.estimates import estimates
from ddpm.fastpath import FastPath
from ddpm.features import extract_features, load_extractor, real_features
from ddpm.files import atomic_outputs, folder_lock, sha256_hex
from ddpm.layout import MODEL, NLL_TERMS, RESAMPLES, SAMPLES_ORIGIN, RunFolder, run_folder_of
from ddpm.memorization import measure, trained_with_flips
from ddpm.metrics import FID_INF_SIZES
from ddpm.origin import check_samples, read_origin


def evaluate(
    cfg: EvaluateConfig,
    samples_path: Path,
    real_path: Path,
    holdout_path: Path,
    cache_dir: Path,
    device: torch.device,
    progress: bool = True,
    ready: Callable[[], None] | None = None,
    mirrored: bool = True,
) -> tuple[dict[str, Any], dict[str, np.ndarray], bool]:
    """FID_N, FID_∞ and KID (ddpm.estimates) of the samples at `samples_path` against the prepared
    images at `real_path`, and KID against the held-out images at `holdout_path` where there are at
    least 2 of them: the metrics (numbers and what they were measured with), each bootstrapped
    score's values over the evaluate.bootstrap resamples, and whether the real features were cached.
    `ready` is called once the inputs are checked, before the work (the CLI opens MLflow there);
    `mirrored`: the model trained with flips, so mirrors of training images count as them (ddpm.memorization)."""
    fake, real = load_images(samples_path), load_images(real_path)
    _check_inputs(samples_path, fake, real_path, real)
    holdout = _holdout_images(holdout_path, fake.shape[1:])
    extractor = load_extractor(cfg, device)
    if ready:
        ready()
    digest = sha256_hex(real_path)
    real_f, cached = real_features(extractor, real_path, digest, cfg.batch_size, cache_dir, device, progress)
    holdout_f = None
    if holdout:  # cached as the training images' are, by the file's sha256
        holdout_f, _ = real_features(
            extractor, holdout, sha256_hex(holdout), cfg.batch_size, cache_dir, device, progress
        )
    fake_f = extract_features(extractor, fake, cfg.batch_size, device, "features samples", progress)
    metrics, draws = estimates(real_f, fake_f, holdout_f, extractor.suffix, cfg.bootstrap, device)
    metrics |= {
        "num_samples": len(fake),
        "num_real": len(real),
        "real_sha256": digest,
        "feature_extractor": extractor.name,
        "feature_dim": int(real_f.shape[1]),
        "weights": extractor.source,
        "weights_sha256": extractor.weights_sha256,
        "resize": extractor.resize,
        **measure(fake, real, fake_f, real_f, device, mirrored),  # how near the samples lie to the training images
    }
    return metrics, draws, cached


def _check_inputs(samples_path: Path, fake: np.ndarray, real_path: Path, real: np.ndarray) -> None:
    """One line for samples and real images of different sizes, or fewer than 2 of either: FID needs a
    covariance, KID a pair. (FID_∞ needs 10 samples; with fewer, eval.json has none, and says so.)"""
    if fake.shape[1:] != real.shape[1:]:
        raise UserError(
            f"{samples_path}: samples are {fake.shape[3]}×{fake.shape[2]}, but the real images ({real_path}) are "
            f"{real.shape[3]}×{real.shape[2]}; evaluate samples of a model trained on these images"
        )
    if len(fake) < 2:
        raise UserError(f"{samples_path}: {len(fake)} sample; FID and KID need at least 2 (sample.num_samples)")
    if len(real) < 2:
        raise UserError(f"{real_path}: {len(real)} real image; FID and KID need at least 2")


def _holdout_images(path: Path, shape: tuple[int, ...]) -> Path | None:
    """The held-out images for KID against images training never saw: `path` where it holds at least
    2 images of the samples' `shape`; None where there is no such file or fewer than 2 (data.holdout
    below 2), and then eval.json has no kid_holdout (the report says so)."""
    if not path.is_file():
        return None
    try:
        held = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise UserError(
            f"{path}: the held-out images cannot be read as a .npy array; run `ddpm prepare` again"
        ) from None
    if held.ndim and len(held) < 2:
        return None
    if held.shape[1:] != shape:  # load_images would say what else is wrong with the file
        raise UserError(f"{path}: held-out images of shape {held.shape[1:]}, but the samples are {shape}; "
                        "run `ddpm prepare` for the data the model was trained on")  # fmt: skip
    return path


# --- the likelihood bound on held-out images ---------------------------------------------------------


def likelihood(
    cfg: EvaluateConfig, sample: SampleConfig, trained: Trained, holdout_path: Path, device: torch.device
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The variational bound (Ho et al. eq. 5) of the model in `trained` on the held-out images (all,
    or the first evaluate.nll_images), in bits/dim: the metrics, each timestep's term averaged over the
    images (T,), the paper's t = 1 (the decoder L_0) first, and each image's bound (M,), in the file's
    order. The UNet runs in float32 whatever sample.precision says: for the linear schedule (T = 1000,
    fixed_small) a unit of ε mean-squared error at every step adds 14.7 bits/dim to the sum, so bf16's
    rounding of ε would move the bound, not only the samples. It runs in
    sample.channels_last's layout, in batches of sample.batch_size (image, timestep) pairs, clipping
    the predicted x_0 as sample.clip_mode says; the noise is drawn from a generator seeded 0,
    so every model meets the same images and the same noise (paired)."""
    holdout = held_out(holdout_path, cfg.nll_images)
    if holdout.shape[1:] != (3, trained.image_size, trained.image_size):
        raise UserError(
            f"{holdout_path}: held-out images are {holdout.shape[3]}×{holdout.shape[2]}, but the model "
            f"({trained.path}) makes {trained.image_size}×{trained.image_size}; prepare the data it was trained on"
        )
    count = len(holdout) if cfg.nll_images == "all" else cfg.nll_images
    x0 = to_unit_range(torch.from_numpy(np.array(holdout[:count]))).to(device)
    fast = FastPath.resolve(sample, device)  # its layout only: never its autocast
    network = fast.place(trained.model)

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return network(fast.memory_format(x_t), t)

    generator = torch.Generator(device).manual_seed(0)
    bound = trained.diffusion.nll_bpd(model, x0, cfg.nll_variance, sample.clip_mode, generator, sample.batch_size)
    total, terms = bound.total.double().cpu(), bound.terms.double().cpu()
    metrics = {
        "nll_bpd": float(total.mean()),
        "nll_bpd_sem": float(total.std() / len(total) ** 0.5) if len(total) > 1 else 0.0,  # standard error
        # the bound in three parts that sum to it: L_0, L_1 + ... + L_{T-1} and L_T (eq. 5)
        "nll_decoder_bpd": float(terms[:, 0].mean()),
        "nll_diffusion_bpd": float(terms[:, 1:].sum(1).mean()),
        "nll_prior_bpd": float(bound.prior.double().mean()),
        "nll_decoder_floor_bpd": trained.diffusion.decoder_floor_bpd(cfg.nll_variance),
        "nll_images": len(total),
        # a model that learned its variance is judged with it (its decoder floor is the same: at t = 0
        # both ends of the learned range are beta~ of the next step)
        "nll_variance": cfg.nll_variance if trained.diffusion.variance == "fixed" else trained.diffusion.variance,
        "nll_clip_mode": sample.clip_mode,
        "nll_precision": "fp32",
        "holdout_sha256": sha256_hex(holdout_path),
    }
    return metrics, terms.mean(0).numpy(), total.numpy()


def held_out(path: Path, wanted: int | Literal["all"]) -> np.ndarray:
    """The held-out images at `path`: at least `wanted` of them, or at least one for "all"; a one-line
    error otherwise."""
    if not path.is_file():
        raise UserError(f"{path}: not found; `ddpm prepare` writes the held-out images there (data.holdout), "
                        "or set evaluate.nll_images: 0 to skip the likelihood")  # fmt: skip
    least = 1 if wanted == "all" else wanted
    try:  # counted first: load_images refuses an empty file (data.holdout: 0) in words about images in general
        count = len(np.load(path, mmap_mode="r", allow_pickle=False))
    except (ValueError, OSError, TypeError, EOFError):
        count = least  # not a plain array: load_images says what is wrong with it
    if count < least and wanted == "all":
        raise UserError(f"{path}: no held-out images; raise data.holdout and run `ddpm prepare` again, "
                        "or set evaluate.nll_images: 0 to skip the likelihood")  # fmt: skip
    if count < least:
        raise UserError(
            f"{path}: {count} held-out images, fewer than evaluate.nll_images = {wanted}; raise data.holdout "
            "and run `ddpm prepare` again, or lower evaluate.nll_images (0 skips the likelihood)"
        )
    return load_images(path)


# --- the stages ------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """What `ddpm evaluate` measured: eval.json's content, where it went, and whether the real
    images' features came from the cache."""

    metrics: dict[str, Any]
    out: Path
    cached: bool

    def summary(self) -> str:
        """What `ddpm evaluate` prints: each score with its bootstrap SD or SE, and what they were
        measured with; without a bootstrap, the scores alone and a word that they have no SD."""
        m = self.metrics
        spreads = ("_sd", "_se", "_sem", "_ci_low", "_ci_high")  # shown beside their score, not on their own
        scores = []
        for key, value in m.items():
            if key.startswith(("fid", "kid", "nll_bpd")) and isinstance(value, float) and not key.endswith(spreads):
                scores.append(f"{key} {value:.4g}{_spread(m, key)}")
        if not m.get("bootstrap"):
            scores.append("no SDs (evaluate.bootstrap: 0)")
        if not any(k.endswith("_inf") for k in m):
            scores.append(f"no FID_∞ (it fits {FID_INF_SIZES} subset sizes of at least 2 samples)")
        real = "from the cache" if self.cached else "computed and cached"
        counts = f"{m['num_samples']} samples, {m['feature_extractor']} features; real features {real}"
        return f"{', '.join(scores)} ({counts}): {self.out}"


def _spread(metrics: dict[str, Any], key: str) -> str:
    """The SD (FID, FID_∞) or standard error (KID, bits/dim) of the score `key`, in words; none without."""
    for word, name in (("SD", f"{key}_sd"), ("SE", f"{key.removesuffix('_mean')}_se"), ("SE", f"{key}_sem")):
        if name in metrics:
            return f" ({word} {metrics[name]:.2g})"
    return ""


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
    flipped = _flipped(checkpoint)
    kept = checkpoint.parent if checkpoint else out.parent  # where MLflow writes that must wait are kept
    with folder_lock(out.parent), session(config.tracking, kept) as tracked:
        metrics, draws, cached = evaluate(
            config.evaluate, samples, data, holdout, cache_dir, device, ready=tracked.open, mirrored=flipped
        )
        metrics["samples_sha256"] = samples_sha256  # so that compare never pairs these with other samples
        if checkpoint is not None and checkpoint.is_file():  # nor with another model
            metrics["checkpoint_sha256"] = sha256_hex(checkpoint)
        terms = []  # without the likelihood, a header alone: the file the pipeline expects is there
        if trained:
            bound, terms, draws["nll_bpd"] = likelihood(config.evaluate, config.sample, trained, holdout, device)
            metrics |= bound
        write_scores(metrics, terms, draws, out)
        if tracked.store and drawn:
            log_evaluation(tracked.store, drawn, config.evaluate.model_dump(mode="json"), metrics, samples.parent, out)
        elif tracked.store:
            note(f"{samples} has no {samples.parent / SAMPLES_ORIGIN} (`ddpm sample` did not draw them here), "
                 f"so its scores go to {out} only, not to MLflow")  # fmt: skip
    return Evaluation(metrics, out, cached)


def _flipped(checkpoint: Path | None) -> bool:
    """Whether the model at `checkpoint` trained with flips (its config's train.hflip); samples without
    a model are taken to be of one that did (ddpm.memorization.trained_with_flips says why)."""
    if checkpoint is None or not checkpoint.is_file():
        return trained_with_flips(None)
    # the dict as saved, its weights mapped, not read: a model of an earlier UNet has its config too
    return trained_with_flips(load_checkpoint(checkpoint, torch.device("cpu"), mmap=True).get("config"))


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


def write_scores(
    metrics: dict[str, Any], terms: np.ndarray | list[float], draws: dict[str, np.ndarray], out: Path
) -> None:
    """eval.json (`metrics`), the bound's per-timestep terms in nll_terms.csv and the per-resample values
    `draws` in resamples.npz beside it, as one set, eval.json recording the sha256 of the files it goes
    with (compare checks them). The terms as CSV: t (the paper's, 1 = the decoder L_0), bits/dim; no
    terms, the header alone. `draws`: each score's values keyed by its eval.json name, (B,) over the
    bootstrap resamples (`ddpm.estimates`); the likelihood's per-image bits/dim go in it as `nll_bpd`.
    Without a bootstrap (and likelihood) the archive is empty, so the stage's outputs are always there."""
    rows = "".join(f"{t},{v!r}\n" for t, v in enumerate(np.asarray(terms).tolist(), start=1))
    table = f"t,bpd\n{rows}".encode()  # encoded first, so that a full disk says the whole size
    archive = io.BytesIO()
    np.savez(archive, **{key: np.asarray(values, dtype=np.float64) for key, values in draws.items()})
    resampled = archive.getvalue()
    metrics["nll_terms_sha256"] = hashlib.sha256(table).hexdigest()
    metrics["resamples_sha256"] = hashlib.sha256(resampled).hexdigest()
    scores = (json.dumps(metrics, indent=2) + "\n").encode()
    with atomic_outputs() as output:
        output(out.parent / NLL_TERMS, len(table)).write_bytes(table)
        output(out.parent / RESAMPLES, len(resampled)).write_bytes(resampled)
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
