"""The verdicts of ddpm/verdicts.py and the seed aggregation they judge (ddpm/results.py's table_rows).

Each test formula against an independent computation (closed forms of Student's t at 1 and 2 degrees
of freedom, math.erfc, a brute-force Holm from its definition, the literature's example), and the
error rates of the whole procedure by simulation: reports of schedules that do not differ, fed to the
verdict code in the form compare gives it (per-seed values; per-resample statistics of an honest
bootstrap with the same rows on both sides; per-image values with a shared component), call anything
real at most α of the time; a stated shift is found as often as the noncentral t says. These are the
tests the mutation runs of docs/testing.md hold the verdict code to."""

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ddpm.results import RunResult, metric_names, sweep_columns, table_rows
from ddpm.student import two_sided_p
from ddpm.verdicts import ALPHA, NLL, ONE_SEED, family, holm, judge, pair_tests, paired_bootstrap, paired_t, pairs

# --- each formula against an independent computation ------------------------------------------------


def test_the_pairs_are_every_two_schedules_in_the_reports_order() -> None:
    assert [tuple(map(int, p)) for p in zip(*pairs(4), strict=True)] == [
        (0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)
    ]  # fmt: skip
    assert pairs(1)[0].size == 0


def test_the_paired_t_is_students_t_at_n_minus_1_degrees_of_freedom() -> None:
    # d = a − b = (1, 2, 3) over 3 seeds, under a seed effect shared by both (pairing cancels it):
    # mean 2, sd 1, se 1/√3, t = 2√3; Student's t at 2 df: P(|T| > t) = 1 − t/√(2 + t²)
    seed_effect = np.array([100.0, -50.0, 7.0])
    x = np.stack([seed_effect + [1.0, 2.0, 3.0], seed_effect])
    tested = paired_t(x, "seeds")
    t = 2 * math.sqrt(3)
    assert tested.gap == pytest.approx([2.0], rel=1e-12) and tested.se == pytest.approx([1 / math.sqrt(3)], rel=1e-12)
    assert tested.p == pytest.approx([1 - t / math.sqrt(2 + t * t)], rel=1e-9)  # 0.0742, not the normal's 0.0005
    assert tested.how == "paired t over 3 seeds"
    # two seeds: Student's t at 1 df is Cauchy, P(|T| > t) = 1 − (2/π) atan(t); d = (−10, −12): t = 11
    two = paired_t(np.array([[10.0, 14.0], [20.0, 26.0]]), "seeds")
    assert two.p == pytest.approx([1 - 2 / math.pi * math.atan(11)], rel=1e-9)


def test_the_bootstrap_p_is_students_on_the_sd_of_the_paired_resampled_gaps() -> None:
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 5, 400)  # the resampled rows' common part: it cancels in a_b − b_b
    draws = np.stack([shared + rng.normal(0, 0.1, 400) + 0.3, shared + rng.normal(0, 0.1, 400)])
    # N = 3 samples: SE = sd(a_b − b_b)·√(3/2), Student's t at 2 df: P(|T| > t) = 1 − t/√(2 + t²)
    tested = paired_bootstrap(np.array([3.3, 3.0]), draws, 3)
    se = float(np.std(draws[0] - draws[1], ddof=1)) * math.sqrt(1.5)
    assert se < 0.3  # paired: about √3 · 0.1, where hypot of each side's spread would be about 7
    assert tested.gap == pytest.approx([0.3]) and tested.se == pytest.approx([se], rel=1e-12)
    t = 0.3 / se
    assert tested.p == pytest.approx([1 - t / math.sqrt(2 + t * t)], rel=1e-9)
    assert tested.how == "paired bootstrap over 400 resamples"
    # many samples: the normal, 2(1 − Φ(z)) = erfc(z/√2)
    many = paired_bootstrap(np.array([3.3, 3.0]), draws, 10**9)
    assert many.p == pytest.approx([math.erfc(0.3 / many.se[0] / math.sqrt(2))], rel=1e-6)


def test_no_noise_at_all_is_p_0_for_a_gap_and_1_for_none() -> None:
    tested = paired_t(np.array([[1.0, 2.0], [0.0, 1.0], [1.0, 2.0]]), "seeds")  # pairs 01, 02, 12
    assert tested.p.tolist() == [0.0, 1.0, 0.0]


