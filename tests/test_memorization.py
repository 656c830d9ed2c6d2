"""ddpm.memorization: the two nearest training images of each sample against scipy's brute force, the
copy rule d₁/d₂ < 1/3 (Yoon et al. 2023) on a "model" that returns training images and on fresh draws
of the synthetic flowers, the closest pairs, duplicates in the training set, and the report's picture."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.distance import cdist

from ddpm.data import synthetic_flowers
from ddpm.errors import UserError
from ddpm.features import RandConv
from ddpm.layout import RunFolder
from ddpm.memorization import (
    Neighbours,
    as_measured,
    closest_pairs,
    distinct_images,
    measure,
    memorized,
    nearest_two,
    trained_with_flips,
)
from ddpm.plots import plot_nearest
from ddpm.report import closest_images, memorization_section
from ddpm.results import RunResult

CPU = torch.device("cpu")
TRAINING = synthetic_flowers(48, 16)  # the synthetic source's own generator, as data.source=synthetic draws it


def features(images: np.ndarray) -> torch.Tensor:
    """The offline extractor's features (224-d), float64 as evaluate hands them over."""
    with torch.inference_mode():
        return RandConv()(torch.from_numpy(images)).double()


def brute_force(samples: np.ndarray, training: np.ndarray, mirrored: bool) -> np.ndarray:
    """Every sample–training distance (N, M), scipy's, in the arrays' own units."""
    a, b = samples.reshape(len(samples), -1).astype(np.float64), training.reshape(len(training), -1).astype(np.float64)
    distances = cdist(a, b)
    if mirrored:
        distances = np.minimum(distances, cdist(a, training[..., ::-1].reshape(len(training), -1).astype(np.float64)))
    return distances


@pytest.mark.parametrize("mirrored", [False, True])
def test_the_two_nearest_agree_with_scipy_across_ragged_blocks(mirrored: bool) -> None:
    samples = synthetic_flowers(23, 16, seed=3)
    found = nearest_two(samples, TRAINING, CPU, mirrored=mirrored, block=5)  # 5 and 10 blocks, both ragged
    expected = brute_force(samples, TRAINING, mirrored)
    order = np.argsort(expected, axis=1, kind="stable")[:, :2]
    np.testing.assert_allclose(found.distances, np.take_along_axis(expected, order, 1), rtol=1e-12)
    np.testing.assert_array_equal(found.indices[:, 0], order[:, 0])
    assert (found.indices[:, 0] != found.indices[:, 1]).all()
    np.testing.assert_allclose(expected[np.arange(23), found.indices[:, 1]], found.distances[:, 1], rtol=1e-12)


def test_an_exact_copy_is_at_distance_zero_exactly() -> None:
    # bright 64×64 images: ||x||² ≈ 8·10⁸, where float32 would leave a rounding error of ~10² in d²
    rng = np.random.default_rng(0)
    training = rng.integers(200, 256, (3, 3, 64, 64), dtype=np.uint8)
    found = nearest_two(training[[1, 2]], training, CPU, mirrored=True)
    assert found.distances[:, 0].tolist() == [0.0, 0.0] and found.indices[:, 0].tolist() == [1, 2]


def test_the_ratio_rule_flags_d1_below_a_third_of_d2_and_every_distance_zero() -> None:
    distances = np.array([[1.0, 3.01], [1.0, 2.99], [0.0, 0.0], [0.0, 1e-9], [2.0, 2.0]])
    assert memorized(distances).tolist() == [True, False, True, True, False]


def test_a_model_that_returns_training_images_is_flagged_and_fresh_draws_are_not() -> None:
    rng = np.random.default_rng(1)
    picked = rng.choice(len(TRAINING), 20, replace=False)
    copies = TRAINING[picked].astype(np.int16) + rng.integers(-3, 4, (20, 3, 16, 16))  # small noise
    copies = np.clip(copies, 0, 255).astype(np.uint8)
    copies[10:] = copies[10:, ..., ::-1]  # half of them mirrored, as training showed them
    scored = measure(copies, TRAINING, features(copies), features(TRAINING), CPU, mirrored=True)
    assert scored["memorized_fraction"] == 1.0
    assert scored["memorized_fraction_features"] >= 0.5  # the unmirrored half at least (0.85): features see no mirrors
    assert all(j == picked[i] for i, j, _ in scored["closest_pairs"])  # each copy found its original

    fresh = synthetic_flowers(40, 16, seed=7)
    novel = measure(fresh, TRAINING, features(fresh), features(TRAINING), CPU, mirrored=True)
    assert novel["memorized_fraction"] == 0.0 and novel["memorized_fraction_features"] <= 0.05
    d = np.sort(brute_force(fresh, TRAINING, mirrored=True), axis=1)[:, 0] / 255  # pixels in [0, 1]
    assert novel["nn_pixels_median"] == pytest.approx(np.median(d), rel=1e-12)
    f = np.sort(brute_force(features(fresh).numpy(), features(TRAINING).numpy(), mirrored=False), axis=1)[:, 0]
    assert novel["nn_features_median"] == pytest.approx(np.median(f), rel=1e-12)
    assert [round(p[2], 12) for p in novel["closest_pairs"]] == [round(v, 12) for v in np.sort(d)[:8]]


