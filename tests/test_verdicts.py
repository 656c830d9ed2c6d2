"""The verdicts of ddpm/verdicts.py and the seed aggregation they judge (ddpm/results.py's table_rows) on
hand-made numbers: each source of a standard error, the exact threshold of 2 combined standard errors,
the wording of every line, and the rows' means and standard deviations over seeds. Pure and fast: these
are the tests the mutation run (docs/testing.md) holds the verdict code to."""

import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from ddpm.results import RunResult, metric_names, sweep_columns, table_rows
from ddpm.verdicts import SPREAD_FACTOR, Z_95, differences, standard_error

BOOTSTRAP = "FID's bootstrap interval, sampling noise only"
KID = "the spread over KID's subsets"


def test_the_constants_are_two_standard_errors_and_the_normal_95_quantile() -> None:
    assert SPREAD_FACTOR == 2.0
    assert Z_95 == pytest.approx(statistics.NormalDist().inv_cdf(0.975), abs=1e-6)


def row(schedule: str, seeds: str = "0", **numbers: float) -> dict:
    return {"schedule": schedule, "seeds": seeds, **numbers}


def test_the_standard_error_over_seeds_is_their_spread_over_the_root_of_their_number() -> None:
    nine = row("linear", " ".join(map(str, range(9))), fid=5.0, fid_std_seeds=0.3, fid_ci_low=1.0, fid_ci_high=9.0)
    assert standard_error(nine, "fid") == (pytest.approx(0.1), "the spread over 9 seeds")  # not the interval's
    two = row("linear", "0 1", kid_mean=0.01, kid_mean_std_seeds=0.004, kid_std=1.0)  # not KID's subsets
    assert standard_error(two, "kid_mean") == (pytest.approx(0.004 / math.sqrt(2)), "the spread over 2 seeds")


def test_with_one_seed_the_interval_gives_its_half_width_over_z() -> None:
    one = row("cosine", fid_randconv=3.0, fid_randconv_ci_low=2.0, fid_randconv_ci_high=2.0 + 4 * Z_95)
    assert standard_error(one, "fid_randconv") == (pytest.approx(2.0, rel=1e-15), BOOTSTRAP)


def test_with_one_seed_the_likelihood_gives_its_held_out_images_spread() -> None:
    one = row("cosine", nll_bpd=3.5, nll_bpd_sem=0.02, fid=4.0)
    assert standard_error(one, "nll_bpd") == (0.02, "the spread over the held-out images")
    assert standard_error(one, "fid") is None  # the likelihood's spread is no measure of FID's noise
    assert standard_error(row("cosine", nll_bpd=3.5), "nll_bpd") is None


def test_with_one_seed_kid_gives_its_subsets_spread() -> None:
    one = row("cosine", kid_randconv_mean=0.02, kid_randconv_std=0.005, kid_std=9.0, fid_mean=1.0)
    assert standard_error(one, "kid_randconv_mean") == (0.005, KID)
    assert standard_error(one, "kid_randconv_std") is None  # the std itself: nothing measures its noise
    assert standard_error(one, "fid_mean") is None  # a "_mean" that is not KID's


def judged(fid_a: float, fid_b: float, se_a: float, se_b: float) -> str:
    """The one line on FID between two schedules of four seeds each whose spreads give the standard errors
    se_a and se_b (the spread over the root of 4: twice the standard error, halved exactly)."""
    a = row("linear", "0 1 2 3", fid=fid_a, fid_std_seeds=2 * se_a)
    b = row("cosine", "0 1 2 3", fid=fid_b, fid_std_seeds=2 * se_b)
    [line] = differences([a, b])
    return line


SEEDS = "(judged by the spread over 4 seeds)"