def holm_by_definition(p: list[float], alpha: float) -> list[bool]:
    """Holm (1979): order the p-values; reject H_(1), H_(2), … while p_(k) ≤ α/(m − k + 1), and stop at
    the first that is not."""
    m = len(p)
    rejected = [False] * m
    for k, i in enumerate(sorted(range(m), key=lambda i: p[i])):
        if p[i] > alpha / (m - k):
            break
        rejected[i] = True
    return rejected


def adjusted_by_definition(p: list[float]) -> list[float]:
    """Each hypothesis's adjusted p-value: the smallest α at which Holm's procedure rejects it; the
    decisions change only where α crosses some (m − k + 1)·p_(k), so those are the candidates."""
    m = len(p)
    candidates = sorted({(m - k) * q for k, q in enumerate(sorted(p))})
    return [min(1.0, next(a for a in candidates if holm_by_definition(p, a * (1 + 1e-12))[i])) for i in range(m)]


def test_holm_is_the_step_down_procedure_of_its_definition() -> None:
    # the literature's example (Holm 1979 as taught): 0.01, 0.04, 0.03, 0.005 at α = 0.05 rejects the first
    # and the last; adjusted 4·0.005, 3·0.01, then max(2·0.03, 1·0.04) twice
    example = np.array([0.01, 0.04, 0.03, 0.005])
    assert holm(example) == pytest.approx([0.03, 0.06, 0.06, 0.02], rel=1e-12)
    assert (holm(example) <= 0.05).tolist() == holm_by_definition(example.tolist(), 0.05) == [True, False, False, True]
    rng = np.random.default_rng(1)
    for m in (1, 2, 3, 5, 8, 12):
        for _ in range(40):
            p = rng.choice([rng.uniform(0, 0.1, m), rng.uniform(0, 1, m), rng.choice([0.01, 0.02, 0.5], m)])
            assert holm(p) == pytest.approx(adjusted_by_definition(p.tolist()), rel=1e-9, abs=1e-15), p
            for alpha in (0.01, 0.05, 0.2):
                assert (holm(p) <= alpha).tolist() == holm_by_definition(p.tolist(), alpha), (p, alpha)
    batch = rng.uniform(0, 0.2, (7, 5))  # a leading batch axis: each row on its own
    assert holm(batch) == pytest.approx(np.stack([holm(row) for row in batch]), rel=1e-15)


# --- the error rates, by simulation ----------------------------------------------------------------

REPORTS = 2000  # simulated reports per case: the Monte Carlo SD of a 5 % rate is 0.5 %
SCHEDULES = 4


def tolerance(rate: float, n: int = REPORTS) -> float:
    """Three binomial standard deviations of a rate measured on n reports."""
    return 3 * math.sqrt(rate * (1 - rate) / n)


SAMPLES = 100  # per run, at one seed


def one_seed_report(rng: np.random.Generator, shift: np.ndarray, samples: int = SAMPLES, resamples: int = 100) -> tuple:
    """Values and draws of REPORTS reports of len(shift) schedules at one seed, as compare reads them from
    eval.json and resamples.npz: FID and KID stand-ins are means of per-sample values that share a part
    across schedules (sample i starts from the same x_T), resampled with the same rows for every run; NLL
    has per-image values sharing the image's part. `shift` moves each schedule's population value."""
    counts = np.stack([np.bincount(rng.integers(0, samples, samples), minlength=samples) for _ in range(resamples)])
    values, draws = {}, {}
    for metric in ("fid", "kid_mean", NLL):
        shared = rng.normal(0, 2, (REPORTS, 1, samples))
        per_sample = shared + rng.normal(0, 1, (REPORTS, len(shift), samples)) + shift[:, None]
        values[metric] = per_sample.mean(-1, keepdims=True)  # (reports, schedules, 1 seed)
        draws[metric] = per_sample if metric == NLL else per_sample @ counts.T / samples
    return values, draws


