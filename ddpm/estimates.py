"""Every estimate labelled: FID_N with its bootstrap SD, FID_∞ (Chong & Forsyth 2020) with its own,
and KID against the training images and against the held-out images with its bootstrap standard
error, all from the same resamples of the samples: the rows of `bootstrap_indices(n, B,
BOOTSTRAP_SEED)`. Two runs with as many samples resample the same indices, and sample i of each
starts from the same x_T, so the per-resample values (resamples.npz) of two runs are paired.
"""

from typing import Any

import numpy as np
import torch

from ddpm.metrics import (
    FID_INF_SIZES,
    bootstrap_indices,
    centred_interval,
    fid_infinity_fit,
    fid_infinity_subsets,
    fid_of_rows,
    frechet_distance,
    kid_of_weights,
    pair_sums,
    resample_counts,
)

BOOTSTRAP_SEED = 0


def estimates(
    real: torch.Tensor,
    fake: torch.Tensor,
    holdout: torch.Tensor | None,
    suffix: str,
    resamples: int,
    device: torch.device,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The scores of the fake features (n, D) against the real ones, named with the extractor's
    `suffix`, and each bootstrapped score's values over the `resamples` resamples ((B,) float64, keyed
    by the score's name; none where resamples is 0, and then no SD either). `holdout`: the held-out
    images' features, for a second KID, or None. FID_N is computed where the features are (as
    torchmetrics computes it), the rest on `device`: the bootstrap's B × 5 eigenvalue problems of D × D
    and KID's kernels of n × (n + m) take seconds on a GPU, minutes on a CPU."""
    s = suffix
    fid = frechet_distance(real, fake)
    real, fake = real.to(device), fake.to(device)
    holdout = holdout.to(device) if holdout is not None else None
    metrics: dict[str, Any] = {f"fid{s}": fid}
    sizes: list[int] = []
    if len(fake) >= 2 * FID_INF_SIZES:  # else no FID_∞ (`ddpm evaluate` says so)
        subsets, sizes = fid_infinity_subsets(real, fake)
        metrics |= {f"fid{s}_inf": float(fid_infinity_fit(subsets, sizes)), f"fid{s}_inf_sizes": sizes}
    y = fake.double()
    indices = bootstrap_indices(len(y), resamples, BOOTSTRAP_SEED).to(y.device)
    # row 0 counts every sample once: the point estimate, from the same pass over the kernel as its resamples
    weights = torch.cat([torch.ones(1, len(y), dtype=torch.float64, device=y.device), resample_counts(indices, len(y))])
    fake_pairs = pair_sums(y, weights)  # shared by both real sets
    kids = {f"kid{s}_mean": kid_of_weights(real, y, weights, fake_pairs)}
    if holdout is not None:
        kids[f"kid{s}_holdout_mean"] = kid_of_weights(holdout, y, weights, fake_pairs)
    metrics |= {key: float(values[0]) for key, values in kids.items()}
    draws: dict[str, torch.Tensor] = {}
    if resamples:
        # (B, K): FID at each size of each resample's first rows; the last size, n, is FID_N's bootstrap
        fids = fid_of_rows(real, fake, indices, sizes or [len(fake)])
        draws = {f"fid{s}": fids[:, -1]} | ({f"fid{s}_inf": fid_infinity_fit(fids, sizes)} if sizes else {})
        draws |= {key: values[1:] for key, values in kids.items()}
    for key, values in draws.items():
        sd = float(values.std())  # ddof 1
        if key.startswith("fid"):
            low, high = centred_interval(metrics[key], sd)
            metrics |= {f"{key}_sd": sd, f"{key}_ci_low": low, f"{key}_ci_high": high}
        else:
            metrics[key.removesuffix("_mean") + "_se"] = sd
    metrics |= {"bootstrap": resamples, "bootstrap_seed": BOOTSTRAP_SEED}
    return metrics, {key: values.cpu().numpy() for key, values in draws.items()}
