"""The bootstrap of FID: each resample's FID against `frechet_distance` of the same rows and against
40-digit values, the seeds, and the basic interval around Gaussian features of known FID."""

import pytest
import torch

import ddpm.metrics as metrics


def normal(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def whitened(n: int, dim: int, seed: int) -> torch.Tensor:
    """n rows with mean exactly 0 and covariance exactly I, so that the FID of N(δ, I) to them is ||δ||²."""
    z = normal(n, dim, seed)
    z = z - z.mean(0)
    return torch.linalg.solve_triangular(torch.linalg.cholesky(torch.cov(z.T)), z.T, upper=False).T


@pytest.mark.parametrize(
    ("num_real", "n", "dim"), [(500, 300, 16), (500, 20, 32), (20, 100, 32)], ids=["n>D", "n<D", "singular S_r"]
)
def test_each_resample_is_the_fid_of_its_rows(num_real: int, n: int, dim: int) -> None:
    real = normal(num_real, dim, 0) @ normal(dim, dim, 1) + 1  # correlated, so S_r^½ is no multiple of I
    fake = normal(n, dim, 2) @ normal(dim, dim, 3) * 0.5 + 0.3
    values = metrics.fid_bootstrap(real, fake, 8, seed=5)
    assert values.dtype == torch.float64 and values.shape == (8,)
    expected = [metrics.frechet_distance(real, fake[drawn]) for drawn in metrics.bootstrap_indices(n, 8, seed=5)]
    # where a covariance is singular, S_r S_f has zero eigenvalues that eigvals returns as rounding noise
    # of ~1e-16 of the largest, each adding its square root, so frechet_distance itself is good to only
    # ~1.5e-8 there (test_resamples_match_40_digit_values pins the exact numbers)
    assert values.tolist() == pytest.approx(expected, rel=1e-10 if min(num_real, n) > dim else 5e-8)


def test_resamples_match_40_digit_values() -> None:
    """Integer features (exact in float64) and n = 12 < D = 16; the expected FIDs are those of the same
    rows with mpmath at 40 digits (the eigenvalues of S_r S_f from the exact rationals). They pin
    `bootstrap_indices` too: a CPU generator draws the same rows on every machine."""
    real = (torch.arange(40 * 16).reshape(40, 16) ** 2 % 23).double()
    fake = (torch.arange(12 * 16).reshape(12, 16) ** 2 % 17).double()
    exact = [514.60071580873194295, 511.37351482633456385, 478.11983332068590358]
    assert metrics.fid_bootstrap(real, fake, 3, seed=0).tolist() == pytest.approx(exact, rel=1e-12)


def test_the_seed_fixes_the_resamples() -> None:
    real, fake = normal(200, 8, 0), normal(100, 8, 1) + 0.5
    first = metrics.fid_bootstrap(real, fake, 20, seed=0)
    assert torch.equal(first, metrics.fid_bootstrap(real, fake, 20, seed=0))
    assert not torch.allclose(first, metrics.fid_bootstrap(real, fake, 20, seed=1))


def test_the_interval_holds_the_estimate_and_narrows_with_more_samples() -> None:
    real = normal(2000, 4, 0)
    widths = []
    for n in (50, 800):
        fake = normal(n, 4, n) + 0.5
        fid = metrics.frechet_distance(real, fake)
        low, high = metrics.fid_basic_interval(fid, metrics.fid_bootstrap(real, fake, 200))
        assert low <= fid <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # 16× the samples: about a quarter of the width


def test_the_interval_covers_a_known_fid() -> None:
    """N(δ, I) against real statistics exactly (0, I): FID = ||δ||² = 4. At n = 400, D = 16 the estimate's
    upward bias (~0.2) is comparable to its spread, so the basic interval covers about 95% of the time,
    where the percentile interval, twice the bias too high, covers about a third."""
    real, shift = whitened(100, 16, 0), 0.5
    covered = 0
    for trial in range(20):
        fake = normal(400, 16, 100 + trial) + shift
        low, high = metrics.fid_basic_interval(
            metrics.frechet_distance(real, fake), metrics.fid_bootstrap(real, fake, 100, trial)
        )
        covered += low <= 16 * shift**2 <= high
    assert covered >= 16


def test_the_interval_is_clamped_at_zero_and_checks_its_level() -> None:
    low, high = metrics.fid_basic_interval(0.1, torch.linspace(0.05, 0.5, 101, dtype=torch.float64), level=0.9)
    assert low == 0.0 and high == pytest.approx(2 * 0.1 - 0.0725)
    with pytest.raises(ValueError, match="level 95"):
        metrics.fid_basic_interval(1.0, torch.ones(10, dtype=torch.float64), level=95)