def test_a_mirror_of_a_training_image_is_a_copy_only_where_the_model_trained_with_flips() -> None:
    picked = np.arange(0, 40, 4)
    mirrors = np.ascontiguousarray(TRAINING[picked][..., ::-1])  # exact mirrors: no flowers here are symmetric
    flipped = measure(mirrors, TRAINING, features(mirrors), features(TRAINING), CPU, mirrored=True)
    assert flipped["memorized_fraction"] == 1.0 and flipped["memorization_mirrored"] is True
    assert sorted(j for _, j, d in flipped["closest_pairs"] if d == 0) == sorted(picked[:8].tolist())
    unflipped = measure(mirrors, TRAINING, features(mirrors), features(TRAINING), CPU, mirrored=False)
    assert unflipped["memorized_fraction"] == 0.0 and unflipped["memorization_mirrored"] is False
    d = np.sort(brute_force(mirrors, TRAINING, mirrored=False), axis=1)[:, 0] / 255  # scipy, no mirrors
    assert unflipped["nn_pixels_median"] == pytest.approx(np.median(d), rel=1e-12) and d.min() > 0.05
    # without flips an image and its mirror are two pictures, and the report shows the image as stored
    pair = np.stack([TRAINING[3], TRAINING[3, ..., ::-1]])
    assert distinct_images(pair, mirrored=False).tolist() == [0, 1] and distinct_images(
        pair, mirrored=True
    ).tolist() == [0]
    np.testing.assert_array_equal(as_measured(mirrors[0], TRAINING[0], mirrored=False), TRAINING[0])
    np.testing.assert_array_equal(as_measured(mirrors[0], TRAINING[0], mirrored=True), mirrors[0])


def test_a_model_trained_with_flips_is_read_from_its_config() -> None:
    assert trained_with_flips({"train": {"hflip": False}}) is False
    assert trained_with_flips({"train": {"hflip": True}}) is True
    assert trained_with_flips({"train": {"lr": 1e-4}}) is True  # a ddpm from before train.hflip always flipped
    assert trained_with_flips(None) is True  # an imported model: its weights do not say


def test_closest_pairs_are_the_nearest_first_ties_by_sample_index() -> None:
    distances = np.array([[5.0, 9], [1.0, 9], [3.0, 9], [1.0, 9], [0.5, 9]])
    pairs = closest_pairs(Neighbours(distances, np.array([[10, 0], [11, 0], [12, 0], [13, 0], [14, 0]])), count=4)
    assert pairs == [[4, 14, 0.5], [1, 11, 1.0], [3, 13, 1.0], [2, 12, 3.0]]


def test_a_duplicated_training_image_counts_once() -> None:
    image = TRAINING[5]
    training = np.concatenate([TRAINING[:10], image[None], image[None, ..., ::-1]])  # a copy and a mirror of image 5
    assert distinct_images(training, mirrored=True).tolist() == list(range(10))
    scored = measure(image[None], training, features(image[None]), features(training), CPU, mirrored=True)
    assert scored["memorized_fraction"] == 1.0 and scored["closest_pairs"] == [[0, 5, 0.0]]
    assert scored["memorized_fraction_features"] == 1.0  # d₂ is another picture's, not the copy's 0


def test_the_report_shows_each_pair_as_measured(tmp_path: Path) -> None:
    samples = np.ascontiguousarray(TRAINING[[7, 3]][..., ::-1])  # sample 0 is training image 7 mirrored
    data = tmp_path / "images.npy"
    np.save(data, TRAINING)
    folder = RunFolder.of("linear", 0, tmp_path / "runs")
    folder.samples.mkdir(parents=True)
    np.save(folder.samples_array, samples)
    scored = measure(samples, TRAINING, features(samples), features(TRAINING), CPU, mirrored=True)
    run = RunResult("linear", 0, {}, {}, scored, None, None, np.zeros((1, 2)), folder.grid, None)
    shown = closest_images([run], tmp_path / "runs", data)
    pairs, above, below = shown["linear"]
    assert pairs == scored["closest_pairs"] and [p[1] for p in pairs] == [7, 3]
    np.testing.assert_array_equal(below, samples)  # the training images mirrored, as the distance 0 was measured
    np.testing.assert_array_equal(as_measured(samples[0], TRAINING[7], mirrored=True), samples[0])
    picture = tmp_path / "nearest.png"
    plot_nearest(shown, picture)
    with Image.open(picture) as drawn:
        assert drawn.size[0] > drawn.size[1]  # two pairs side by side, two rows
    assert "| linear | 100.0% | " in "\n".join(memorization_section([run]))
    run.evaluation = scored | {"real_sha256": "ab" * 32}  # scored against other training images than `data`
    with pytest.raises(UserError) as refused:
        closest_images([run], tmp_path / "runs", data)
    assert str(refused.value) == (
        f"{folder.eval_metrics}: its closest_pairs name other images than {folder.samples_array} and {data} hold; "
        "run `ddpm evaluate --beta-schedule linear` again"
    )
