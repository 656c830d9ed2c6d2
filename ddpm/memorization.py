"""Memorization: how close each sample lies to the training images, and whether it is a copy of one.

For each sample x, d₁ and d₂ are the Euclidean distances to its nearest and second-nearest training
image; x counts as memorized when d₁/d₂ < 1/3 (Yoon et al. 2023, "Diffusion Probabilistic Models
Generalize when They Fail to Memorize"): it lies three times closer to one training image than to any
other, so it is that image, not a mix of what the training set shows. Measured twice: in pixels, and in
the features FID was computed on.

- Pixels are uint8 values taken as floats in [0, 1] and flattened (3·H·W numbers); a distance is the
  root of the sum of squared differences of those, sqrt(Σ (a − b)²)/255.
- A model trained with flips (train.hflip: each batch image flipped left-right with probability ½)
  saw every image and its mirror, so then in pixels the distance to training image j is the smaller
  of those to j and to j mirrored; without flips a mirror is another picture than any it saw, and
  the distance is to j as stored. The features are of the images as stored (extracting the mirrors
  would run the network again).
- Training images that are identical (or, with flips, mirrors of each other) count once, as the first of them:
  d₂ is the distance to another picture, never to a copy of the nearest one, which would make every
  copy of a duplicated image look novel (d₁ = d₂). A sample at distance 0 is a copy whatever d₂ is
  (in features two different images can share a point, d₁ = d₂ = 0: still a copy).
- The distances are computed in float64, blockwise on the evaluation device, from
  ||a − b||² = ||a||² + ||b||² − 2 a·b. On the integer pixel values 0..255 every product and partial
  sum is an integer below 2⁵³, so float64 gives the squared distances exactly (an exact copy is at 0,
  not at float32's rounding of two sums of ~10⁸); float32 could not hold those sums exactly.
"""

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

RATIO = 1 / 3  # d₁/d₂ below this is a copy (Yoon et al. 2023)
CLOSEST = 8  # the closest sample–training pairs kept for the report
BLOCK = 1024  # rows per block: a block pair of 12,288 pixels holds ~0.3 GB in float64 (mirrors included)


@dataclass
class Neighbours:
    """The two nearest training images of each of N samples: distances (N, 2), d₁ ≤ d₂, float64,
    and their indices into the training images (N, 2)."""

    distances: np.ndarray
    indices: np.ndarray


def trained_with_flips(config: dict[str, Any] | None) -> bool:
    """Whether a model with the checkpoint config `config` trained on mirrors too (train.hflip). A
    config without the key is of a ddpm that always flipped; an imported model (no config) is taken
    to have flipped, as Ho et al.'s and diffusers' training scripts do by default: its weights do not
    say, and counting mirrors can only find more copies, never hide one."""
    return True if config is None else bool(config.get("train", {}).get("hflip", True))


def distinct_images(images: np.ndarray, mirrored: bool) -> np.ndarray:
    """Indices of the training images (N, 3, H, W) that are not a copy, or (`mirrored`) a mirror, of
    an earlier one."""
    seen, kept = set(), []
    for i, image in enumerate(images):
        views = (image, image[..., ::-1]) if mirrored else (image,)
        key = min(hashlib.sha256(np.ascontiguousarray(view).tobytes()).digest() for view in views)
        if key not in seen:
            seen.add(key)
            kept.append(i)
    return np.array(kept, dtype=np.int64)


