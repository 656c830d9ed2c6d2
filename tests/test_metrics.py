"""The statistics of ddpm/metrics.py against closed forms computed another way: the Gaussians' moments
by hand, FID of features whose means and covariances are known, KID and its resamples by a written-out
double loop, FID_∞'s fit by numpy's polyfit, the centred interval by hand, the resamples' rows pinned.
Pure and fast: these are the tests the mutation run (docs/testing.md) holds the statistics to."""

import math
import statistics

import mpmath
import numpy as np
import pytest
import torch

import ddpm.metrics as metrics


def whitened(n: int, dim: int, seed: int) -> torch.Tensor:
    """n rows (float64) of mean exactly 0 and covariance I up to rounding."""
    z = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    return torch.linalg.solve_triangular(torch.linalg.cholesky(torch.cov(z.T)), z.T, upper=False).T


def test_gaussian_is_the_mean_and_the_unbiased_covariance_in_float64() -> None:
    # deviations from the mean (3, 4): (-2, -2), (0, 2), (2, 0); their products summed over n − 1 = 2
    mean, cov = metrics.gaussian(torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 4.0]], dtype=torch.float32))
    assert mean.dtype == cov.dtype == torch.float64
    assert mean.tolist() == [3.0, 4.0]
    assert cov.tolist() == [[4.0, 2.0], [2.0, 4.0]]


def test_fid_of_gaussians_with_diagonal_covariances_is_the_closed_form() -> None:
    # features with mean mu and covariance diag(a) exactly: FID = ||mu_r − mu_f||² + Σ (√a − √b)²
    a, b = torch.tensor([1.0, 4.0, 0.25, 9.0]), torch.tensor([4.0, 1.0, 0.25, 2.0])
    mu_r, mu_f = torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([1.5, 1.0, 2.0, -3.0])
    real = whitened(60, 4, 0) * a.double().sqrt() + mu_r
    fake = whitened(45, 4, 1) * b.double().sqrt() + mu_f
    expected = sum((x - y) ** 2 for x, y in zip(mu_r.tolist(), mu_f.tolist(), strict=True))
    expected += sum((math.sqrt(x) - math.sqrt(y)) ** 2 for x, y in zip(a.tolist(), b.tolist(), strict=True))
    assert expected == pytest.approx(14.0 + 1 + 1 + (3 - math.sqrt(2)) ** 2)
    assert metrics.frechet_distance(real, fake) == pytest.approx(expected, rel=1e-12)
    assert metrics.frechet_distance(fake, real) == pytest.approx(expected, rel=1e-12)  # symmetric
    assert metrics.frechet_distance(real, real) == pytest.approx(0.0, abs=1e-12)


def test_fid_of_correlated_gaussians_is_the_closed_form() -> None:
    # covariances L Lᵀ that do not commute; Tr (S_r S_f)^½ = Σ √eig(S_r^½ S_f S_r^½), in numpy
    g = torch.Generator().manual_seed(2)
    l_r, l_f = (torch.randn(5, 5, generator=g, dtype=torch.float64) for _ in range(2))
    mu_r, mu_f = (torch.randn(5, generator=g, dtype=torch.float64) for _ in range(2))
    real, fake = whitened(80, 5, 3) @ l_r.T + mu_r, whitened(30, 5, 4) @ l_f.T + mu_f
    s_r, s_f = (l_r @ l_r.T).numpy(), (l_f @ l_f.T).numpy()
    w, v = np.linalg.eigh(s_r)
    root = v @ np.diag(np.sqrt(w)) @ v.T
    cross = np.sqrt(np.linalg.eigvalsh(root @ s_f @ root)).sum()
    expected = float(((mu_r - mu_f) ** 2).sum()) + np.trace(s_r) + np.trace(s_f) - 2 * cross
    assert metrics.frechet_distance(real, fake) == pytest.approx(expected, rel=1e-12)


def test_bootstrap_indices_are_pinned() -> None:
    """A CPU generator seeded `seed` (0 by default): the same rows on every machine."""
    assert metrics.bootstrap_indices(5, 3).tolist() == [[4, 4, 3, 0, 3], [4, 2, 3, 2, 3], [1, 1, 1, 4, 3]]
    assert metrics.bootstrap_indices(5, 3, seed=7).tolist() == [[0, 2, 1, 1, 3], [2, 2, 4, 3, 1], [3, 1, 3, 2, 2]]


def test_psd_sqrt_is_the_symmetric_root_with_negative_rounding_counted_as_zero() -> None:
    c, s = math.cos(0.7), math.sin(0.7)
    q = torch.tensor([[c, -s, 0.0], [s * 0.6, c * 0.6, -0.8], [s * 0.8, c * 0.8, 0.6]], dtype=torch.float64)
    assert torch.allclose(q @ q.T, torch.eye(3, dtype=torch.float64), atol=1e-15)  # a rotation, not the axes
    matrix = q @ torch.diag(torch.tensor([4.0, 9.0, -1e-3], dtype=torch.float64)) @ q.T
    expected = q @ torch.diag(torch.tensor([2.0, 3.0, 0.0], dtype=torch.float64)) @ q.T
    assert torch.allclose(metrics.psd_sqrt(matrix), expected, rtol=0, atol=1e-14)


