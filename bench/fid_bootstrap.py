"""How long `fid_bootstrap` takes on the CPU, against one `frechet_distance`.

    python bench/fid_bootstrap.py [--resamples 200] [--measured 5] [--full-limit 1000000000]

Two sizes: n = 10000, D = 2048, the real experiment's (Inception features of 10k samples), and
n = 200, D = 224, the offline preset's randconv features. The features are Gaussian with a random
covariance, float64; the time depends only on the sizes. A size whose n·D² is over `--full-limit`
is not run in full: `fid_bootstrap` with 1 and with `measured` resamples gives the fixed cost (the
statistics, S_r^½, the features times S_r^½) and the cost per resample, from which `resamples` is
extrapolated, and the table says so.
"""

import argparse
import time
from collections.abc import Callable

import torch

from ddpm.metrics import fid_bootstrap, frechet_distance

SIZES = ((10000, 2048), (200, 224))


def seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def features(n: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=generator, dtype=torch.float64) / dim**0.5
    return torch.randn(n, dim, generator=generator, dtype=torch.float64) @ mixing


def row(n: int, dim: int, resamples: int, measured: int, full_limit: int) -> str:
    real, fake = features(n, dim, 0), features(n, dim, 1) + 0.1
    single = seconds(lambda: frechet_distance(real, fake))
    if n * dim**2 <= full_limit:
        total = seconds(lambda: fid_bootstrap(real, fake, resamples))
        how = "run in full"
    else:
        one = seconds(lambda: fid_bootstrap(real, fake, 1))
        per = (seconds(lambda: fid_bootstrap(real, fake, measured)) - one) / (measured - 1)
        total = one + (resamples - 1) * per
        how = f"extrapolated from {measured} resamples: {one - per:.1f} s fixed + {per:.2f} s each"
    return f"| {n} | {dim} | {single:.3f} | {total:.2f} | {total / resamples:.4f} | {how} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--measured", type=int, default=5, help="resamples timed where the run is extrapolated")
    parser.add_argument("--full-limit", type=int, default=1_000_000_000, help="largest n·D² run in full")
    args = parser.parse_args()
    if args.measured < 2:
        parser.error(f"--measured {args.measured}: the cost per resample needs at least 2")
    print(f"torch {torch.__version__}, float64, CPU, {torch.get_num_threads()} threads\n")
    print(f"| n | D | frechet_distance, s | fid_bootstrap {args.resamples}, s | per resample, s | how |")
    print("|---:|---:|---:|---:|---:|---|")
    for n, dim in SIZES:
        print(row(n, dim, args.resamples, args.measured, args.full_limit), flush=True)


if __name__ == "__main__":
    main()
