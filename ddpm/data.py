"""Images for training: the uint8 array format, synthetic flowers, and the in-memory batch source.

Images are stored as one .npy array of uint8, shape (N, 3, H, W): what `prepare` writes and
`train` reads. Training batches are floats in [-1, 1].
"""

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ddpm.errors import UserError
from ddpm.files import atomic_output


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [-1, 1]."""
    return images.float() / 127.5 - 1


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] → uint8 [0, 255], rounding to nearest (values outside the range are clipped)."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def save_images(path: Path, images: np.ndarray) -> None:
    """Write a uint8 (N, 3, H, W) array to `path` (.npy), atomically."""
    with atomic_output(path) as tmp:
        np.save(tmp, np.ascontiguousarray(images))


def load_images(path: Path) -> np.ndarray:
    """Read a uint8 (N, 3, H, W) array written by `save_images`; a clear error for anything else."""
    expected = "a .npy file of uint8 images shaped (N, 3, H, W)"
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: not found; expected {expected}") from None
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: cannot read ({e}); expected {expected}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        raise UserError(f"{path}: holds {images.dtype} {tuple(images.shape)}; expected {expected}")
    return images


class InMemoryImages:
    """The whole dataset as one uint8 tensor on the training device; batches are drawn there,
    so the training loop never waits for a data loader."""

    def __init__(self, images: np.ndarray, device: torch.device) -> None:
        self.images = torch.tensor(images, device=device)  # one copy, from the (read-only) memory map

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A batch drawn uniformly with replacement, each image flipped left-right with probability ½,
        as floats in [-1, 1]: (batch_size, 3, H, W)."""
        device = self.images.device
        index = torch.randint(len(self), (batch_size,), device=device, generator=generator)
        flip = torch.rand(batch_size, device=device, generator=generator) < 0.5
        x = self.images[index]
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return to_unit_range(x)


def synthetic_flowers(count: int, image_size: int, seed: int = 0) -> np.ndarray:
    """`count` procedurally drawn flowers, uint8 (count, 3, image_size, image_size).

    Each has 5-12 petals around a centre disc, with its own size, colours, rotation and a
    two-tone background; image i depends only on (seed, i), so a larger count extends a smaller one.
    Drawn at 4× and downsampled with a Lanczos filter for smooth edges.
    """
    return np.stack([_draw_flower(np.random.default_rng([seed, i]), image_size) for i in range(count)])


def _draw_flower(rng: np.random.Generator, size: int) -> np.ndarray:
    big = size * 4
    top, bottom = rng.integers(20, 140, 3), rng.integers(20, 140, 3)
    ramp = np.linspace(0, 1, big)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp).astype(np.uint8).repeat(big, axis=1)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    cx, cy = (0.5 + rng.uniform(-0.12, 0.12, 2)) * big
    radius = rng.uniform(0.25, 0.42) * big
    petals, width = int(rng.integers(5, 13)), rng.uniform(0.25, 0.45)
    colour = rng.integers(120, 256, 3)
    rotation = rng.uniform(0, 2 * math.pi)
    for k in range(petals):
        angle = rotation + 2 * math.pi * k / petals
        shade = tuple(int(c) for c in np.clip(colour * rng.uniform(0.8, 1.0), 0, 255))
        draw.polygon(_petal(cx, cy, radius, width * radius, angle), fill=shade)
    centre = rng.uniform(0.18, 0.33) * radius
    centre_colour = tuple(int(c) for c in rng.integers(0, 120, 3) + (120, 90, 0))  # yellows and browns
    draw.ellipse([cx - centre, cy - centre, cx + centre, cy + centre], fill=centre_colour)
    small = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(small).transpose(2, 0, 1).copy()


def _petal(cx: float, cy: float, length: float, width: float, angle: float) -> list[tuple[float, float]]:
    """An ellipse from the centre outwards along `angle`, as a polygon."""
    points = []
    for s in np.linspace(0, 2 * math.pi, 32, endpoint=False):
        u, v = length / 2 * (1 + math.cos(s)), width / 2 * math.sin(s)
        points.append((cx + u * math.cos(angle) - v * math.sin(angle), cy + u * math.sin(angle) + v * math.cos(angle)))
    return points
