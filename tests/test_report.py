from pathlib import Path

import numpy as np
from conftest import invoke
from PIL import Image

from ddpm.data import synthetic_flowers
from ddpm.report import STRIP_STEPS, noised_strip


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