def seeds_report(rng: np.random.Generator, seeds: int, shift: np.ndarray, metrics: int = 3) -> dict:
    """Per-seed values of REPORTS reports: a seed's effect shared by every schedule trained with it, plus
    each run's own noise (SD 1), plus each schedule's `shift`."""
    shape = (REPORTS, len(shift), seeds)
    return {
        f"m{k}": rng.normal(0, 3, (REPORTS, 1, seeds)) + rng.normal(0, 1, shape) + shift[:, None]
        for k in range(metrics)
    }


def any_real(values: dict, draws: dict) -> np.ndarray:
    """Per report: whether the verdict code called any pair on any metric real."""
    return (family(pair_tests(values, draws, SAMPLES))[1] <= ALPHA).any(-1)


@pytest.mark.parametrize("seeds", [1, 2, 3, 5])
def test_identical_schedules_are_called_different_at_most_alpha_of_the_time(seeds: int) -> None:
    rng = np.random.default_rng(seeds)
    null = np.zeros(SCHEDULES)
    values, draws = one_seed_report(rng, null) if seeds == 1 else (seeds_report(rng, seeds, null), {})
    assert all(
        t.p.shape == (REPORTS, 6) for t in pair_tests(values, draws, SAMPLES).values()
    )  # 3 metrics × 6 pairs judged
    rate = any_real(values, draws).mean()
    assert rate <= ALPHA + tolerance(ALPHA), f"family-wise false 'real' rate {rate:.3f} at {seeds} seeds"


def test_a_shift_of_3_paired_sds_over_3_seeds_is_found_as_often_as_the_noncentral_t_says() -> None:
    rng = np.random.default_rng(7)
    seeds, sd_paired = 3, math.sqrt(2)  # each run's own noise has SD 1: the paired difference √2
    values = seeds_report(rng, seeds, np.array([3 * sd_paired, 0.0]), metrics=1)  # one test: Holm changes nothing
    found = any_real(values, {}).mean()
    c, shift = stats.t.ppf(1 - ALPHA / 2, seeds - 1), 3 * math.sqrt(seeds)  # the noncentrality δ√n/σ_d
    predicted = stats.nct.sf(c, seeds - 1, shift) + stats.nct.cdf(-c, seeds - 1, shift)
    assert predicted == pytest.approx(0.745, abs=1e-3)
    assert abs(found - predicted) <= tolerance(predicted), (found, predicted)
    # the same data, unpaired (Welch's t): the seeds' shared effect (SD 3) is noise to it
    a, b = values["m0"][:, 0], values["m0"][:, 1]
    welch = stats.ttest_ind(a, b, axis=-1, equal_var=False).pvalue
    assert (welch <= ALPHA).mean() < found - 0.4


def test_a_shift_at_one_seed_is_found_by_the_paired_bootstrap_as_the_normal_says() -> None:
    rng = np.random.default_rng(8)
    samples = 200  # the gap of the means has SD √2/√200 = 0.1 (the shared part cancels)
    values, draws = one_seed_report(rng, np.array([0.3, 0.0]), samples=samples, resamples=200)
    fid = {"fid": values["fid"]}
    found = (family(pair_tests(fid, {"fid": draws["fid"]}, samples))[1] <= ALPHA).mean()
    z, c = 0.3 / 0.1, stats.norm.ppf(1 - ALPHA / 2)
    predicted = stats.norm.cdf(z - c) + stats.norm.cdf(-z - c)  # 0.85
    assert abs(found - predicted) <= tolerance(predicted) + 0.01, (found, predicted)  # + the bootstrap's bias
    nll = {NLL: values[NLL]}
    assert (
        abs((family(pair_tests(nll, {NLL: draws[NLL]}, samples))[1] <= ALPHA).mean() - predicted)
        <= tolerance(predicted) + 0.01
    )


# --- a report's verdicts from its runs ----------------------------------------------------------------


def fake(name: str, seed: int, draws: dict | None = None, **evaluation: float) -> RunResult:
    """One run as read_results returns it, with the scores `evaluation` and resamples `draws`."""
    scores = {"num_samples": 50, "bootstrap": 3, **evaluation}
    return RunResult(name, seed, {}, {}, scores, None, None, np.zeros((1, 2)), Path("g"), None, draws or {})


