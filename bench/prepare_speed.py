"""How fast `ddpm prepare` turns JPEGs into the training array on this machine.

    python bench/prepare_speed.py [--count 2000] [--image-size 64] [--workers 0] [--repeats 3]

Writes `count` synthetic 500×375 JPEGs (the typical Flowers-102 size) to a temporary folder once,
then times `prepare` on them (all cores by default) and prints images per second: the median
of the repeats, each a full run that includes starting the worker processes and writing the output.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from ddpm.config import DataConfig
from ddpm.data import prepare, synthetic_flowers


def write_jpegs(folder: Path, count: int) -> None:
    flowers = synthetic_flowers(count, 96, seed=0)
    for i, array in enumerate(flowers):
        image = Image.fromarray(array.transpose(1, 2, 0)).resize((500, 375), Image.Resampling.BICUBIC)
        image.save(folder / f"image_{i + 1:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="0 = one per core")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp) / "jpg", Path(tmp) / "prepared"
        folder.mkdir()
        write_jpegs(folder, args.count)
        cfg = DataConfig(source="folder", folder=str(folder), image_size=args.image_size, holdout=0)  # decoding alone
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            manifest = prepare(cfg, Path(tmp), out, workers=args.workers, progress=False)
            seconds.append(time.perf_counter() - start)
        assert manifest["count"] == args.count
    workers = args.workers or os.cpu_count()
    median = statistics.median(seconds)
    print(f"prepare: {args.count} JPEGs 500×375 → {args.image_size}×{args.image_size}, {workers} workers")
    print(f"  median {median:.2f} s over {args.repeats} runs: {args.count / median:,.0f} images/s")


if __name__ == "__main__":
    main()
