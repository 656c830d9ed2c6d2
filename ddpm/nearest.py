"""The report's memorization section (ddpm.memorization measures it in `ddpm evaluate`): the closest
sample–training pairs read back with their images, and each run's numbers in words and a table.
"""

from pathlib import Path

import numpy as np

from ddpm import layout
from ddpm.data import load_images
from ddpm.files import sha256_hex
from ddpm.memorization import as_measured
from ddpm.results import RunFiles, RunResult, label


def closest_images(
    results: list[RunResult], runs_dir: Path, data: Path
) -> dict[str, tuple[list[list[int | float]], np.ndarray, np.ndarray]]:
    """Each run's closest sample–training pairs (eval.json's closest_pairs) with the images: run label →
    (pairs, the samples, the training images as measured); runs evaluated before ddpm measured them are
    left out. A one-line error where the pairs name images that the samples or `data` do not hold."""
    closest, digest = {}, None
    for r in results:
        pairs = r.evaluation.get("closest_pairs")
        if not pairs:
            continue
        folder = layout.RunFolder.of(r.name, r.seed, runs_dir)
        samples, training = load_images(folder.samples_array), load_images(data)  # a one-line error if missing
        digest = digest or sha256_hex(data)
        outside = [p for p in pairs if not (0 <= p[0] < len(samples) and 0 <= p[1] < len(training))]
        if r.evaluation.get("real_sha256", digest) != digest or outside:
            problem = f"its closest_pairs name other images than {folder.samples_array} and {data} hold"
            raise RunFiles(folder, r.name, r.seed).error(folder.eval_metrics, problem, "evaluate")
        shown = [np.array(samples[i]) for i, _, _ in pairs]
        mirrored = r.evaluation.get("memorization_mirrored", True)  # eval.json of before train.hflip: always
        seen = [as_measured(x, np.array(training[j]), mirrored) for x, (_, j, _) in zip(shown, pairs, strict=True)]
        closest[label(r)] = (pairs, np.stack(shown), np.stack(seen))
    return closest


def memorization_section(results: list[RunResult]) -> list[str]:
    """The report's lines on memorization: what is measured, each run's numbers, the closest pairs."""
    lines = [
        "## Memorization",
        "",
        "FID and KID are measured against the training images, so a model that copies them scores well. For each "
        "sample, d₁ and d₂ are the distances to its nearest and second-nearest training image; a sample counts as "
        "memorized when d₁/d₂ < 1/3 (Yoon et al. 2023): it lies three times closer to one training image "
        "than to any other, a copy of that image rather than something new. Pixel distances are Euclidean over the "
        "3·H·W values in [0, 1], a training image's mirror counting as the image where the model trained with flips "
        "(train.hflip: it saw both); feature distances are in the features FID uses.",
        "",
        "| run | memorized (pixels) | memorized (features) | median d₁ (pixels) | median d₁ (features) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        e = r.evaluation
        if "memorized_fraction" not in e:
            lines.append(f"| {label(r)} | – | – | – | – |")
            continue
        lines.append(f"| {label(r)} | {e['memorized_fraction']:.1%} | {e['memorized_fraction_features']:.1%} | "
                     f"{e['nn_pixels_median']:.3g} | {e['nn_features_median']:.3g} |")  # fmt: skip
    lines += ["", "The samples nearest to a training image (first seed), each above that image:", "",
              f"![closest sample–training pairs]({layout.NEAREST_PICTURE})", ""]  # fmt: skip
    return lines
