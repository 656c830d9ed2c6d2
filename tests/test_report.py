from pathlib import Path

import numpy as np
from conftest import invoke
from PIL import Image

from ddpm.data import synthetic_flowers
from ddpm.plots import STRIP_STEPS, noised_strip
from ddpm.verdicts import differences, standard_error


def test_the_strip_goes_from_the_image_to_noise_and_rows_differ_only_by_schedule() -> None:
    image = synthetic_flowers(1, 16)[0]
    strip, steps = noised_strip(["linear", "cosine"], 1000, image)
    assert strip.shape == (2 * 16, STRIP_STEPS * 16, 3) and strip.dtype == np.uint8
    assert steps[0] == 0 and steps[-1] == 999
    first = strip[:16, :16].astype(int)  # linear at t = 0: alphā = 1 − 1e-4, almost the image
    assert np.abs(first - image.transpose(1, 2, 0)).mean() < 2
    last_linear, last_cosine = strip[:16, -16:].astype(int), strip[16:, -16:].astype(int)
    assert np.abs(last_linear - last_cosine).mean() < 2  # both are (nearly) the same pure noise
    middle = STRIP_STEPS // 2 * 16
    assert np.abs(strip[:16, middle : middle + 16].astype(int) - strip[16:, middle : middle + 16]).mean() > 10


def test_schedules_command_draws_both_pictures(tmp_path: Path) -> None:
    result = invoke("schedules", "linear", "sigmoid", "--out", "pics", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    with Image.open(tmp_path / "pics" / "schedules.png") as picture:
        assert picture.size == (1000, 400)
    with Image.open(tmp_path / "pics" / "forward.png") as picture:
        assert picture.size == (1250, 320)
    bad = invoke("schedules", "cosin", cwd=tmp_path)
    assert bad.exit_code == 2
    assert bad.stderr.strip() == (
        "ddpm: error: unknown beta schedule 'cosin'; expected one of: linear, cosine, quadratic, sigmoid"
    )


def row(schedule: str, seeds: str = "0", **numbers: float) -> dict:
    return {"schedule": schedule, "seeds": seeds, "kid_mean": 0.01, "kid_se": 0.002, **numbers}


def test_a_difference_beyond_twice_the_combined_standard_error_is_called_real_and_one_within_it_noise() -> None:
    # one seed: FID judged by its bootstrap intervals, the half-width of each 1.96 standard errors
    a = row("linear", fid=10.0, fid_ci_low=10.0 - 1.959964, fid_ci_high=10.0 + 1.959964, final_loss=0.05)
    b = row(
        "cosine", fid=13.0, fid_ci_low=13.0 - 1.959964, fid_ci_high=13.0 + 1.959964, final_loss=0.04, kid_mean=0.012
    )
    said = differences([a, b])
    assert said[0] == (
        "- fid: linear is lower than cosine by 3, 2.1 combined standard errors: a real difference "
        "(judged by FID's bootstrap interval, sampling noise only)"
    )
    assert said[1] == (  # KID: judged by its bootstrap standard error
        "- kid_mean: linear is lower than cosine by 0.002, within noise (0.7 combined standard errors) "
        "(judged by KID's bootstrap standard error, sampling noise only)"
    )
    assert len(said) == 2  # the loss is not judged: each schedule sets it another task
    b["fid"] = b["fid_ci_low"] + 1.959964 - 0.2  # 2.8: under 2 · √2
    assert "within noise (2.0 combined standard errors)" in differences([a, b])[0]


def test_over_seeds_the_standard_error_is_the_seeds_spread_over_the_root_of_their_number() -> None:
    a = row("linear", "0 1 2 3", nll_bpd=3.0, nll_bpd_std_seeds=0.2, nll_bpd_sem=0.001)
    assert standard_error(a, "nll_bpd") == (0.1, "the spread over 4 seeds")  # not the held-out images' 0.001
    del a["nll_bpd_std_seeds"]
    assert standard_error(a, "nll_bpd") == (0.001, "the spread over the held-out images")
    assert standard_error(a, "final_loss") is None