def test_several_seeds_are_judged_by_the_paired_t_holm_adjusted_the_primary_first() -> None:
    runs = [
        fake("linear", 0, fid_r=10.0, kid_r_mean=0.010, nll_bpd=3.0),
        fake("linear", 1, fid_r=14.0, kid_r_mean=0.014, nll_bpd=3.5),
        fake("cosine", 0, fid_r=20.0, kid_r_mean=0.014, nll_bpd=2.0),
        fake("cosine", 1, fid_r=26.0, kid_r_mean=0.017, nll_bpd=2.49),
    ]
    nll, fid, kid = judge(runs, "nll")
    cauchy = lambda t: 1 - 2 / math.pi * math.atan(t)  # noqa: E731  Student's t at 1 df
    # d = a − b per seed: NLL (1, 1.01): t = 1.005/0.005 = 201; FID (−10, −12): t = 11; KID (−0.004, −0.003): t = 7
    raw = [cauchy(201), cauchy(11), cauchy(7)]
    assert [v.p for v in (nll, fid, kid)] == pytest.approx(raw, rel=1e-7)
    # Holm: 3·0.0032, 2·0.058, then max(2·0.058, 1·0.090): the adjusted p-values never decrease with p
    assert [v.p_holm for v in (nll, fid, kid)] == pytest.approx([3 * raw[0], 2 * raw[1], 2 * raw[1]], rel=1e-7)
    assert (nll.metric, nll.primary, fid.primary) == ("nll_bpd", True, False)
    assert nll.gap == pytest.approx(1.005) and fid.gap == pytest.approx(-11) and fid.se == pytest.approx(1.0)
    assert nll.test == "paired t over 2 seeds" and nll.real and nll.words() == "cosine lower, a real difference"
    assert not fid.real and not kid.real and kid.words() == "within noise"
    assert [v.metric for v in judge(runs, "fid")] == ["fid_r", "kid_r_mean", "nll_bpd"]
    assert [v.primary for v in judge(runs, "kid")] == [True, False, False]
    assert judge(runs[:2], "fid") == []  # one schedule: no pair


def test_one_seed_is_judged_on_the_paired_resamples_and_says_it_measured_sampling_noise_only() -> None:
    a = {"fid_r": np.array([10.0, 10.4, 9.8, 10.1]), NLL: np.array([3.0, 3.2, 2.9])}
    b = {"fid_r": np.array([12.0, 12.1, 12.0, 12.2]), NLL: np.array([3.0, 3.3, 2.9])}
    runs = [
        fake("linear", 0, a, fid_r=10.0, kid_r_mean=0.01, nll_bpd=3.1, bootstrap=4, nll_images=3),
        fake("cosine", 0, b, fid_r=12.0, kid_r_mean=0.02, nll_bpd=3.2, bootstrap=4, nll_images=3),
    ]
    fid, kid, nll = judge(runs, "fid")
    se = float(np.std(a["fid_r"] - b["fid_r"], ddof=1)) * math.sqrt(50 / 49)  # N = 50 samples
    assert fid.test == "paired bootstrap over 4 resamples" and fid.se == pytest.approx(se)
    assert fid.p == pytest.approx(2 * stats.t.sf(2 / se, 49), rel=1e-9) and fid.gap == pytest.approx(-2.0)
    assert fid.real and fid.words() == f"linear lower, {ONE_SEED}"
    assert "a real difference" not in fid.words()
    # NLL: the per-image differences (0, −0.1, 0): mean −1/30, sd 1/√300 · √… : Student's t at 2 df
    d = a[NLL] - b[NLL]
    t = abs(d.mean()) / (d.std(ddof=1) / math.sqrt(3))
    assert nll.test == "paired t over 3 held-out images" and nll.p == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert nll.p_holm == pytest.approx(nll.p)  # the larger of two: max(2 p_fid, 1 p_nll)
    assert not kid.judged and kid.p is None and kid.gap == pytest.approx(-0.01)
    assert kid.words() == (
        "not judged: one seed and no kid_r_mean in resamples.npz for linear (run `ddpm evaluate` again, or add seeds)"
    )
    as_json = fid.as_json()
    assert as_json["p_holm"] == fid.p_holm and as_json["verdict"] == fid.words() and as_json["primary"] is True
    single = [fake(r.name, 0, {"fid_r": r.draws["fid_r"][:1]}, fid_r=r.evaluation["fid_r"]) for r in runs]
    assert (
        judge(single, "fid")[0].words()
        == "not judged: one seed and a single fid_r in resamples.npz, so no spread (add seeds)"
    )
    bare = [fake(r.name, 0, None, fid_r=r.evaluation["fid_r"], kid_r_mean=0.0) for r in runs]  # no resamples.npz
    assert judge(bare, "fid")[0].words() == (
        "not judged: one seed and no resamples.npz for linear (run `ddpm evaluate` again, or add seeds)"
    )
    off = [fake(r.name, 0, None, fid_r=r.evaluation["fid_r"], kid_r_mean=0.0, bootstrap=0) for r in runs]
    assert judge(off, "fid")[0].words() == (
        "not judged: one seed and evaluate.bootstrap is 0, so no resamples (add seeds, or set evaluate.bootstrap)"
    )


