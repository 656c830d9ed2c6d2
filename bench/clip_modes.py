"""Which clip mode (`sample.clip_mode`) to sample with, measured: the tiny model trained on real grey
digits (bench/digits.py, without flips) and on the synthetic flowers, each at two training budgets, then
sampled with DDIM-50 (η = 0) and, the digits, DDPM (all T = 1000 steps of the linear schedule) in every
clip mode.
Each row: FID against the training images (N samples stated; FID is biased upward at small N, so compare
rows, not with published values), KID ± its bootstrap SE, and the colour cast (`ddpm.metrics.colour_cast`:
the mean over pixels of the SD across R, G and B; 0 for grey data). Nothing else should run meanwhile.

    python bench/clip_modes.py                       # both datasets, as bench/RESULTS.md reports them
    python bench/clip_modes.py --datasets digits     # the grey digits alone (about 1.5 hours on 2 shared cores)

Training goes through the `ddpm` CLI (prepare, train: the user's path); sampling and scoring run here,
with `ddpm.sample.generate` and `ddpm.estimates.estimates` on the Inception features `ddpm evaluate`
uses. DDPM's mean uses x̂_0 alone, so recompute and x0 are one chain there: drawn once, reported for both.
Writes <work>/clip_modes.json and a grid per row (<work>/<dataset>/grids/), and prints a markdown table.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from digits import write_digits  # noqa: E402

from ddpm.checkpoint import load_trained  # noqa: E402
from ddpm.config import EvaluateConfig, SampleConfig  # noqa: E402
from ddpm.diffusion import CLIP_MODES  # noqa: E402
from ddpm.estimates import estimates  # noqa: E402
from ddpm.features import extract_features, load_extractor  # noqa: E402
from ddpm.metrics import colour_cast  # noqa: E402
from ddpm.sample import generate, grid_picture, png_bytes  # noqa: E402

# dataset: (prepare's arguments, image size, train's extra settings, training budgets, samples per row,
# the budgets also sampled with DDPM). On 2 CPU cores one DDPM chain of T = 1000 steps costs ~3 min for
# 200 digits and ~6 min per mode for 100 flowers (16×16), and Inception's features ~0.3 s an image: the
# flowers, colourful, where a cast is not the question, get DDIM-50 alone.
DATASETS = {
    "digits": (["--source", "folder"], 8, ["--set", "train.hflip=false"], [1500, 4000], 200, [1500, 4000]),
    "flowers": (["--source", "synthetic", "--set", "data.synthetic_count=1000"], 16, [], [500, 1500], 100, []),
}
BOOTSTRAP = 100


def ddpm(*args: str) -> None:
    """A `ddpm` command, its output shown, stopping the bench where it fails."""
    subprocess.run([sys.executable, "-m", "ddpm", *args], check=True)


def prepare(name: str, work: Path) -> Path:
    """The dataset's prepared images (all of them: no hold-out), prepared once."""
    source, size, *_ = DATASETS[name]
    out = work / name / "prepared"
    if not (out / "images.npy").exists():
        extra = []
        if name == "digits":
            write_digits(work / "digits-png")
            extra = ["--set", f"data.folder={work / 'digits-png'}"]
        ddpm("prepare", *source, *extra, "--image-size", str(size), "--set", "data.holdout=0", "--out", str(out))
    return out / "images.npy"


def real_features(extractor, data: np.ndarray, cache: Path) -> torch.Tensor:  # noqa: ANN001
    """The training images' Inception features, extracted once (minutes on a CPU) and kept in `cache`."""
    if not cache.exists():
        torch.save(extract_features(extractor, data, 100, torch.device("cpu"), "real", progress=False), cache)
    return torch.load(cache)


