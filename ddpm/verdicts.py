"""Which differences between schedules are real: a paired test of every pair of schedules on every
judged metric, and Holm's correction over all of them, so that a report of identical schedules calls
anything real at most ALPHA of the time.

- Several training seeds (the same for every schedule): a two-sided Student t on the per-seed
  differences, n − 1 degrees of freedom. One seed gives both schedules the same initial weights, batch
  order and x_T, so their runs share much of their noise, and the difference cancels it.
- One seed: a paired bootstrap of the gap. Entry b of each run's resamples.npz is its statistic on the
  same resampled sample rows (sample i of every run starts from the same x_T), so gap_b = a_b − b_b
  and the gap's standard error is their standard deviation (paired_bootstrap says how it is judged).
  NLL: a paired t over the held-out images (the same images and ε for every run). This measures
  sampling noise at this training seed only.

The functions below take a leading batch shape (...), so a simulation of many reports
(tests/test_verdicts.py) runs the very code a report runs.
"""

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from ddpm.layout import RESAMPLES
from ddpm.results import RunResult, label, metric_names
from ddpm.student import two_sided_p

ALPHA = 0.05  # the family-wise error rate of one report's verdicts
ONE_SEED = "beyond sampling noise at this training seed; training-seed variance unmeasured (add seeds)"
# compare.primary → the eval.json name of the pre-declared test's metric ({fid}: fid or fid_<extractor>)
PRIMARY = {"fid": "{fid}", "fid_inf": "{fid}_inf", "kid": "{kid}_mean", "kid_holdout": "{kid}_holdout_mean",
           "nll": "nll_bpd"}  # fmt: skip
NLL = "nll_bpd"  # judged on its per-image bits/dim at one seed, the others on their bootstrap resamples


def judged_metrics(fid: str) -> list[str]:
    """The metrics a verdict is given on, in the report's order: not the training loss (each schedule
    sets it another task), not the sweep's FIDs (no measure of their noise)."""
    kid = fid.replace("fid", "kid", 1)
    return [fid, f"{fid}_inf", f"{kid}_mean", f"{kid}_holdout_mean", NLL]


def pairs(schedules: int) -> tuple[np.ndarray, np.ndarray]:
    """The indices (first, second) of every pair of `schedules`, in the order the report lists them."""
    first, second = zip(*combinations(range(schedules), 2), strict=True) if schedules > 1 else ((), ())
    return np.array(first, dtype=int), np.array(second, dtype=int)


@dataclass
class Tested:
    """The tests of one metric on every pair, each array (..., pairs): the gap (first − second), its
    standard error and the two-sided p-value; `how` says which test, in words."""

    gap: np.ndarray
    se: np.ndarray
    p: np.ndarray
    how: str


def paired_t(x: np.ndarray, over: str) -> Tested:
    """The paired Student t test of each pair of schedules on x (..., schedules, k): k paired observations
    (seeds, or held-out images) of each. d = first − second; t = mean(d)/(sd(d)/√k) at k − 1 degrees of
    freedom."""
    first, second = pairs(x.shape[-2])
    d = x[..., first, :] - x[..., second, :]
    k = d.shape[-1]
    gap, se = d.mean(-1), d.std(-1, ddof=1) / np.sqrt(k)
    return Tested(gap, se, _two_sided(gap, se, k - 1), f"paired t over {k} {over}")


def paired_bootstrap(point: np.ndarray, draws: np.ndarray, samples: int) -> Tested:
    """The paired bootstrap test of each pair on its point values (..., schedules) and its resampled
    values (..., schedules, B), entry b of every schedule on the same resampled rows of `samples` samples.
    SE = sd(a_b − b_b)·√(N/(N − 1)), p = 2 P(T_{N−1} ≥ |gap|/SE): the gap of two smooth statistics of the
    same N samples behaves as a mean of N paired terms, whose bootstrap variance is the plug-in one, short
    by (N − 1)/N, and whose studentised value is Student's t at N − 1 degrees of freedom (the normal at
    the real experiment's N; with the normal, 6.4 % of null gaps at 100 samples were called real).
    Not the share of gap_b past 0: resampling repeats images, which biases each resampled FID upwards, so
    only their spread is used (Efron & Tibshirani 1993, §6 and §12)."""
    first, second = pairs(point.shape[-1])
    gap = point[..., first] - point[..., second]
    se = (draws[..., first, :] - draws[..., second, :]).std(-1, ddof=1) * np.sqrt(samples / (samples - 1))
    how = f"paired bootstrap over {draws.shape[-1]} resamples"
    return Tested(gap, se, _two_sided(gap, se, samples - 1), how)


def _two_sided(gap: np.ndarray, se: np.ndarray, df: int) -> np.ndarray:
    """P(|T| ≥ |gap|/se), T Student's t at `df` degrees of freedom; with no noise at all, 0 for a gap
    and 1 for none."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = two_sided_p(np.abs(gap) / se, df)
    return np.where(se > 0, p, np.where(gap != 0, 0.0, 1.0))


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values over the last axis: sorted p_(1) ≤ … ≤ p_(m) become
    max_{j ≤ i} min(1, (m − j + 1) p_(j)); H_i is rejected at family-wise level α iff its adjusted p ≤ α."""
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, -1)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ranked), axis=-1)
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, -1)
    return out


