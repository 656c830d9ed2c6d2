"""The fast path on the CPU (bf16 autocast, channels_last, torch.compile, fused AdamW) and
training on several processes (DistributedDataParallel over gloo), against the plain path."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CPU, run, tiny_config, write_params

from ddpm.checkpoint import load_trained
from ddpm.config import SampleConfig, TrainConfig
from ddpm.data import InMemoryImages, synthetic_flowers
from ddpm.distributed import Ranks
from ddpm.fastpath import FastPath
from ddpm.train import draw_batch, train


@pytest.mark.parametrize("section", [TrainConfig, SampleConfig])  # one rule for training and sampling
def test_auto_means_the_fast_path_on_a_gpu_and_the_plain_one_on_the_cpu(section: type) -> None:
    auto = section()
    assert FastPath.resolve(auto, torch.device("cuda")) == FastPath(bf16=True, channels_last=True, compile=True)
    assert FastPath.resolve(auto, CPU) == FastPath(bf16=False, channels_last=False, compile=False)
    chosen = section(precision="bf16", channels_last=True, compile=False)
    assert FastPath.resolve(chosen, CPU) == FastPath(bf16=True, channels_last=True, compile=False)
    assert FastPath.resolve(section(precision="fp32"), torch.device("cuda")).bf16 is False


def test_the_ranks_shares_make_up_the_global_batch() -> None:
    dataset = InMemoryImages(synthetic_flowers(16, 8), CPU)

    def drawn(rank: int, world: int) -> list[torch.Tensor]:
        return list(draw_batch(dataset, 100, 8, torch.Generator().manual_seed(3), Ranks(rank, world)))

    whole = drawn(0, 1)
    shares = [drawn(rank, 4) for rank in range(4)]
    for i, part in enumerate(whole):
        assert torch.equal(torch.cat([share[i] for share in shares]), part)
        assert all(len(share[i]) == 2 for share in shares)


@pytest.fixture
def quick_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile through dynamo and AOT autograd, but without inductor's C++ code generation,
    which takes minutes on 2 cores: what is checked here is that the UNet, its backward and the
    sampling chain compile and compute what the eager path does."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: real(module, backend="aot_eager"))


@pytest.mark.slow
def test_bf16_channels_last_and_compile_train_like_the_plain_path(
    flowers16: Path, tmp_path: Path, trained: Path, quick_compile: None
) -> None:
    plain = np.loadtxt(trained / "losses.csv", delimiter=",", skiprows=1)  # the session's model: the plain path
    fast_config = tiny_config(train={"precision": "bf16", "channels_last": True, "compile": True})
    fast = train(fast_config, flowers16, tmp_path / "fast", CPU, progress=False)
    for (step, a), (same_step, b) in zip(plain.tolist(), fast.losses, strict=True):
        assert step == same_step and b == pytest.approx(a, rel=0.02)  # bf16's 8-bit mantissa
    model = load_trained(fast.checkpoint, CPU).model  # plain weights, loadable without compile
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_two_processes_end_with_the_weights_of_one_on_the_same_global_batches(flowers16: Path, tmp_path: Path) -> None:
    # adam_eps well above the gradients' rounding noise: AdamW's 1/(√v + ε) would otherwise magnify
    # the different order in which two processes sum a near-zero gradient, and hide what is tested
    train_params = {"steps": 6, "warmup_steps": 2, "adam_eps": 1e-3, "log_every": 2, "checkpoint_every": 3}
    settings = {"train": train_params, "tracking": {"enabled": False}}  # tiny: no dropout, whose masks would differ
    write_params(tmp_path, **settings)
    train(tiny_config(**settings), flowers16, tmp_path / "one", CPU, progress=False)
    done = run("train", "--data", str(flowers16), "--out", "two", "--device", "cpu", "--nproc", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 6 steps") == 1  # rank 0 alone reports
    runs = {name: torch.load(tmp_path / name / "model.pt", weights_only=True) for name in ("one", "two")}
    for kind in ("model", "ema"):
        for key, value in runs["one"][kind].items():
            torch.testing.assert_close(runs["two"][kind][key], value, rtol=1e-5, atol=1e-6, msg=f"{kind} {key}")
    assert (tmp_path / "one" / "losses.csv").read_text() == (tmp_path / "two" / "losses.csv").read_text()


@pytest.mark.slow
def test_compiled_bf16_sampling_draws_the_plain_paths_images(trained: Path, quick_compile: None) -> None:
    from ddpm.sample import generate

    model = load_trained(trained / "model.pt", CPU)
    images = {}
    for name, settings in {"plain": {"precision": "fp32", "compile": False},
                           "fast": {"precision": "bf16", "channels_last": True, "compile": True}}.items():  # fmt: skip
        cfg = tiny_config(sample={"sampler": "ddim", "steps": 5, **settings}).sample
        images[name] = generate(model.model, model.diffusion, cfg, 16, CPU, progress=False)[0].int()
    assert (images["fast"] - images["plain"]).abs().float().mean() < 2  # bf16 rounding, on a 0-255 scale