def train(name: str, images: Path, run: Path, steps: int) -> Path:
    """The tiny model trained to `steps` (resuming the run's last budget), as `ddpm train` does."""
    _, size, extra, *_ = DATASETS[name]
    ddpm("train", "--data", str(images), "--out", str(run), "--model", "tiny", "--image-size", str(size),
         "--steps", str(steps), "--batch-size", "32", "--lr", "1e-3", "--set", "train.warmup_steps=100",
         "--set", "train.ema_decay=0.999", "--set", "train.eval_every=0", "--set", f"train.sample_every={steps}",
         "--set", "train.checkpoint_every=500", "--set", "tracking.enabled=false", *extra)  # fmt: skip
    return run / "model.pt"


def score(samples: torch.Tensor, real: torch.Tensor, extractor, device: torch.device) -> dict:  # noqa: ANN001
    fake = extract_features(extractor, samples.numpy(), 100, device, "features", progress=False)
    metrics, _ = estimates(real, fake, None, "", BOOTSTRAP, device)
    return {"fid": metrics["fid"], "fid_sd": metrics["fid_sd"], "kid": metrics["kid_mean"],
            "kid_se": metrics["kid_se"], "colour_cast": colour_cast(samples)}  # fmt: skip


def rows_of(name: str, model: Path, steps: int, work: Path, real: torch.Tensor, extractor) -> list:  # noqa: ANN001
    trained, device = load_trained(model, torch.device("cpu")), torch.device("cpu")
    grids = work / name / "grids"
    grids.mkdir(parents=True, exist_ok=True)
    rows, (*_, samples, ddpm_budgets) = [], DATASETS[name]
    for sampler in ("ddim", "ddpm") if steps in ddpm_budgets else ("ddim",):
        drawn = {}
        for mode in CLIP_MODES:
            same = "recompute" if sampler == "ddpm" and mode == "x0" else mode  # one chain for DDPM
            if same not in drawn:
                cfg = SampleConfig(sampler=sampler, steps=50, num_samples=samples, batch_size=samples,
                                   clip_mode=same, precision="fp32", channels_last=False, compile=False)  # fmt: skip
                start = time.perf_counter()
                images, _ = generate(trained.model, trained.diffusion, cfg, trained.image_size, device, progress=False)
                drawn[same] = (images, time.perf_counter() - start)
            images, seconds = drawn[same]
            row = {"dataset": name, "steps": steps, "sampler": "DDIM-50" if sampler == "ddim" else "DDPM",
                   "clip_mode": mode, "samples": len(images), "real": len(real),
                   **score(images, real, extractor, device), "seconds": round(seconds, 1)}  # fmt: skip
            rows.append(row)
            picture = grid_picture(images[:64], 8)
            (grids / f"{steps}-{sampler}-{mode}.png").write_bytes(png_bytes(picture))
            print(table_row(row), flush=True)
    return rows


def table_row(r: dict) -> str:
    return (f"| {r['dataset']} | {r['steps']} | {r['sampler']} | {r['clip_mode']} | {r['fid']:.1f} ± {r['fid_sd']:.1f} "
            f"| {r['kid']:.4f} ± {r['kid_se']:.4f} | {r['colour_cast']:.4f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/ddpm-clip-modes"))
    parser.add_argument("--datasets", default="digits,flowers")
    args = parser.parse_args()
    budgets = {name: spec[3] for name, spec in DATASETS.items()}
    torch.manual_seed(0)
    extractor = load_extractor(EvaluateConfig(), torch.device("cpu"))
    rows = []
    print("| data | steps | sampler | clip mode | FID_N ± SD | KID ± SE | colour cast |\n|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        images = prepare(name, args.work)
        data = np.load(images)
        real = real_features(extractor, data, args.work / name / "real-features.pt")
        print(f"| {name} | data | | | | | {colour_cast(torch.from_numpy(data)):.4f} |", flush=True)
        run = args.work / name / "run"
        for steps in budgets[name]:
            model = train(name, images, run, steps)
            kept = shutil.copy(model, args.work / name / f"model-{steps}.pt")
            rows += rows_of(name, Path(kept), steps, args.work, real, extractor)
            (args.work / "clip_modes.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