def pair_tests(values: dict[str, np.ndarray], draws: dict[str, np.ndarray], samples: int) -> dict[str, Tested]:
    """Every pair's test on each metric that can be judged: values[metric] (..., schedules, seeds), the
    metric of each run; draws[metric] (..., schedules, B or M), one seed's resamples of its `samples`
    samples (per held-out image for NLL). Several seeds: the paired t over seeds; one seed: the draws,
    where there are any."""
    tested = {}
    for metric, x in values.items():
        if x.shape[-1] > 1:
            tested[metric] = paired_t(x, "seeds")
        elif metric in draws and draws[metric].shape[-1] > 1:  # one draw has no spread
            one_seed = paired_t(draws[metric], "held-out images") if metric == NLL else None
            tested[metric] = one_seed or paired_bootstrap(x[..., 0], draws[metric], samples)
    return tested


def family(tested: dict[str, Tested]) -> tuple[np.ndarray, np.ndarray]:
    """The raw and Holm-adjusted p-values of every test of one report, (..., metrics × pairs), in the
    order of `tested`: one family, the primary test among the others."""
    raw = np.concatenate([t.p for t in tested.values()], axis=-1)
    return raw, holm(raw)


@dataclass
class Verdict:
    """One pair of schedules on one metric."""

    first: str
    second: str
    metric: str
    gap: float  # first − second; lower is better on every judged metric
    se: float | None
    p: float | None
    p_holm: float | None
    test: str  # which test, or why none
    primary: bool
    seeds: int

    @property
    def judged(self) -> bool:
        return self.p_holm is not None

    @property
    def real(self) -> bool:
        return self.judged and self.p_holm <= ALPHA

    def words(self) -> str:
        if not self.judged:
            return f"not judged: {self.test}"
        if not self.real:
            return "within noise"
        lower = self.first if self.gap < 0 else self.second
        return f"{lower} lower, " + ("a real difference" if self.seeds > 1 else ONE_SEED)

    def as_json(self) -> dict[str, Any]:
        return {"first": self.first, "second": self.second, "metric": self.metric, "primary": self.primary,
                "gap": self.gap, "se": self.se, "p": self.p, "p_holm": self.p_holm, "test": self.test,
                "real": self.real, "verdict": self.words()}  # fmt: skip


def primary_metric(fid: str, primary: str) -> str:
    """compare.primary as its metric's name under this extractor (fid → fid_randconv, kid → kid_randconv_mean)."""
    return PRIMARY[primary].format(fid=fid, kid=fid.replace("fid", "kid", 1))


def judge(results: list[RunResult], primary: str) -> list[Verdict]:
    """The verdict on every pair of schedules and judged metric measured by every run, the primary
    metric's first; Holm-adjusted over all of them."""
    names = list(dict.fromkeys(r.name for r in results))
    runs = [[r for r in results if r.name == name] for name in names]
    seeds = len(runs[0])
    fid = metric_names(results[0].evaluation)[0]
    wanted = primary_metric(fid, primary)
    metrics = [m for m in judged_metrics(fid) if all(m in r.evaluation for r in results)]
    metrics.sort(key=lambda m: m != wanted)  # stable: the primary first, the others in their order
    values = {m: np.array([[r.evaluation[m] for r in group] for group in runs]) for m in metrics}
    draws = {m: np.stack([group[0].draws[m] for group in runs]) for m in metrics
             if seeds == 1 and all(m in group[0].draws for group in runs)}  # fmt: skip
    tested = pair_tests(values, draws, results[0].evaluation["num_samples"])
    adjusted = dict(zip(tested, np.split(family(tested)[1], len(tested)) if tested else [], strict=True))
    first, second = pairs(len(names))
    verdicts = []
    for m in metrics:
        for k, (i, j) in enumerate(zip(first, second, strict=True)):
            gap = float(values[m][i].mean() - values[m][j].mean())
            common = {"first": names[i], "second": names[j], "metric": m, "primary": m == wanted, "seeds": seeds}
            if m in tested:
                t = tested[m]
                verdicts.append(Verdict(**common, gap=float(t.gap[k]), se=float(t.se[k]), p=float(t.p[k]),
                                        p_holm=float(adjusted[m][k]), test=t.how))  # fmt: skip
            else:
                verdicts.append(Verdict(**common, gap=gap, se=None, p=None, p_holm=None, test=_why_not(results, m)))
    return verdicts


def _why_not(results: list[RunResult], metric: str) -> str:
    """Why a metric of one seed has no test: nothing measured its sampling noise."""
    if any(r.evaluation.get("bootstrap", 0) == 0 for r in results) and metric != NLL:
        return "one seed and evaluate.bootstrap is 0, so no resamples (add seeds, or set evaluate.bootstrap)"
    lacking = next((r for r in results if metric not in r.draws), None)
    if lacking is None:
        return f"one seed and a single {metric} in {RESAMPLES}, so no spread (add seeds)"
    where = f"no {RESAMPLES}" if not lacking.draws else f"no {metric} in {RESAMPLES}"
    return f"one seed and {where} for {label(lacking)} (run `ddpm evaluate` again, or add seeds)"