def test_the_threshold_is_exactly_two_combined_standard_errors() -> None:
    # standard errors 3 and 4: combined exactly √(3² + 4²) = 5, the threshold exactly 10
    assert judged(0.0, 10.0 + 1e-9, 3.0, 4.0) == (
        f"- fid: linear is lower than cosine by 10, 2.0 combined standard errors: a real difference {SEEDS}"
    )
    assert judged(0.0, 10.0 - 1e-9, 3.0, 4.0) == (
        f"- fid: linear is lower than cosine by 10, within noise (2.0 combined standard errors) {SEEDS}"
    )
    assert judged(0.0, 10.0, 3.0, 4.0) == (  # exactly 2 is not more than 2
        f"- fid: linear is lower than cosine by 10, within noise (2.0 combined standard errors) {SEEDS}"
    )
    assert judged(10.0, 0.0, 4.0, 3.0) == (  # the lower one named first whichever comes first
        f"- fid: cosine is lower than linear by 10, within noise (2.0 combined standard errors) {SEEDS}"
    )


def test_the_combined_standard_error_takes_one_from_each_schedule() -> None:
    assert judged(0.0, 0.4, 0.1, 0.0).endswith(", 4.0 combined standard errors: a real difference " + SEEDS)
    assert "within noise (1.4 combined standard errors)" in judged(0.0, 1.4, 1.0, 0.0)  # hypot(1, 0) = 1
    assert "within noise (1.4 combined standard errors)" in judged(0.0, 1.4, 0.0, 1.0)
    assert "within noise (1.0 combined standard errors)" in judged(0.0, 1.4, 1.0, 1.0)  # hypot(1, 1) = √2


def test_no_noise_at_all_is_within_noise_without_a_ratio() -> None:
    assert judged(1.0, 3.0, 0.0, 0.0) == f"- fid: linear is lower than cosine by 2, within noise {SEEDS}"
    assert judged(2.0, 2.0, 0.0, 0.0) == f"- fid: linear is lower than cosine by 0, within noise {SEEDS}"


def interval(fid: float, se: float) -> dict[str, float]:
    """One seed's FID with a bootstrap interval Z_95 standard errors either side."""
    return {"fid": fid, "fid_ci_low": fid - se * Z_95, "fid_ci_high": fid + se * Z_95}


def test_every_pair_every_metric_in_order_with_the_lower_named_first() -> None:
    kid = {"kid_mean": 0.01, "kid_std": 0.001}
    a = row("linear", **interval(10.0, 1.0), **kid, nll_bpd=3.0, nll_bpd_sem=0.01, fid_ddim10=21.0, fid_ddim50=12.0)
    b = row("cosine", **interval(8.0, 1.0), **kid, nll_bpd=3.5, fid_ddim10=20.0, fid_ddim50=15.0)  # no nll_bpd_sem
    c = row("sigmoid", **interval(7.0, 0.1), nll_bpd=3.0, nll_bpd_sem=0.01, fid_ddim10=30.0)  # no KID, no ddim50
    not_judged = "; one seed and no other measure of noise, so not judged (add seeds)"
    assert differences([a, b, c]) == [
        f"- fid: cosine is lower than linear by 2, within noise (1.4 combined standard errors) (judged by {BOOTSTRAP})",
        # a tie: the first of the pair is named first
        f"- kid_mean: linear is lower than cosine by 0, within noise (0.0 combined standard errors) (judged by {KID})",
        "- nll_bpd: linear is lower than cosine by 0.5" + not_judged,
        "- fid_ddim10: cosine is lower than linear by 1" + not_judged,  # the sweep: no noise measured
        "- fid_ddim50: linear is lower than cosine by 3" + not_judged,
        # hypot(1, 0.1) = 1.005: 3 / 1.005 = 2.99
        f"- fid: sigmoid is lower than linear by 3, 3.0 combined standard errors: a real difference (judged by "
        f"{BOOTSTRAP})",
        "- nll_bpd: linear is lower than sigmoid by 0, within noise (0.0 combined standard errors) (judged by "
        "the spread over the held-out images)",
        "- fid_ddim10: linear is lower than sigmoid by 9" + not_judged,
        f"- fid: sigmoid is lower than cosine by 1, within noise (1.0 combined standard errors) "
        f"(judged by {BOOTSTRAP})",
        "- nll_bpd: sigmoid is lower than cosine by 0.5" + not_judged,
        "- fid_ddim10: cosine is lower than sigmoid by 10" + not_judged,
    ]
    assert differences([a]) == []  # one schedule: no pair
    assert differences([c, a])[0].startswith("- fid: sigmoid is lower than linear by 3")  # the keys of the first row


