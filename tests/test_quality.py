"""Quality during training (ddpm.quality): FID_N and KID of EMA samples at train.eval_every steps, the
same numbers as an independent evaluation of the saved EMA weights, without touching the training run's
weights, and the same rows after a resume across an eval point."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CPU, tiny_config
from test_training_loop import assert_same_weights

from ddpm.checkpoint import load_trained
from ddpm.config import SampleConfig
from ddpm.errors import UserError
from ddpm.features import RandConv
from ddpm.metrics import frechet_distance, kernel_distance
from ddpm.sample import generate
from ddpm.train import train

QUALITY = {"steps": 10, "checkpoint_every": 3, "keep_checkpoints": 5, "eval_every": 6, "eval_samples": 8,
           "eval_steps": 5}  # fmt: skip


class Recorder:
    """The loop's Tracker, keeping what it is told."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []

    def start(self, run_id: str | None) -> str:
        return "run"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.logged.append((step, metrics))

    def log_images(self, step: int, grid: np.ndarray) -> None: ...

    def finish(self, result: object, files: list[Path]) -> None:
        self.files = files


def rows(path: Path) -> list[list[float]]:
    header, *lines = path.read_text().splitlines()
    assert header == "step,kid_randconv,fid_randconv"
    return [[float(x) for x in line.split(",")] for line in lines]


def independent_scores(checkpoint: Path, real_images: Path) -> tuple[float, float]:
    """The scores of 8 DDIM-5 samples of the EMA weights in `checkpoint`, from x_T seeded sample.seed 0,
    evaluated apart from training: a RandConv built here, the real images' features computed here."""
    trained = load_trained(checkpoint, CPU)
    settings = SampleConfig(sampler="ddim", steps=5, eta=0.0, num_samples=8, batch_size=4, seed=0)
    images, _ = generate(trained.model, trained.diffusion, settings, 16, CPU, progress=False)
    network = RandConv()
    with torch.no_grad():
        fake = network(images).double()
        real = network(torch.from_numpy(np.load(real_images))).double()
    return frechet_distance(real, fake), kernel_distance(real, fake)


@pytest.mark.slow
def test_quality_points_match_an_independent_evaluation_and_survive_a_resume(
    flowers16: Path, tmp_path: Path, trained_result
) -> None:
    config, cache = tiny_config(train=QUALITY), tmp_path / "features"
    tracker = Recorder()
    train(config, flowers16, tmp_path / "a", CPU, progress=False, tracker=tracker, feature_cache=cache)
    full = rows(tmp_path / "a" / "quality.csv")
    assert [row[0] for row in full] == [6, 10]  # every 6 steps, and the last
    for step, kid, fid in full:
        assert (int(step), {"quality/fid_randconv": fid, "quality/kid_randconv": kid}) in tracker.logged
    # model.pt holds the EMA weights the point at step 10 measured
    fid, kid = independent_scores(tmp_path / "a" / "model.pt", flowers16)
    assert full[1] == [10, pytest.approx(kid, rel=1e-9), pytest.approx(fid, rel=1e-9)]
    assert tmp_path / "a" / "quality.csv" in tracker.files
    assert len(list(cache.iterdir())) == 1  # the real features, cached once
    # measuring drew nothing from the training run's streams: the weights of the same steps without it
    without, with_points = (torch.load(folder / "checkpoints" / "step-00000010.pt", weights_only=True)
                            for folder in (trained_result.checkpoint.parent, tmp_path / "a"))  # fmt: skip
    assert_same_weights(trained_result.checkpoint.parent / "checkpoints" / "step-00000010.pt",
                        tmp_path / "a" / "checkpoints" / "step-00000010.pt")  # fmt: skip
    assert torch.equal(without["rng"]["cpu"], with_points["rng"]["cpu"])  # dropout's stream too
    assert rows(trained_result.checkpoint.parent / "quality.csv") == []  # off: the header alone, for DVC

    # a run killed after its point at step 6 with its last checkpoint at step 3: the resume drops the row
    # past step 3 (here a wrong one) and measures that point again
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "checkpoints" / "step-00000003.pt", tmp_path / "b" / "checkpoints")
    (tmp_path / "b" / "quality.csv").write_text("step,kid_randconv,fid_randconv\n5,1.0,1.0\n")
    quiet = config.model_copy(update={"train": config.train.model_copy(update={"steps": 4, "eval_every": 0})})
    train(quiet, flowers16, tmp_path / "b", CPU, progress=False, feature_cache=cache)  # one step, no point
    assert rows(tmp_path / "b" / "quality.csv") == []  # the row past step 3 is gone at the start
    resumed = train(config, flowers16, tmp_path / "b", CPU, progress=False, feature_cache=cache)
    assert resumed.resumed_from == 4
    assert (tmp_path / "b" / "quality.csv").read_bytes() == (tmp_path / "a" / "quality.csv").read_bytes()


def test_eval_steps_beyond_the_timesteps_are_refused_before_training(flowers16: Path, tmp_path: Path) -> None:
    config = tiny_config(train=QUALITY | {"eval_steps": 51})
    with pytest.raises(UserError) as refused:
        train(config, flowers16, tmp_path, CPU, progress=False, feature_cache=tmp_path / "features")
    expected = "train.eval_steps, sample.spacing (DDIM, diffusion.timesteps = 50): "
    expected += "51 steps: expected from 1 to the model's T = 50"
    assert str(refused.value) == expected
    assert not (tmp_path / "checkpoints").exists()


def test_a_missing_extractor_is_refused_before_training_with_the_way_out(flowers16: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-weights.pth"
    config = tiny_config(train=QUALITY, evaluate={"feature_extractor": "inception", "inception_weights": str(missing)})
    with pytest.raises(UserError) as refused:
        train(config, flowers16, tmp_path / "run", CPU, progress=False, feature_cache=tmp_path / "features")
    assert str(refused.value) == (
        f"quality during training (train.eval_every): evaluate.inception_weights: {missing} not found; expected the "
        "pt_inception-2015-12-05 file; or set train.eval_every=0"
    )
    assert not (tmp_path / "run" / "checkpoints").exists()