# --- the table's rows ---------------------------------------------------------------------------------


def test_metric_names_follow_the_extractor() -> None:
    assert metric_names(["final_loss", "fid_sd", "fid", "fid_inf", "kid_mean"]) == ("fid", "kid_mean", "kid_se")
    assert metric_names(["steps", "fid_clipfid_inf", "fid_clipfid"]) == (
        "fid_clipfid",
        "kid_clipfid_mean",
        "kid_clipfid_se",
    )


def test_the_sweep_columns_are_each_samplers_10_and_50_nfe_else_its_first_two_counts() -> None:
    fid = {"fid_randconv": 1.0}
    row_all = fid | {f"fid_randconv_ddim{k}": 1.0 for k in (5, 10, 20, 50)} | {"fid_randconv_ddpm10": 1.0}
    row_all |= {f"fid_randconv_dpmsolverpp{k}": 1.0 for k in (5, 20, 30)} | {"fid_randconv_dpmsolverpp5_sd": 0.1}
    assert sweep_columns(row_all) == [("fid_randconv_ddim10", "ddim", 10), ("fid_randconv_ddim50", "ddim", 50),
                                      ("fid_randconv_dpmsolverpp5", "dpmsolver++", 5),
                                      ("fid_randconv_dpmsolverpp20", "dpmsolver++", 20)]  # fmt: skip
    only_50 = fid | {"fid_randconv_ddim50_std_seeds": 0.1, "fid_randconv_ddim5": 1.0, "fid_randconv_ddim50": 1.0}
    assert sweep_columns(only_50) == [("fid_randconv_ddim50", "ddim", 50)]
    assert sweep_columns(fid | {"kid_randconv_ddim10": 1.0, "fid_ddim10": 1.0}) == []  # another metric's


def run(name: str, seed: int, fid: float, loss: float, swept: bool = True, **evaluation: float) -> RunResult:
    """One run as read_results returns it, with FID `fid` and its sweep at fid + 1, + 0.5 (DDIM), fid + 2
    (DPM-Solver++, MLflow's dpmsolverpp), − 0.5 (DDPM)."""
    train = {"final_loss": loss, "steps": 100, "train_seconds": 60 + seed, "images_per_second": 2.5}
    scores = {"fid_randconv": fid, "kid_randconv_mean": 0.01 * fid, "kid_randconv_se": 0.001, **evaluation}
    scores |= {"num_samples": 50, "feature_extractor": "randconv", "checkpoint_sha256": "ab"}  # not table numbers
    sweep = {"samplers": ["ddim", "dpmsolver++"], "ddim": {"10": fid + 1, "50": fid + 0.5},
             "dpmsolver++": {"10": fid + 2}, "ddpm": {"100": fid - 0.5}, "num_samples": 8}  # fmt: skip
    return RunResult(name, seed, {}, train, scores, sweep if swept else None, None, np.zeros((1, 2)), Path("g"), None)


