"""Real grey images that need no download: scikit-learn's bundled handwritten digits (`load_digits`,
1,797 scans of 8×8 pixels in 17 grey levels), written as PNG files for `data.source: folder`.

    python bench/digits.py data/digits          # then, as the README says:
    ddpm prepare --source folder --set data.folder=data/digits --image-size 8 --out data/digits-prepared

Grey on black, and a digit's mirror image is not a digit: train them with `--set train.hflip=false`.
Samples of a grey dataset should be grey; `ddpm.metrics.colour_cast` measures how far they are not.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def digits() -> np.ndarray:
    """The 1,797 digits as uint8 (N, 8, 8), their 17 levels 0..16 spread over 0..255."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("bench/digits.py: needs scikit-learn (pip install scikit-learn)")
    levels = load_digits().images  # float64 0..16
    return np.round(levels * 255 / 16).astype(np.uint8)


def write_digits(folder: Path) -> int:
    """Each digit as folder/digit-NNNN.png (8-bit grey); the number written."""
    folder.mkdir(parents=True, exist_ok=True)
    images = digits()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"digit-{i:04d}.png")
    return len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where the PNG files go")
    folder = parser.parse_args().folder
    print(f"wrote {write_digits(folder)} digits (8×8, grey) to {folder}")


if __name__ == "__main__":
    main()
