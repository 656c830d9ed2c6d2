"""The statistics of FID and KID, pure functions of feature arrays (float64): the Fréchet distance,
its bootstrap, FID_∞ (its extrapolation to infinitely many samples), and the kernel distance with the
sums its bootstrap needs; and, of images themselves, their colour cast. Nothing here needs a network:
the tests check them on made-up features against torchmetrics and 40-digit references.
"""

import math

import torch

Z_95 = 1.959963984540054  # the normal quantile of a two-sided 95 % interval
MATRIX_ELEMENTS = 2**26  # a chunk of resamples' gathered rows and D × D sums: 512 MB in float64
FID_INF_SIZES = 5  # Chong & Forsyth fit FID at several N; five is the fewest the issue asks for


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
    (`bootstrap_indices(len(fake), resamples, seed)`) against the fixed real statistics: `fid_of_rows`
    of those rows at their full size. Their standard deviation is FID_N's sampling noise (the N
    samples', the real statistics fixed). A percentile interval of them is not used: a resample repeats
    about a third of the images, which makes its covariance noisier and its FID higher than the
    estimate's, so such an interval sits above the estimate (bench/RESULTS.md); the interval is
    FID ± 1.96 SD, centred on the point (`centred_interval`)."""
    rows = bootstrap_indices(len(fake), resamples, seed)
    return fid_of_rows(real, fake, rows, [len(fake)])[:, 0]


def fid_of_rows(real: torch.Tensor, fake: torch.Tensor, rows: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """FIDs (R, K), float64 on the features' device: entry (r, k) is `frechet_distance(real,
    fake[rows[r, :sizes[k]]])`, the fake rows at the first sizes[k] positions of row r of `rows` (R, n)
    (repeats allowed) against the fixed real statistics.

    Each is computed from symmetric eigenvalues only, by
        Tr (S_r S_f)^½ = Tr (S_r^½ S_f S_r^½)^½ = Σ sqrt(eigvalsh(A^T A)),   A = C S_r^½ / sqrt(n − 1),
    with C the resample's centred rows (n, D): S_r S_f = S_r^½ (S_r^½ S_f) and S_r^½ S_f S_r^½ =
    (S_r^½ S_f) S_r^½ share their nonzero eigenvalues (XY and YX do), singular S_r included. A^T A
    (D × D) and the Gram matrix A A^T share theirs too, so the smaller one is decomposed. In the Gram
    form (`_resample_fid`, one resample at a time) a row drawn w times enters A once, scaled by sqrt(w),
    so it is k × k for the k ≈ 0.63 n distinct rows; the D × D form (`_nested_fids`) is batched over
    resamples and gathers each position once for all the sizes, so FID_∞'s five sizes cost about one
    FID's products and five eigenvalue problems per resample.
    """
    mu_r, sigma_r = gaussian(real)
    root = psd_sqrt(sigma_r)
    x = fake.double()
    centre = x.mean(0)
    x = x - centre  # resample means are close to the full one: centring on it first keeps the digits
    x_root = x @ root  # every resample's rows of C S_r^½, multiplied once
    shift = mu_r - centre
    rows, trace_r = rows.to(x.device), sigma_r.trace()
    # where a resample's first m positions hold at most D distinct rows: the Gram form, one at a time
    gram = torch.stack([(resample_counts(rows[:, :m], len(x)) > 0).sum(1) <= x.shape[1] for m in sizes], 1)
    widest = max(b - a for a, b in zip([0, *sizes], sizes, strict=False))  # the most positions one size adds
    chunk = max(1, MATRIX_ELEMENTS // (x.shape[1] * (widest + x.shape[1])))
    fids = torch.cat([_nested_fids(x, x_root, shift, trace_r, rows[c], sizes, ~gram[c]) for c in
                      torch.arange(len(rows), device=x.device).split(chunk)])  # fmt: skip
    for r, j in gram.nonzero().tolist():
        fids[r, j] = _resample_fid(x, x_root, shift, trace_r, rows[r, : sizes[j]])
    return fids


def _nested_fids(
    x: torch.Tensor,
    x_root: torch.Tensor,
    shift: torch.Tensor,
    trace_r: torch.Tensor,
    rows: torch.Tensor,
    sizes: list[int],
    wanted: torch.Tensor,
) -> torch.Tensor:
    """`_resample_fid` of the first sizes[k] positions of each of C rows (C, n') at once, in the D × D
    form, where `wanted` (C, K) says (NaN elsewhere): the sums over positions are accumulated from one
    size to the next, so every position enters the products once, and A^T A = (Σ_p r_p r_pᵀ − m μ μᵀ)
    / (m − 1), with r_p = x_root's row at position p and μ their mean, is one batched eigenproblem."""
    count, dim = len(rows), x.shape[1]
    sum_x, sum_root = torch.zeros(2, count, dim, dtype=torch.float64, device=x.device)
    sum_squares = torch.zeros(count, dtype=torch.float64, device=x.device)
    second = torch.zeros(count, dim, dim, dtype=torch.float64, device=x.device)
    fids = torch.full((count, len(sizes)), torch.nan, dtype=torch.float64, device=x.device)
    for k, (start, m) in enumerate(zip([0, *sizes], sizes, strict=False)):
        added, rooted = x[rows[:, start:m]], x_root[rows[:, start:m]]  # (C, m − start, D): the new positions
        sum_x += added.sum(1)
        sum_squares += added.square().sum((1, 2))
        sum_root += rooted.sum(1)
        second += rooted.transpose(1, 2) @ rooted
        chosen = wanted[:, k]
        if not chosen.any():
            continue
        mu_f, mu_root = sum_x[chosen] / m, sum_root[chosen] / m
        trace_f = (sum_squares[chosen] - m * mu_f.square().sum(1)) / (m - 1)
        ata = (second[chosen] - m * mu_root[:, :, None] * mu_root[:, None, :]) / (m - 1)
        cross = torch.linalg.eigvalsh(ata).clamp(min=0).sqrt().sum(1)
        fids[chosen, k] = (shift - mu_f).square().sum(1) + trace_r + trace_f - 2 * cross
    return fids


def _resample_fid(
    x: torch.Tensor, x_root: torch.Tensor, shift: torch.Tensor, trace_r: torch.Tensor, drawn: torch.Tensor
) -> torch.Tensor:
    """FID of the rows `drawn` (n,) of the fake features, repeats allowed: ||mu_r − mu_f||² + Tr S_r + Tr S_f
    − 2 Tr (S_r S_f)^½. x: the features less their full-sample mean; shift: mu_r less that mean; x_root = x S_r^½."""
    n = len(drawn)
    counts = torch.bincount(drawn, minlength=len(x))
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


def centred_interval(point: float, sd: float) -> tuple[float, float]:
    """The 95 % normal interval point ± 1.96 SD, centred on the estimate; the low end clamped at 0, since
    FID and its extrapolation are never negative (KID, unbiased, may be)."""
    return max(point - Z_95 * sd, 0.0), point + Z_95 * sd


# --- FID_∞: FID extrapolated to infinitely many samples (Chong & Forsyth 2020) ---------------------


def fid_sizes(n: int, count: int = FID_INF_SIZES) -> list[int]:
    """The subset sizes of FID_∞: n/count, 2n/count, ..., n (rounded down), each at least 2."""
    if n < 2 * count:
        raise ValueError(f"{n} samples: FID_∞ fits FID at {count} subset sizes of at least 2, so needs {2 * count}")
    return [k * n // count for k in range(1, count + 1)]


def fid_infinity_fit(fids: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """FID_∞ (Chong & Forsyth 2020, sec. 3): FID_N is linear in 1/N to first order (its bias is
    c / N), so the least-squares line FID = a + b / N through FIDs (..., K) at the K subset `sizes` is
    extrapolated to 1/N = 0; the intercepts a (...). All rows share one design matrix, so its
    pseudo-inverse fits every bootstrap resample at once."""
    design = torch.stack([torch.ones(len(sizes)), 1 / torch.tensor(sizes, dtype=torch.float64)], 1).to(fids)
    return fids @ torch.linalg.pinv(design)[0]


def fid_infinity_subsets(real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """FIDs (K,) of the nested subsets of `fid_sizes(len(fake))` of the fake features: the first
    rows of one permutation drawn by a CPU generator seeded `seed` (no repeats), and the sizes."""
    sizes = fid_sizes(len(fake))
    order = torch.randperm(len(fake), generator=torch.Generator().manual_seed(seed))
    return fid_of_rows(real, fake, order[None], sizes)[0], sizes


# --- KID: the unbiased MMD² of the cubic polynomial kernel (Bińkowski et al. 2018) -------------------

KERNEL_BLOCK = 1024  # rows of a kernel block: 1024 × 10,000 in float64 is 80 MB


def polynomial_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x·y / D + 1)³ between the rows of a (m, D) and b (n, D): (m, n)."""
    return (a @ b.T / a.shape[1] + 1) ** 3


def kernel_sums(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_i Σ_j k(a_i, b_j) w_rj for each row w_r of weights (R, len(b)): (R,), a's rows in blocks so that
    no kernel larger than KERNEL_BLOCK × len(b) is held."""
    total = torch.zeros(len(weights), dtype=torch.float64, device=weights.device)
    for block in a.split(KERNEL_BLOCK):
        total += weights @ polynomial_kernel(block, b).sum(0)
    return total


def pair_sums(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_{p≠q} k(y_p, y_q) over the pairs of distinct POSITIONS p, q of each multiset of x's rows, row i
    held w_ri times (weights (R, len(x))): wᵀ K w − Σ_i w_i k(x_i, x_i), since position pairs (p, q)
    holding rows (i, j) number w_i w_j, less the w_i pairs of a position with itself. Two positions
    holding the same row count, as they do in the U-statistic of the materialised resample. Blocked."""
    total = torch.zeros(len(weights), dtype=torch.float64, device=weights.device)
    for block, w in zip(x.split(KERNEL_BLOCK), weights.split(KERNEL_BLOCK, dim=1), strict=True):
        total += ((w @ polynomial_kernel(block, x)) * weights).sum(1)
    diagonal = (x.square().sum(1) / x.shape[1] + 1) ** 3
    return total - weights @ diagonal


def kid_of_weights(
    real: torch.Tensor, fake: torch.Tensor, weights: torch.Tensor, fake_pairs: torch.Tensor
) -> torch.Tensor:
    """KID (R,) of the multisets of fake rows with counts `weights` (R, n), each summing to n, against all
    the real rows: MMD²_u (Bińkowski et al. 2018, eq. 4) =
        Σ_{i≠j} k(x_i, x_j) / (m(m−1)) + Σ_{p≠q} k(y_p, y_q) / (n(n−1)) − 2 Σ_{i,p} k(x_i, y_p) / (mn),
    `fake_pairs` the middle sums (`pair_sums(fake, weights)`, shared by every real set)."""
    x, y = real.double(), fake.double()
    m, n = len(x), len(y)
    ones = torch.ones(1, m, dtype=torch.float64, device=x.device)
    real_pairs = pair_sums(x, ones)[0]
    cross = kernel_sums(x, y, weights.to(x.device))
    return real_pairs / (m * (m - 1)) + fake_pairs.to(x.device) / (n * (n - 1)) - 2 * cross / (m * n)


def kernel_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """KID: the unbiased MMD² U-statistic of the kernel (x·y / D + 1)³ over all real (m, D) and all fake
    (n, D) features (m, n ≥ 2), in float64: an unbiased estimate of the population MMD², whatever n."""
    y = fake.double()
    weights = torch.ones(1, len(y), dtype=torch.float64, device=y.device)
    return float(kid_of_weights(real, y, weights, pair_sums(y, weights))[0])


def resample_counts(indices: torch.Tensor, n: int) -> torch.Tensor:
    """How many times each of n rows is drawn in each resample of `indices` (R, m): (R, n) float64."""
    counts = torch.zeros(len(indices), n, dtype=torch.float64, device=indices.device)
    return counts.scatter_add_(1, indices, torch.ones(indices.shape, dtype=torch.float64, device=indices.device))


def colour_cast(images: torch.Tensor) -> float:
    """The mean over images and pixels of the standard deviation across R, G and B (the population's,
    in units of the [0, 1] range) of uint8 images (N, 3, H, W): 0 for grey images, so for samples of a
    grey dataset it measures the colour the sampler painted; sqrt(2)/3 ≈ 0.471 for pure primaries."""
    return (images.double() / 255).std(dim=1, correction=0).mean().item()