def test_table_rows_are_the_mean_and_the_sample_std_over_seeds() -> None:
    results = [
        run("linear", 0, 1.0, 0.1, fid_randconv_sd=0.5, fid_randconv_inf=0.5, nll_bpd=3.0),
        run("cosine", 0, 5.0, 0.2),
        run("linear", 1, 2.0, 0.3, fid_randconv_sd=1.0, fid_randconv_inf=1.0, nll_bpd=3.5),
        run("sigmoid", 3, 6.0, 0.5),
        run("linear", 2, 4.0, 0.2, fid_randconv_sd=3.0, fid_randconv_inf=3.0, nll_bpd=4.0),
        run("sigmoid", 4, 7.0, 0.5),
    ]
    linear, cosine, sigmoid = table_rows(results)
    assert [(r["schedule"], r["seeds"], r["num_samples"]) for r in (linear, cosine, sigmoid)] == [
        ("linear", "0 1 2", 50), ("cosine", "0", 50), ("sigmoid", "3 4", 50)
    ]  # fmt: skip
    # FID over the seeds 1, 2, 4: mean 7/3, std with ddof 1: √(((1 − 7/3)² + (2 − 7/3)² + (4 − 7/3)²)/2) = √(7/3)
    assert linear["fid_randconv"] == pytest.approx(7 / 3, rel=1e-15)
    assert linear["fid_randconv_std_seeds"] == pytest.approx(math.sqrt(7 / 3), rel=1e-15)
    assert linear["kid_randconv_mean"] == pytest.approx(0.07 / 3) and linear["kid_randconv_se"] == 0.001
    assert linear["fid_randconv_inf"] == pytest.approx(1.5) and linear["fid_randconv_sd"] == pytest.approx(1.5)
    assert linear["nll_bpd"] == 3.5 and linear["nll_bpd_std_seeds"] == 0.5
    assert linear["fid_randconv_ddim10"] == pytest.approx(10 / 3)
    assert linear["fid_randconv_ddpm100"] == pytest.approx(11 / 6)
    assert linear["fid_randconv_dpmsolverpp10"] == pytest.approx(13 / 3)
    assert linear["final_loss"] == pytest.approx(0.2) and linear["final_loss_std_seeds"] == pytest.approx(0.1)
    assert linear["train_seconds"] == 61.0 and linear["train_seconds_std_seeds"] == 1.0
    # one seed: its own numbers, no spread; nothing it did not measure, and no non-number
    assert cosine == {
        "schedule": "cosine", "seeds": "0", "num_samples": 50, "fid_randconv": 5.0, "kid_randconv_mean": 0.05,
        "kid_randconv_se": 0.001, "fid_randconv_ddim10": 6.0, "fid_randconv_ddim50": 5.5,
        "fid_randconv_dpmsolverpp10": 7.0,
        "fid_randconv_ddpm100": 4.5, "sweep_num_samples": 8, "final_loss": 0.2, "steps": 100.0, "train_seconds": 60.0,
        "images_per_second": 2.5,
    }  # fmt: skip
    numbers = set(cosine) - {"schedule", "seeds", "num_samples"}
    assert set(sigmoid) == set(cosine) | {f"{k}_std_seeds" for k in numbers}  # two seeds: a spread
    assert sigmoid["fid_randconv"] == 6.5 and sigmoid["fid_randconv_std_seeds"] == pytest.approx(math.sqrt(0.5))


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 8, 39, 49, 100, 999, 9999, 200_000, 200_001, 10**9])
def test_students_two_sided_tail_equals_scipys(df: int) -> None:
    t = np.array([0.0, 0.05, 0.3, 1.0, 1.96, 2.5, 4.0, 8.0, 30.0, -2.5])
    tolerance = 3e-12 if df <= 200_000 else 2e-11  # the exact series, then Fisher's first term
    assert two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(np.abs(t), df), abs=tolerance, rel=1e-9)
    assert two_sided_p(np.inf, df) == 0.0 and two_sided_p(0.0, df) == 1.0


def test_students_tail_takes_whole_degrees_of_freedom_only() -> None:
    for df in (0, 2.5, -1):
        with pytest.raises(ValueError, match="whole degrees of freedom from 1"):
            two_sided_p(np.array([1.0]), df)