def test_the_bootstraps_default_seed_is_zero() -> None:
    real = whitened(30, 3, 0)
    fake = whitened(20, 3, 1) + 0.5
    assert torch.equal(metrics.fid_bootstrap(real, fake, 3), metrics.fid_bootstrap(real, fake, 3, seed=0))


def symmetric_integers(n: int, dim: int, seed: int) -> torch.Tensor:
    """Rows z and −z of small integers: every column's mean is exactly 0, every sum exact in float64."""
    z = torch.randint(-20, 21, (n // 2, dim), generator=torch.Generator().manual_seed(seed)).double()
    return torch.cat([z, -z])


def test_features_far_from_the_origin_keep_their_digits() -> None:
    """FID does not move when both sets move by the same vector. The bootstrap centres the fake features
    on their own column means before anything else, so an offset of ±1e7 per column, whose means are then
    exact, changes no digit; centred on anything else (on the one mean of all entries, ~0 here) the
    resamples' covariances would be differences of numbers ~1e7 and lose ~1e-10 of the FID."""
    real, fake = symmetric_integers(300, 8, 0), symmetric_integers(200, 8, 1)
    fake[:, 0] += 0.5
    offset = 1e7 * torch.tensor([1.0, -1.0] * 4, dtype=torch.float64)
    near = metrics.fid_bootstrap(real, fake, 4)
    far = metrics.fid_bootstrap(real + offset, fake + offset, 4)
    assert far.tolist() == pytest.approx(near.tolist(), rel=1e-13)


def exact_fid(real: list[list[float]], fake: list[list[float]]) -> mpmath.mpf:
    """FID at 40 digits: Tr (S_r S_f)^½ = Σ √eig(S_r^½ S_f S_r^½), all symmetric, in mpmath."""

    def moments(x: list[list[float]]) -> tuple[list, mpmath.matrix]:
        n, dim = len(x), len(x[0])
        mu = [mpmath.fsum(row[j] for row in x) / n for j in range(dim)]
        cov = mpmath.matrix(dim, dim)
        for i in range(dim):
            for j in range(dim):
                cov[i, j] = mpmath.fsum((row[i] - mu[i]) * (row[j] - mu[j]) for row in x) / (n - 1)
        return mu, cov

    with mpmath.workdps(40):
        (mu_r, s_r), (mu_f, s_f) = moments(real), moments(fake)
        w, v = mpmath.eigsy(s_r)
        root = v * mpmath.diag([mpmath.sqrt(max(e, 0)) for e in w]) * v.T
        inner = root * s_f * root
        cross = mpmath.fsum(mpmath.sqrt(max(e, 0)) for e in mpmath.eigsy((inner + inner.T) / 2)[0])
        traces = mpmath.fsum(s_r[i, i] + s_f[i, i] for i in range(len(mu_r)))
        return mpmath.fsum((x - y) ** 2 for x, y in zip(mu_r, mu_f, strict=True)) + traces - 2 * cross


def test_a_resample_of_as_many_distinct_rows_as_dimensions_takes_the_gram_form() -> None:
    """k = D distinct rows: the D × D form A^T A has an exact zero eigenvalue that rounding may leave
    positive, ~1e-16 of the largest, its square root adding ~1e-8; the k × k Gram form drops it."""
    real = (torch.arange(30 * 6).reshape(30, 6) ** 2 % 23).double()
    fake = (torch.arange(7 * 6).reshape(7, 6) ** 3 % 19).double()
    drawn = metrics.bootstrap_indices(7, 1, seed=0)[0]
    assert len(set(drawn.tolist())) == 6  # k = D
    expected = float(exact_fid(real.tolist(), fake[drawn].tolist()))
    assert metrics.fid_bootstrap(real, fake, 1, seed=0).item() == pytest.approx(expected, rel=1e-12)


def test_the_interval_is_centred_on_the_point_and_clamped_at_zero() -> None:
    assert metrics.centred_interval(10.0, 2.0) == pytest.approx((10.0 - 3.919928, 10.0 + 3.919928), abs=1e-6)
    assert metrics.centred_interval(1.0, 2.0) == (0.0, pytest.approx(1.0 + 3.919928, abs=1e-6))
    assert metrics.Z_95 == pytest.approx(statistics.NormalDist().inv_cdf(0.975), rel=1e-15)


def test_fid_infinity_is_numpys_least_squares_line_in_one_over_n_at_zero() -> None:
    sizes = [20, 40, 60, 80, 100]
    fids = torch.tensor([[3.1, 2.4, 2.3, 2.05, 2.0], [1.0, 0.2, 0.5, 0.1, 0.3]], dtype=torch.float64)
    expected = [np.polyfit(1 / np.array(sizes), row, 1)[1] for row in fids.numpy()]
    assert metrics.fid_infinity_fit(fids, sizes).tolist() == pytest.approx(expected, rel=1e-12)
    exact = 1.5 + 40 / torch.tensor(sizes, dtype=torch.float64)  # on the line a + b/N: its intercept a
    assert metrics.fid_infinity_fit(exact, sizes).item() == pytest.approx(1.5, rel=1e-12)


def test_fid_infinity_takes_five_nested_subsets_from_n_over_5_to_n() -> None:
    assert metrics.fid_sizes(10) == [2, 4, 6, 8, 10] and metrics.fid_sizes(10_000) == [2000, 4000, 6000, 8000, 10000]
    assert metrics.fid_sizes(13) == [2, 5, 7, 10, 13]
    with pytest.raises(ValueError, match="9 samples: FID_∞ fits FID at 5 subset sizes of at least 2, so needs 10"):
        metrics.fid_sizes(9)
    real, fake = whitened(60, 4, 0), whitened(45, 4, 1) * 1.5 + 0.2
    fids, sizes = metrics.fid_infinity_subsets(real, fake)
    order = torch.randperm(45, generator=torch.Generator().manual_seed(0))  # one permutation: nested, no repeats
    expected = [metrics.frechet_distance(real, fake[order[:m]]) for m in sizes]
    assert sizes == [9, 18, 27, 36, 45] and fids.tolist() == pytest.approx(expected, rel=1e-10)
    assert fids[-1].item() == pytest.approx(metrics.frechet_distance(real, fake), rel=1e-10)  # all: FID_N


def kid_by_loops(real: torch.Tensor, fake: torch.Tensor) -> float:
    """MMD²_u written out (Bińkowski et al. 2018, eq. 4) in Python floats: Σ_{i≠j} k(x_i, x_j) / (m(m − 1))
    + Σ_{i≠j} k(y_i, y_j) / (n(n − 1)) − 2 Σ_{i,j} k(x_i, y_j) / (mn), k(a, b) = (a·b / D + 1)³; a row
    repeated in `fake` is two positions, paired with each other as with any other."""
    x, y, dim = real.tolist(), fake.tolist(), real.shape[1]

    def k(a: list[float], b: list[float]) -> float:
        return (sum(p * q for p, q in zip(a, b, strict=True)) / dim + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return xx + yy - 2 * sum(k(a, b) for a in x for b in y) / (m * n)


def test_kid_is_the_unbiased_mmd_of_the_cubic_kernel_over_all_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.randn(12, 5, generator=g)  # float32, as features come: the statistics are float64
    fake = torch.randn(10, 5, generator=g) * 1.3 + 0.4
    expected = kid_by_loops(real.double(), fake.double())
    assert metrics.kernel_distance(real, fake) == pytest.approx(expected, rel=1e-12)
    monkeypatch.setattr(metrics, "KERNEL_BLOCK", 3)  # blocks that do not divide the rows: the same sums
    assert metrics.kernel_distance(real, fake) == pytest.approx(expected, rel=1e-12)


def test_kid_of_each_resample_is_the_u_statistic_of_its_materialised_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(1)
    real, fake = (
        torch.randn(9, 4, generator=g, dtype=torch.float64),
        torch.randn(8, 4, generator=g, dtype=torch.float64),
    )
    indices = metrics.bootstrap_indices(8, 4, seed=2)
    weights = metrics.resample_counts(indices, 8)
    assert weights.sum(1).tolist() == [8.0] * 4 and (weights > 1).any()  # rows repeated
    monkeypatch.setattr(metrics, "KERNEL_BLOCK", 3)
    values = metrics.kid_of_weights(real, fake, weights, metrics.pair_sums(fake, weights))
    assert values.tolist() == pytest.approx([kid_by_loops(real, fake[drawn]) for drawn in indices], rel=1e-12)


def test_the_colour_cast_is_the_mean_spread_across_red_green_and_blue() -> None:
    grey = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(2, 3, 16, 16)
    assert metrics.colour_cast(grey) == 0
    red = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    red[:, 0] = 255
    assert metrics.colour_cast(red) == pytest.approx(math.sqrt(2) / 3, abs=1e-12)  # sd of (1, 0, 0)
    # half the pixels (0, 51, 102), whose sd is 51·sqrt(2/3)/255, half grey: the mean of the two
    mixed = torch.tensor([0, 51, 102], dtype=torch.uint8).reshape(1, 3, 1, 1).repeat(1, 1, 2, 2)
    mixed[..., 1] = 7
    assert metrics.colour_cast(mixed) == pytest.approx(statistics.pstdev([0, 51, 102]) / 255 / 2, abs=1e-12)