def _rows(block: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A block of images or features as float64 rows (n, D) on `device` (a copy: `block` may be read-only)."""
    rows = block if isinstance(block, torch.Tensor) else torch.from_numpy(np.array(block))
    return rows.to(device).double().flatten(1)


def nearest_two(
    samples: np.ndarray | torch.Tensor,
    training: np.ndarray | torch.Tensor,
    device: torch.device,
    mirrored: bool = False,
    block: int = BLOCK,
) -> Neighbours:
    """The two nearest rows of `training` (M ≥ 2) to each row of `samples` (N), by Euclidean distance
    in the units given (images (·, 3, H, W) are flattened); with `mirrored`, the distance to a training
    image is the smaller of those to it and to it flipped left-right. Blockwise: memory is bounded by
    `block`² distances and 3·`block` rows, whatever N and M."""
    if len(training) < 2:
        raise ValueError(f"{len(training)} training rows: a second-nearest needs at least 2")
    n = len(samples)
    best = torch.full((n, 2), torch.inf, dtype=torch.float64, device=device)  # squared d₁, d₂ so far
    where = torch.zeros((n, 2), dtype=torch.int64, device=device)
    for t0 in range(0, len(training), block):
        chunk = training[t0 : t0 + block]
        views = [_rows(chunk, device)] + ([_rows(np.asarray(chunk)[..., ::-1], device)] if mirrored else [])
        norms = [v.square().sum(1) for v in views]
        columns = torch.arange(t0, t0 + len(chunk), device=device)
        for s0 in range(0, n, block):
            x = _rows(samples[s0 : s0 + block], device)
            x_norms = x.square().sum(1, keepdim=True)
            # ||x − y||² for each view, the nearer of an image and its mirror; rounding may dip below 0
            squared = torch.stack([x_norms + m - 2 * x @ v.T for v, m in zip(views, norms, strict=True)])
            squared = squared.amin(0).clamp(min=0)
            pool = torch.cat([best[s0 : s0 + block], squared], dim=1)  # the best two so far, then this block
            index = torch.cat([where[s0 : s0 + block], columns.expand(len(x), -1)], dim=1)
            top, order = pool.topk(2, dim=1, largest=False, sorted=True)
            best[s0 : s0 + block], where[s0 : s0 + block] = top, index.gather(1, order)
    return Neighbours(best.sqrt().cpu().numpy(), where.cpu().numpy())


def memorized(distances: np.ndarray) -> np.ndarray:
    """Whether each sample is a copy (N,): d₁/d₂ < 1/3 (Yoon et al. 2023), written as 3·d₁ < d₂ so
    that d₂ = 0 needs no division; d₁ = 0 is a copy whatever d₂ is."""
    d1, d2 = distances[:, 0], distances[:, 1]
    return (d1 < RATIO * d2) | (d1 == 0)


def closest_pairs(pixels: Neighbours, count: int = CLOSEST) -> list[list[int | float]]:
    """The `count` samples nearest to a training image in pixels, nearest first (ties: lower sample
    index first): [sample_index, training_index, pixel_distance]."""
    order = np.argsort(pixels.distances[:, 0], kind="stable")[:count]
    return [[int(i), int(pixels.indices[i, 0]), float(pixels.distances[i, 0])] for i in order]


def measure(
    samples: np.ndarray,
    training: np.ndarray,
    sample_features: torch.Tensor,
    training_features: torch.Tensor,
    device: torch.device,
    mirrored: bool,
) -> dict[str, Any]:
    """eval.json's memorization keys for uint8 `samples` (N, 3, H, W) against uint8 `training`
    (M, 3, H, W) and their features (the ones FID used): the memorized fraction in pixels and in
    features, the median nearest distance in each (pixels in [0, 1] units), the closest pairs, and
    whether a training image's mirror counted as the image (`mirrored`: the model trained with flips)."""
    kept = distinct_images(training, mirrored)
    # pixel values as integers 0..255 (exact in float64, see above), scaled to [0, 1] only at the end
    pixels = nearest_two(samples, np.asarray(training)[kept], device, mirrored=mirrored)
    pixels = Neighbours(pixels.distances / 255, kept[pixels.indices])
    features = nearest_two(sample_features, training_features[torch.from_numpy(kept)], device)
    return {
        "memorized_fraction": float(memorized(pixels.distances).mean()),
        "memorized_fraction_features": float(memorized(features.distances).mean()),
        "nn_pixels_median": float(np.median(pixels.distances[:, 0])),
        "nn_features_median": float(np.median(features.distances[:, 0])),
        "closest_pairs": closest_pairs(pixels),
        "memorization_mirrored": mirrored,
    }


def as_measured(sample: np.ndarray, image: np.ndarray, mirrored: bool) -> np.ndarray:
    """The training `image` (3, H, W) as its pixel distance to `sample` was measured: itself, or with
    `mirrored` itself or its mirror, whichever is nearer."""
    mirror = image[..., ::-1]
    gap = [np.square(sample.astype(np.int64) - view).sum() for view in (image, mirror)]
    return np.ascontiguousarray(mirror if mirrored and gap[1] < gap[0] else image)
