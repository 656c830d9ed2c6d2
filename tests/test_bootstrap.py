"""The bootstrap of FID, FID_∞ and KID: each resample's FID (at each of FID_∞'s nested sizes) against
`frechet_distance` of the same rows and against 40-digit values, the seeds, and by simulation: the
bootstrap SDs against the spread of the statistics over fresh draws, and FID_∞ against a known FID."""

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


@pytest.mark.parametrize("chunk", [2**26, 1], ids=["one chunk", "a resample a chunk"])
def test_each_resamples_nested_subsets_are_the_fid_of_their_first_rows(chunk: int, monkeypatch) -> None:
    """n = 50 in 9-d: the first size, 10 positions, holds 9 distinct rows in some resamples (the Gram
    form) and 10 in others (the batched D × D form), so both meet in one call."""
    monkeypatch.setattr(metrics, "MATRIX_ELEMENTS", chunk)
    real = normal(300, 9, 0) @ normal(9, 9, 1)
    fake = normal(50, 9, 2) * 0.7 + 0.2
    rows, sizes = metrics.bootstrap_indices(50, 6, seed=0), metrics.fid_sizes(50)
    assert sorted({len(set(drawn[:10].tolist())) for drawn in rows}) == [9, 10]
    values = metrics.fid_of_rows(real, fake, rows, sizes)
    expected = [[metrics.frechet_distance(real, fake[drawn[:m]]) for m in sizes] for drawn in rows]
    # 10 rows in 9-d: a singular S_f, where frechet_distance's own eigenvalues are good to ~1.5e-8 (above)
    assert values[:, 0].tolist() == pytest.approx([row[0] for row in expected], rel=5e-8)
    assert values[:, 1:].tolist() == [pytest.approx(row[1:], rel=1e-10) for row in expected]
    # size n: FID_N's resamples, to the rounding of sums gathered size by size
    assert values[:, -1].tolist() == pytest.approx(metrics.fid_bootstrap(real, fake, 6, seed=0).tolist(), rel=1e-12)


def test_the_bootstrap_sds_match_the_spread_over_fresh_draws() -> None:
    """What the SDs claim: how far FID_N, FID_∞ and KID move with another draw of the n samples, the
    real set fixed. Over 80 draws of n = 100 from N(0.3, 1.2² I) in 3-d, the mean of the bootstrap SDs
    (40 resamples each) over the statistics' SD across the draws (itself good to about 1/√160 = 8 %):
    FID's and FID_∞'s within 20 % of 1 (measured 1.07, 0.96). KID's SE, the U-statistic of each
    resample over its pairs of distinct positions, is conservative (measured 1.34): two positions
    holding one image add k(y, y), a term whose count varies from resample to resample but not from
    draw to draw (1.06 with those pairs left out); a subset spread or a SD over √n falls outside."""
    real = normal(400, 3, 0)
    draws, sds = [], []
    for trial in range(80):
        fake = normal(100, 3, 1000 + trial) * 1.2 + 0.3
        indices = metrics.bootstrap_indices(100, 40, seed=0)
        weights = torch.cat([torch.ones(1, 100, dtype=torch.float64), metrics.resample_counts(indices, 100)])
        kid = metrics.kid_of_weights(real, fake, weights, metrics.pair_sums(fake, weights))
        fids = metrics.fid_of_rows(real, fake, indices, metrics.fid_sizes(100))
        subsets, sizes = metrics.fid_infinity_subsets(real, fake)
        draws.append([subsets[-1].item(), metrics.fid_infinity_fit(subsets, sizes).item(), kid[0].item()])
        sds.append([fids[:, -1].std().item(), metrics.fid_infinity_fit(fids, sizes).std().item(), kid[1:].std().item()])
    ratio = (torch.tensor(sds).mean(0) / torch.tensor(draws).std(0)).tolist()
    assert 0.8 < ratio[0] < 1.25 and 0.8 < ratio[1] < 1.25 and 1.0 < ratio[2] < 1.6, ratio


def test_fid_infinity_removes_most_of_fid_ns_bias() -> None:
    """N(δ, I) in 8-d against real statistics exactly (0, I): the population FID is ||δ||² = 2. FID_N at
    n = 60 is biased upward (a finite sample's covariance is noisier, and noise only adds distance) by
    about c / n: 0.48 here, averaged over 60 draws; FID_∞'s mean lies within a quarter of that of 2
    (measured −0.05)."""
    real, shift = whitened(200, 8, 0), 0.5
    fid_n, fid_inf = [], []
    for trial in range(60):
        fake = normal(60, 8, 500 + trial) + shift
        subsets, sizes = metrics.fid_infinity_subsets(real, fake)
        fid_n.append(subsets[-1].item())
        fid_inf.append(metrics.fid_infinity_fit(subsets, sizes).item())
    bias_n, bias_inf = sum(fid_n) / 60 - 2.0, sum(fid_inf) / 60 - 2.0
    assert bias_n > 0.3 and abs(bias_inf) < bias_n / 4, (bias_n, bias_inf)
