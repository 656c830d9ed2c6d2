"""The pairing that a paired comparison of two schedules rests on, checked in the code paths that
train and sample (in-process, the tiny model). For one train.seed and equal T, every schedule shares:
the initial weights; at every step the images (indices and flips), the timesteps t and the noise ε
of Algorithm 1, and the global random stream that draws dropout's masks. For one sample.seed it
shares x_T of every sample index, and the noise the chain draws (x_T of a later batch is drawn after
the earlier batch's chain, so it is equal only where that chain drew the same numbers). Not shared,
by design: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (ᾱ is the schedule's), so the losses, the gradients and
every weight after the first step differ, and with them the samples."""

from pathlib import Path

import pytest
import torch
from conftest import CPU, tiny_config

import ddpm.train
from ddpm.checkpoint import load_trained
from ddpm.sample import generate
from ddpm.state import TrainState

SCHEDULES = ("linear", "cosine")
STEPS = 3


def trained_recording(schedule: str, data: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Train the tiny model (dropout on, so that its masks count) for STEPS steps with `schedule`,
    recording the weights the training code path starts from and, at every step, Algorithm 1's draws
    and the global random stream's state before the step's forward pass."""
    seen: dict = {"draws": [], "global": []}
    create, draw = TrainState.create, ddpm.train.draw_batch

    def recording_create(*args: object, **kwargs: object) -> TrainState:
        state = create(*args, **kwargs)
        seen["initial"] = {k: v.clone() for k, v in state.model.state_dict().items()}
        return state

    def recording_draw(*args: object, **kwargs: object) -> tuple[torch.Tensor, ...]:
        batch = draw(*args, **kwargs)
        seen["draws"].append([x.clone() for x in batch])
        seen["global"].append(torch.get_rng_state())
        return batch

    monkeypatch.setattr(TrainState, "create", recording_create)
    monkeypatch.setattr(ddpm.train, "draw_batch", recording_draw)
    one_run = {"steps": STEPS, "warmup_steps": 1, "log_every": STEPS, "checkpoint_every": STEPS, "seed": 7}
    config = tiny_config(train=one_run, diffusion={"schedule": schedule, "timesteps": 25}, model={"dropout": 0.1})
    torch.manual_seed(12345)  # not the run's seed: train must seed the stream itself
    ddpm.train.train(config, data, out / schedule, CPU, progress=False)
    monkeypatch.undo()
    seen["model"] = out / schedule / "model.pt"
    return seen


@pytest.fixture(scope="module")
def runs(flowers16: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("paired")
    with pytest.MonkeyPatch.context() as monkeypatch:
        return {s: trained_recording(s, flowers16, out, monkeypatch) for s in SCHEDULES}


def test_two_schedules_of_one_seed_start_from_the_same_weights(runs: dict[str, dict]) -> None:
    linear, cosine = (runs[s]["initial"] for s in SCHEDULES)
    assert linear.keys() == cosine.keys()
    assert all(torch.equal(linear[k], cosine[k]) for k in linear)
    # and the seed decides them: another seed's UNet starts elsewhere
    other = TrainState.create(tiny_config(train={"seed": 8}, model={"dropout": 0.1}), CPU, "", None, None)
    assert not all(torch.equal(v, linear[k]) for k, v in other.model.state_dict().items())


def test_two_schedules_of_one_seed_draw_the_same_images_timesteps_and_noise(runs: dict[str, dict]) -> None:
    linear, cosine = (runs[s]["draws"] for s in SCHEDULES)
    assert len(linear) == len(cosine) == STEPS
    for step in range(STEPS):
        for a, b in zip(linear[step], cosine[step], strict=True):  # x_0 (images and flips), t, ε
            assert torch.equal(a, b), step
    assert not torch.equal(linear[0][2], linear[1][2])  # each step draws anew
    # the dropout masks come from the global stream: in the same state at every step
    assert all(torch.equal(a, b) for a, b in zip(runs["linear"]["global"], runs["cosine"]["global"], strict=True))


def test_two_schedules_start_sampling_from_the_same_x_T_for_each_sample_index(
    runs: dict[str, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = tiny_config(sample={"sampler": "ddpm", "num_samples": 3, "batch_size": 2, "seed": 3}).sample
    starts, finals = {}, {}
    for schedule in SCHEDULES:
        trained = load_trained(runs[schedule]["model"], CPU)
        loop, starts[schedule] = trained.diffusion.p_sample_loop_progressive, []

        def recording(model: object, noise: torch.Tensor, *args: object, _loop=loop, _seen=starts[schedule]) -> object:  # noqa: ANN001
            _seen.append(noise.clone())
            return _loop(model, noise, *args)

        monkeypatch.setattr(trained.diffusion, "p_sample_loop_progressive", recording)
        finals[schedule], _ = generate(trained.model, trained.diffusion, settings, 16, CPU, progress=False)
    linear, cosine = torch.cat(starts["linear"]), torch.cat(starts["cosine"])
    assert linear.shape == (3, 3, 16, 16) and torch.equal(linear, cosine)
    # the first batch's x_T is the first draw of a generator seeded sample.seed (independently drawn here)
    assert torch.equal(linear[:2], torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(finals["linear"], finals["cosine"])  # what is not shared: the models, so the samples
