"""Student's t distribution at whole degrees of freedom, in numpy: the two-sided tail the verdicts'
p-values need, without scipy (the GPU machine's image has no scipy, and its wheel would not fit the
carry). The tests check it against scipy.stats.t.
"""

import math

import numpy as np

SERIES_LIMIT = 200_000  # degrees of freedom up to which the exact series is summed (100,000 terms at most)


def two_sided_p(t: np.ndarray, df: int) -> np.ndarray:
    """P(|T| ≥ |t|) for T Student's t with `df` ≥ 1 degrees of freedom, elementwise.

    Abramowitz & Stegun 26.7.3-4: with θ = atan(|t|/√ν), P(|T| ≤ |t|) is
        ν = 1:      2θ/π
        ν odd > 1:  (2/π) [θ + sin θ (cos θ + (2/3) cos³θ + … + (2·4···(ν−3))/(1·3···(ν−2)) cos^(ν−2) θ)]
        ν even:     sin θ [1 + (1/2) cos²θ + (1·3)/(2·4) cos⁴θ + … + (1·3···(ν−3))/(2·4···(ν−2)) cos^(ν−2) θ]
    each term the one before times cos²θ and a ratio, summed over (ν−1)/2 terms at most. A p-value
    below ~1e-15 comes out as 0 (1 less a sum near 1), which no verdict tells apart from 1e-15.
    Past SERIES_LIMIT degrees of freedom, the first term of Fisher's (1925) expansion in 1/ν."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df {df}: Student's t here takes whole degrees of freedom from 1")
    if df > SERIES_LIMIT:
        return _fisher_expansion(np.abs(np.asarray(t, dtype=np.float64)), df)
    theta = np.arctan(np.abs(np.asarray(t, dtype=np.float64)) / np.sqrt(df))
    sin, cos2 = np.sin(theta), np.cos(theta) ** 2
    odd = df % 2 == 1
    count = (df - 3) // 2 + 1 if odd else (df - 2) // 2 + 1  # terms of the series (0 for ν = 1)
    k = np.arange(1, max(count, 1))
    ratios = (2 * k) / (2 * k + 1) if odd else (2 * k - 1) / (2 * k)
    # term_0 = cos θ (odd) or 1 (even); term_k = term_{k−1} · cos²θ · ratio_k
    powers = np.cumprod(cos2[..., None] * ratios, axis=-1) if count > 1 else np.zeros((*theta.shape, 0))
    series = 1.0 + powers.sum(-1)
    if odd:
        inside = 2 / np.pi * (theta + (sin * np.sqrt(cos2) * series if df > 1 else 0.0))
    else:
        inside = sin * series
    return np.clip(1.0 - inside, 0.0, 1.0)


def _fisher_expansion(t: np.ndarray, df: int) -> np.ndarray:
    """P(|T| ≥ t) for large ν: F_ν(t) = Φ(t) − φ(t) (t³ + t)/(4ν) + O(ν⁻²) (Fisher 1925), which past
    SERIES_LIMIT degrees of freedom errs by less than 2e-11 (measured against scipy.stats.t)."""
    t = np.minimum(t, 40.0)  # beyond, both terms are 0 in float64 (and ∞ would make 0 · ∞)
    normal_tail = np.vectorize(math.erfc, otypes=[np.float64])(t / math.sqrt(2))  # 2 (1 − Φ(t))
    density = np.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    return np.clip(normal_tail + 2 * density * (t**3 + t) / (4 * df), 0.0, 1.0)
