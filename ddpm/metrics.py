"""The statistics of FID and KID, pure functions of feature arrays (float64): the Fréchet distance,
its bootstrap and interval, and the kernel distance. Nothing here needs a network: the tests check
them on made-up features against torchmetrics and 40-digit references.
"""

import math

import torch


def gaussian(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of features (N, D), in float64. Fewer than 2 rows, a value that
    is not finite or one too large for the covariance to be finite is a ValueError: the eigenvalue
    routines would end the process (MKL's DGEBAL)."""
    x = features.double()
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features {tuple(x.shape)}: a covariance needs at least 2 rows of (N, D)")
    if not torch.isfinite(x).all():
        raise ValueError("features hold values that are not finite")
    mean, covariance = x.mean(0), torch.cov(x.T)
    if not torch.isfinite(covariance).all():
        raise ValueError("features hold values too large for a covariance in float64")
    return mean, covariance


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID: ||mu_r − mu_f||² + Tr(S_r + S_f − 2 (S_r S_f)^½) of the features' Gaussians, in float64, with
    Tr (S_r S_f)^½ the sum of the square roots of the eigenvalues of S_r S_f, as torchmetrics and
    torch-fidelity compute it (so that rank-deficient covariances give their numbers to the last digits)."""
    mu_r, sigma_r = gaussian(real)
    mu_f, sigma_f = gaussian(fake)
    cross = torch.linalg.eigvals(sigma_r @ sigma_f).sqrt().real.sum()
    return float((mu_r - mu_f).square().sum() + sigma_r.trace() + sigma_f.trace() - 2 * cross)


def bootstrap_indices(n: int, resamples: int, seed: int = 0) -> torch.Tensor:
    """Row indices (resamples, n) of `resamples` bootstrap resamples of n rows, n of n with replacement.
    Drawn by a CPU generator seeded `seed`: CUDA's generator draws other numbers, and the same features
    must give the same interval on every machine."""
    return torch.randint(n, (resamples, n), generator=torch.Generator().manual_seed(seed))


def psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix, by its eigendecomposition;
    the small negative eigenvalues that rounding gives a singular covariance count as 0."""
    eigenvalues, vectors = torch.linalg.eigh(matrix)
    return (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T


def fid_bootstrap(real: torch.Tensor, fake: torch.Tensor, resamples: int, seed: int = 0) -> torch.Tensor:
    """FIDs (resamples,), float64 on the features' device, of bootstrap resamples of the fake features
    (`bootstrap_indices(len(fake), resamples, seed)`) against the fixed real statistics.

    Each is `frechet_distance(real, fake[idx])` computed from symmetric eigenvalues only, by
        Tr (S_r S_f)^½ = Tr (S_r^½ S_f S_r^½)^½ = Σ sqrt(eigvalsh(A^T A)),   A = C S_r^½ / sqrt(n − 1),
    with C the resample's centred rows (n, D): S_r S_f = S_r^½ (S_r^½ S_f) and S_r^½ S_f S_r^½ =
    (S_r^½ S_f) S_r^½ share their nonzero eigenvalues (XY and YX do), singular S_r included. A^T A
    (D × D) and the Gram matrix A A^T share theirs too, so the smaller one is decomposed. A row drawn
    w times enters A once, scaled by sqrt(w), so the Gram form is k × k for the k ≈ 0.63 n distinct rows.
    """
    mu_r, sigma_r = gaussian(real)
    root = psd_sqrt(sigma_r)
    x = fake.double()
    centre = x.mean(0)
    x = x - centre  # resample means are close to the full one: centring on it first keeps the digits
    x_root = x @ root  # every resample's rows of C S_r^½, multiplied once
    shift = mu_r - centre
    indices = bootstrap_indices(len(x), resamples, seed).to(x.device)
    return torch.stack([_resample_fid(x, x_root, shift, sigma_r.trace(), drawn) for drawn in indices])


def _resample_fid(
    x: torch.Tensor, x_root: torch.Tensor, shift: torch.Tensor, trace_r: torch.Tensor, drawn: torch.Tensor
) -> torch.Tensor:
    """FID of the rows `drawn` (n,) of the fake features: ||mu_r − mu_f||² + Tr S_r + Tr S_f − 2 Tr (S_r S_f)^½.
    x (n, D): the features less their full-sample mean; shift: mu_r less that mean; x_root = x S_r^½."""
    n = len(drawn)
    counts = torch.bincount(drawn, minlength=n)
    rows = counts.nonzero().squeeze(1)
    weights = counts[rows].double()
    mu_f = weights @ x[rows] / n
    trace_f = weights @ (x[rows] - mu_f).square().sum(1) / (n - 1)
    rooted = x_root[rows]
    a = weights.sqrt()[:, None] * (rooted - weights @ rooted / n) / math.sqrt(n - 1)  # (k, D)
    if len(rows) <= a.shape[1]:
        # the Gram form; centring gives it one exact zero eigenvalue (a^T sqrt(w) = 0), the smallest, dropped
        # because its rounding error, ~1e-16 of the largest, would add its square root, ~1e-8, to the sum
        eigenvalues = torch.linalg.eigvalsh(a @ a.T)[1:]
    else:
        eigenvalues = torch.linalg.eigvalsh(a.T @ a)
    cross = eigenvalues.clamp(min=0).sqrt().sum()
    return (shift - mu_f).square().sum() + trace_r + trace_f - 2 * cross


def fid_basic_interval(fid: float, values: torch.Tensor, level: float = 0.95) -> tuple[float, float]:
    """The basic (reverse-percentile) bootstrap interval for FID, [2·fid − q_hi, 2·fid − q_lo] with
    q_lo, q_hi the (1 ∓ level)/2 quantiles of the bootstrap FIDs `values`; each end clamped at 0.

    Not the percentile interval [q_lo, q_hi]: FID is biased upward (a finite sample's covariance is
    noisier than the population's, and noise only adds distance), and a resample, whose repeated rows
    make its covariance noisier still, adds about the same bias again. The percentile interval thus
    sits about twice the bias above the true FID, and often above the estimate itself; the basic
    interval reflects the resamples' excess θ* − θ̂ around θ̂, which removes the bias to first order.
    The coverage of both, measured, is in bench/RESULTS.md ("FID's bootstrap interval").
    FID is never negative, so an end that the reflection puts below 0 is clamped there."""
    if not 0 < level < 1:
        raise ValueError(f"level {level}: a confidence level lies strictly between 0 and 1")
    tails = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=values.dtype, device=values.device)
    q_lo, q_hi = torch.quantile(values, tails).tolist()
    return max(2 * fid - q_hi, 0.0), max(2 * fid - q_lo, 0.0)


KERNEL_BLOCK = 4096  # rows of one kernel block: 4096² float64 is 128 MiB, whatever the number of images


def kernel_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """KID (Bińkowski et al. 2018, eq. 4): the unbiased MMD² U-statistic over all m real rows x and all
    n fake rows y, with the kernel k(a, b) = (a·b/D + 1)³,
        Σ_{i≠j} k(x_i, x_j)/(m(m−1)) + Σ_{i≠j} k(y_i, y_j)/(n(n−1)) − 2 Σ_{i,j} k(x_i, y_j)/(mn),
    in float64, the kernel matrices summed block by block so that 10,000 rows need no 800 MB matrix."""
    x, y = real.double(), fake.double()
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"KID needs at least 2 rows of each set, got {m} real and {n} fake")

    def kernel_sum(a: torch.Tensor, b: torch.Tensor, same: bool) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64, device=a.device)
        for start in range(0, len(a), KERNEL_BLOCK):
            block = (a[start : start + KERNEL_BLOCK] @ b.T / a.shape[1] + 1) ** 3
            total += block.sum() - (block.diagonal(start).sum() if same else 0)  # i = j: not a pair of two rows
        return total

    within = kernel_sum(x, x, True) / (m * (m - 1)) + kernel_sum(y, y, True) / (n * (n - 1))
    return float(within - 2 * kernel_sum(x, y, False) / (m * n))


def kernel_distance_subsets(
    real: torch.Tensor, fake: torch.Tensor, subsets: int, subset_size: int
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): the unbiased MMD² with the kernel (x·y/D + 1)³, mean and (population)
    std over `subsets` random subsets of `subset_size` of each set, drawn from a generator seeded 0."""
    generator = torch.Generator().manual_seed(0)
    real, fake = real.double(), fake.double()
    scores = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=generator)[:subset_size]]
        y = fake[torch.randperm(len(fake), generator=generator)[:subset_size]]
        kernel = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731
        k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
        m = subset_size
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
        scores.append(within - 2 * k_xy.sum() / m**2)
    stacked = torch.stack(scores)
    return float(stacked.mean()), float(stacked.std(unbiased=False))
