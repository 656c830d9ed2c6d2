"""Images: `prepare` (decode, crop, resize what `ddpm.download` fetched), synthetic flowers, the
uint8 array format and the in-memory batch source for training.

Prepared images are .npy arrays of uint8, shape (N, 3, H, W), beside a manifest.json: `prepare`
writes images.npy, which `train` reads, and holdout.npy, the images kept out of training for the
bits/dim evaluation. Training batches are floats in [-1, 1].
"""

import hashlib
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from ddpm.cifar10 import CIFAR10_BATCHES, cifar10_training_images
from ddpm.config import DataConfig
from ddpm.errors import UserError
from ddpm.files import atomic_output, file_digest, first_link, npy_size, sha256_hex, write_json
from ddpm.layout import EXTRACTED, HOLDOUT, IMAGES, MANIFEST

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [-1, 1]."""
    return images.float() / 127.5 - 1


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] → uint8 [0, 255], rounding to nearest (values outside the range are clipped)."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


NPY_MAGIC = b"\x93NUMPY"  # how every .npy file starts


def save_images(path: Path, images: np.ndarray) -> None:
    """Write a uint8 (N, 3, H, W) array to `path` (.npy), atomically."""
    images = np.ascontiguousarray(images)
    with atomic_output(path, needed=npy_size(images)) as tmp:
        np.save(tmp, images)


def load_images(path: Path) -> np.ndarray:
    """Read a uint8 (N, 3, H, W) array written by `save_images`; a clear error for anything else."""
    expected = "a .npy file of uint8 images shaped (N, 3, H, W)"
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
        images = np.load(path, mmap_mode="r", allow_pickle=False) if magic == NPY_MAGIC else None
    except FileNotFoundError:
        raise UserError(f"{path}: not found; expected {expected}") from None
    except (ValueError, OSError, EOFError) as e:
        # numpy's messages about objects advise loading them with pickle: never relay that
        objects = "pickle" in str(e) or "Python objects" in str(e)
        why = "holds Python objects, never loaded (unpickling them could run code)" if objects else f"cannot read ({e})"
        raise UserError(f"{path}: {why}; expected {expected}") from None
    if images is None:  # numpy would take any other file for a pickle, or return a .npz archive
        raise UserError(f"{path}: {'empty (0 bytes)' if not magic else 'not a .npy file'}; expected {expected}")
    if images.dtype == np.uint8 and images.ndim == 4 and len(images) == 0:
        raise UserError(f"{path}: holds no images; expected {expected}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise UserError(f"{path}: holds {images.dtype} {tuple(images.shape)}; expected {expected}")
    return images


class InMemoryImages:
    """The whole dataset as one uint8 tensor on the training device; batches are drawn there,
    so the training loop never waits for a data loader."""

    def __init__(self, images: np.ndarray, device: torch.device) -> None:
        self.images = torch.tensor(images, device=device)  # one copy, from the (read-only) memory map

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, batch_size: int, generator: torch.Generator | None = None, hflip: bool = True) -> torch.Tensor:
        """A batch drawn uniformly with replacement, with `hflip` each image flipped left-right with
        probability ½ (train.hflip), as floats in [-1, 1]: (batch_size, 3, H, W)."""
        device = self.images.device
        index = torch.randint(len(self), (batch_size,), device=device, generator=generator)
        # the coins are drawn even without flips, so that for one seed the runs with and without them
        # draw the same images, timesteps and noise (paired)
        flip = torch.rand(batch_size, device=device, generator=generator) < 0.5
        x = self.images[index]
        if hflip:
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


# --- prepare -------------------------------------------------------------------------------------


def prepare(cfg: DataConfig, raw_dir: Path, out_dir: Path, workers: int = 0, progress: bool = True) -> dict[str, Any]:
    """Decode, convert to RGB, crop and resize every image of the source to `cfg.image_size`; hold
    `cfg.holdout` of them out; write `out_dir`/images.npy (the training images), `out_dir`/holdout.npy
    (the held-out ones) and `out_dir`/manifest.json atomically, and return the manifest.

    The same inputs and params give byte-identical files. Unreadable files are skipped and listed."""
    skipped: list[dict[str, str]] = []
    if cfg.source == "synthetic":
        images = synthetic_flowers(cfg.synthetic_count, cfg.image_size, cfg.synthetic_seed)
        origin: dict[str, Any] = {"seed": cfg.synthetic_seed}
    elif cfg.source == "cifar10":
        root = extracted(raw_dir, "cifar10")
        images, origin = cifar10_training_images(root, cfg.image_size), {"root": str(root), "files": CIFAR10_BATCHES}
    else:
        root = extracted(raw_dir, cfg.source) if cfg.source == "flowers102" else Path(cfg.folder or "")
        files = image_files(root, cfg.source)
        arrays, skipped = _load_all(root, files, cfg.image_size, cfg.max_pixels, workers, progress)
        if not arrays:
            first = f"{skipped[0]['file']}: {skipped[0]['reason']}"
            raise UserError(f"{root}: none of the {len(files)} image files could be read (first: {first})")
        images = np.stack(arrays)
        origin = {"root": str(root), "files": len(files)}
    held = holdout_indices(len(images), cfg.holdout, cfg.holdout_seed)
    kept = np.ones(len(images), dtype=bool)
    kept[held] = False
    training, held_out = images[kept], images[held]
    save_split(out_dir, training, held_out)
    manifest = {
        "source": cfg.source,
        **origin,
        "count": len(training),
        "image_size": cfg.image_size,
        "sha256": hashlib.sha256(training.tobytes()).hexdigest(),
        "npy_sha256": sha256_hex(out_dir / IMAGES),  # train checks it
        "holdout": {
            "count": len(held_out),
            "seed": cfg.holdout_seed,
            "indices": held.tolist(),  # into the prepared order, before the split
            "sha256": hashlib.sha256(held_out.tobytes()).hexdigest(),
            "npy_sha256": sha256_hex(out_dir / HOLDOUT),
        },
        "skipped": skipped,
    }
    write_json(out_dir / MANIFEST, manifest, sort_keys=True)  # last, so a manifest describes its images
    return manifest


def extracted(raw_dir: Path, source: str) -> Path:
    """The folder `ddpm download` extracted `source`'s archive into, checked to hold no link: the
    archives hold none, and one left there could lead anywhere. Nothing outside it is read through it."""
    root = raw_dir / EXTRACTED[source]
    link = first_link(root) if root.is_dir() else None
    if link:
        raise UserError(
            f"{link}: a link (to {os.readlink(link)!r}) in what `ddpm download` extracted, whose archives hold "
            f"none; refused without reading it: run `ddpm download --source {source}` again"
        )
    return root


def holdout_indices(count: int, holdout: int, seed: int) -> np.ndarray:
    """The sorted indices of the `holdout` of `count` images kept out of training: those with the
    smallest of `count` raw 64-bit draws of PCG64 seeded with `seed` (today's `default_rng(seed)`),
    ties by index.

    PCG64's raw stream, not `default_rng` or `Generator.choice`: numpy guarantees a fixed seed gives
    PCG64 the same stream everywhere, but lets default_rng change its BitGenerator and Generator its
    algorithms between versions (its random "Compatibility Policy")."""
    if holdout and count - holdout < 2:
        raise UserError(
            f"data.holdout: {holdout} of the {count} prepared images would leave {max(count - holdout, 0)} to train "
            f"on, fewer than 2; expected at most {max(count - 2, 0)}"
        )
    draws = np.random.PCG64(seed).random_raw(count)
    return np.sort(np.argsort(draws, kind="stable")[:holdout])


def save_split(out_dir: Path, training: np.ndarray, held_out: np.ndarray) -> None:
    """images.npy and holdout.npy, both written in full before either replaces the old one.

    images.npy is renamed first: a run stopped between the two renames leaves an images.npy that the
    old manifest no longer matches, which `training_images` refuses, rather than a new holdout.npy
    that may hold images the old images.npy trains on."""
    training, held_out = np.ascontiguousarray(training), np.ascontiguousarray(held_out)
    needed = npy_size(training) + npy_size(held_out)  # the two are on the disk together before the renames
    with atomic_output(out_dir / HOLDOUT, needed) as held_tmp:
        np.save(held_tmp, held_out)
        with atomic_output(out_dir / IMAGES, needed) as training_tmp:
            np.save(training_tmp, training)


def _load_all(
    root: Path, files: list[str], image_size: int, max_pixels: int, workers: int, progress: bool
) -> tuple[list[np.ndarray], list[dict[str, str]]]:
    """`load_image` over `files` in worker processes, in order: the images and the skipped files."""
    arrays, skipped = [], []
    load = partial(load_image, root=root, image_size=image_size, max_pixels=max_pixels)
    with ProcessPoolExecutor(workers or os.cpu_count() or 1) as pool:
        results = tqdm(pool.map(load, files, chunksize=64), total=len(files), disable=not progress, desc="prepare")
        for name, (array, reason) in zip(files, results, strict=True):
            if array is None:
                skipped.append({"file": name, "reason": reason})
            else:
                arrays.append(array)
    return arrays, skipped


def image_files(root: Path, source: str) -> list[str]:
    """The image files under `root`, recursively, as sorted POSIX paths relative to it."""
    if not root.is_dir():
        hint = "run `ddpm download` first" if source == "flowers102" else "set data.folder to a folder of images"
        raise UserError(f"{root}: no such folder; {hint}")
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )
    if not files:
        raise UserError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    return files


def load_image(name: str, root: Path, image_size: int, max_pixels: int) -> tuple[np.ndarray | None, str]:
    """One file as uint8 (3, image_size, image_size): the centred square of its short side, resized
    with antialiasing (the aspect ratio is kept, never squashed); or (None, why it was skipped).
    An image of more than `max_pixels` is skipped from its header, before anything is decoded."""
    try:
        with Image.open(root / name) as image:
            w, h = image.size
            if w * h > max_pixels:
                return None, f"{w}×{h} pixels, over data.max_pixels ({max_pixels}): a decompression bomb?"
            # JPEG: let the decoder downscale by 1/2, 1/4 or 1/8 (in the DCT domain, an area average)
            # while the short side stays at least image_size; Lanczos does the rest.
            scale = image_size / min(image.size)
            image.draft("RGB", (math.ceil(image.size[0] * scale), math.ceil(image.size[1] * scale)))
            image = _to_rgb(ImageOps.exif_transpose(image))
            w, h = image.size
            side = min(w, h)
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            square = image.resize((image_size, image_size), Image.Resampling.LANCZOS, box=box)
            return np.asarray(square).transpose(2, 0, 1).copy(), ""
    except UnidentifiedImageError:
        return None, "not an image"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return None, f"unreadable ({e})"


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode; transparent pixels become white rather than whatever colour they hide, and
    16-bit values are scaled to 8 bits (PIL's own conversion would clip them at 255)."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        top = 65535 if image.mode.startswith("I;16") or values.max() > 255 else 255
        image = Image.fromarray(np.round(values.clip(0, top) * (255 / top)).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def training_images(path: Path, image_size: int) -> tuple[np.ndarray, str]:
    """The prepared images and their sha256, checked against data.image_size."""
    if not path.exists():
        raise UserError(
            f"{path}: not found; prepare the images first with `ddpm prepare` (offline: `bash pipeline/offline.sh` "
            "runs the whole pipeline on synthetic flowers)"
        )
    images = load_images(path)
    if images.shape[2:] != (image_size, image_size):
        raise UserError(
            f"{path}: images are {images.shape[3]}×{images.shape[2]}, but data.image_size is {image_size}; "
            f"prepare the data at that size or set --image-size {images.shape[2]}"
        )
    digest = file_digest(path, "sha256:")
    manifest = path.parent / MANIFEST  # where `ddpm prepare` wrote the images, it says what they are
    try:
        recorded = json.loads(manifest.read_text()).get("npy_sha256") if manifest.is_file() else None
    except (OSError, ValueError, AttributeError):
        recorded = "unreadable"
    if recorded and "sha256:" + recorded != digest:
        raise UserError(
            f"{path} does not match {manifest} (sha256 {digest.removeprefix('sha256:')[:12]}…, the manifest says "
            f"{recorded[:12]}…): changed since `ddpm prepare` wrote it; run `ddpm prepare` again"
        )
    return images, digest


def first_image(path: Path, image_size: int) -> np.ndarray:
    """The first prepared image at `path`, or a synthetic flower where there is no prepared data:
    the image the schedules' pictures noise."""
    return load_images(path)[0] if path.exists() else synthetic_flowers(1, image_size)[0]


def summary(manifest: dict[str, Any], out_dir: Path) -> str:
    """What `ddpm prepare` prints of the manifest it wrote in `out_dir`."""
    size = manifest["image_size"]
    skipped, held_out = len(manifest["skipped"]), manifest["holdout"]["count"]
    return (f"prepared {manifest['count']} images of {size}×{size} to train on ({skipped} skipped): "
            f"{out_dir / IMAGES}; {held_out} held out (data.holdout): {out_dir / HOLDOUT}")  # fmt: skip