def test_the_sources_of_both_standard_errors_are_named_once_each() -> None:
    seeds = row("linear", "0 1 2 3", fid=10.0, fid_std_seeds=2.0)
    assert differences([seeds, row("cosine", **interval(13.0, 1.0))]) == [
        "- fid: linear is lower than cosine by 3, 2.1 combined standard errors: a real difference "
        f"(judged by the spread over 4 seeds and {BOOTSTRAP})"
    ]


def test_metric_names_follow_the_extractor_and_change_only_the_first_fid() -> None:
    assert metric_names(["final_loss", "fid", "kid_mean"]) == ("fid", "kid_mean", "kid_std")
    assert metric_names(["steps", "fid_clipfid"]) == ("fid_clipfid", "kid_clipfid_mean", "kid_clipfid_std")


def test_the_sweep_columns_are_10_and_50_steps_else_the_first_two_counts() -> None:
    fid = {"fid_randconv": 1.0}
    row_all = fid | {f"fid_randconv_ddim{k}": 1.0 for k in (5, 10, 20, 50)} | {"fid_randconv_ddpm10": 1.0}
    assert sweep_columns(row_all) == ["fid_randconv_ddim10", "fid_randconv_ddim50"]
    only_50 = fid | {"fid_randconv_ddim50_std_seeds": 0.1, "fid_randconv_ddim5": 1.0, "fid_randconv_ddim50": 1.0}
    assert sweep_columns(only_50) == ["fid_randconv_ddim50"]
    others = fid | {"fid_randconv_ddim2_std_seeds": 0.1, "fid_randconv_ddim2": 1.0, "fid_randconv_ddim5": 1.0}
    others |= {"fid_randconv_ddim7": 1.0, "fid_randconv_ddim11": 1.0, "fid_randconv_ddim51": 1.0}
    assert sweep_columns(others) == ["fid_randconv_ddim2", "fid_randconv_ddim5"]  # not the std, not a third
    assert sweep_columns(fid | {"kid_randconv_ddim10": 1.0, "fid_ddim10": 1.0}) == []  # another metric's


def run(name: str, seed: int, fid: float, loss: float, swept: bool = True, **evaluation: float) -> RunResult:
    """One run as read_results returns it, with FID `fid` and its sweep at fid + 1, + 0.5 (DDIM), − 0.5 (DDPM)."""
    train = {"final_loss": loss, "steps": 100, "train_seconds": 60 + seed, "images_per_second": 2.5}
    scores = {"fid_randconv": fid, "kid_randconv_mean": 0.01 * fid, "kid_randconv_std": 0.001, **evaluation}
    scores |= {"num_samples": 50, "feature_extractor": "randconv", "checkpoint_sha256": "ab"}  # not table numbers
    sweep = {"ddim": {"10": fid + 1, "50": fid + 0.5}, "ddpm": {"100": fid - 0.5}, "num_samples": 8}
    return RunResult(name, seed, {}, train, scores, sweep if swept else None, None, np.zeros((1, 2)), Path("g"), None)


def test_table_rows_are_the_mean_and_the_sample_std_over_seeds() -> None:
    results = [
        run("linear", 0, 1.0, 0.1, fid_randconv_ci_low=0.5, fid_randconv_ci_high=1.5, nll_bpd=3.0),
        run("cosine", 0, 5.0, 0.2),
        run("linear", 1, 2.0, 0.3, fid_randconv_ci_low=1.0, fid_randconv_ci_high=2.5, nll_bpd=3.5),
        run("sigmoid", 3, 6.0, 0.5),
        run("linear", 2, 4.0, 0.2, fid_randconv_ci_low=3.0, fid_randconv_ci_high=6.0, nll_bpd=4.0),
        run("sigmoid", 4, 7.0, 0.5),
    ]
    linear, cosine, sigmoid = table_rows(results)
    assert [(r["schedule"], r["seeds"]) for r in (linear, cosine, sigmoid)] == [
        ("linear", "0 1 2"), ("cosine", "0"), ("sigmoid", "3 4")
    ]  # fmt: skip
    # FID over the seeds 1, 2, 4: mean 7/3, std with ddof 1: √(((1 − 7/3)² + (2 − 7/3)² + (4 − 7/3)²)/2) = √(7/3)
    assert linear["fid_randconv"] == pytest.approx(7 / 3, rel=1e-15)
    assert linear["fid_randconv_std_seeds"] == pytest.approx(math.sqrt(7 / 3), rel=1e-15)
    assert linear["kid_randconv_mean"] == pytest.approx(0.07 / 3) and linear["kid_randconv_std"] == 0.001
    assert linear["kid_randconv_mean_std_seeds"] == pytest.approx(math.sqrt(7 / 3) / 100)
    assert linear["kid_randconv_std_std_seeds"] == 0.0
    assert linear["fid_randconv_ci_low"] == 1.5 and linear["fid_randconv_ci_high"] == pytest.approx(10 / 3)
    assert linear["nll_bpd"] == 3.5 and linear["nll_bpd_std_seeds"] == 0.5
    assert linear["fid_randconv_ddim10"] == pytest.approx(10 / 3)
    assert linear["fid_randconv_ddim50"] == pytest.approx(17 / 6)
    assert linear["fid_randconv_ddpm100"] == pytest.approx(11 / 6)
    assert linear["final_loss"] == pytest.approx(0.2) and linear["final_loss_std_seeds"] == pytest.approx(0.1)
    assert linear["steps"] == 100.0 and linear["steps_std_seeds"] == 0.0
    assert linear["train_seconds"] == 61.0 and linear["train_seconds_std_seeds"] == 1.0
    assert linear["images_per_second"] == 2.5
    # one seed: its own numbers, no spread; nothing it did not measure, and no non-number
    assert cosine == {
        "schedule": "cosine", "seeds": "0", "fid_randconv": 5.0, "kid_randconv_mean": 0.05, "kid_randconv_std": 0.001,
        "fid_randconv_ddim10": 6.0, "fid_randconv_ddim50": 5.5, "fid_randconv_ddpm100": 4.5, "sweep_num_samples": 8,
        "final_loss": 0.2, "steps": 100.0, "train_seconds": 60.0, "images_per_second": 2.5,
    }  # fmt: skip
    numbers = set(cosine) - {"schedule", "seeds"}
    assert set(sigmoid) == set(cosine) | {f"{k}_std_seeds" for k in numbers}  # two seeds: a spread
    assert sigmoid["fid_randconv"] == 6.5 and sigmoid["fid_randconv_std_seeds"] == pytest.approx(math.sqrt(0.5))
    assert sigmoid["train_seconds"] == 63.5 and sigmoid["train_seconds_std_seeds"] == pytest.approx(math.sqrt(0.5))
    numbers |= {"fid_randconv_ci_low", "fid_randconv_ci_high", "nll_bpd"}
    assert set(linear) == {"schedule", "seeds"} | numbers | {f"{k}_std_seeds" for k in numbers}


def test_a_run_without_a_sweep_keeps_the_likelihoods_numbers() -> None:
    [only] = table_rows([run("cosine", 2, 5.0, 0.2, False, nll_bpd=3.0, nll_bpd_sem=0.01, nll_prior_bpd=0.001)])
    assert only == {
        "schedule": "cosine", "seeds": "2", "fid_randconv": 5.0, "kid_randconv_mean": 0.05, "kid_randconv_std": 0.001,
        "nll_bpd": 3.0, "nll_bpd_sem": 0.01, "nll_prior_bpd": 0.001,
        "final_loss": 0.2, "steps": 100.0, "train_seconds": 62.0, "images_per_second": 2.5,
    }  # fmt: skip
