"""The fast path on the CPU (bf16 autocast, channels_last, torch.compile, fused AdamW) and
training on several processes (DistributedDataParallel over gloo), against the plain path."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ddpm.checkpoint import load_checkpoint
from ddpm.config import TrainConfig
from ddpm.data import InMemoryImages, synthetic_flowers
from ddpm.train import FastPath, draw_batch, train

CPU = torch.device("cpu")
DDPM = str(Path(sys.executable).parent / "ddpm")


def test_auto_means_the_fast_path_on_a_gpu_and_the_plain_one_on_the_cpu() -> None:
    auto = TrainConfig()
    assert FastPath.resolve(auto, torch.device("cuda")) == FastPath(bf16=True, channels_last=True, compile=True)
    assert FastPath.resolve(auto, CPU) == FastPath(bf16=False, channels_last=False, compile=False)
    chosen = TrainConfig(precision="bf16", channels_last=True, compile=False)
    assert FastPath.resolve(chosen, CPU) == FastPath(bf16=True, channels_last=True, compile=False)


def test_the_ranks_shares_make_up_the_global_batch() -> None:
    dataset = InMemoryImages(synthetic_flowers(16, 8), CPU)

    def drawn(rank: int, world: int) -> list[torch.Tensor]:
        torch.manual_seed(3)
        return list(draw_batch(dataset, 100, 8, rank, world))

    whole = drawn(0, 1)
    shares = [drawn(rank, 4) for rank in range(4)]
    for i, part in enumerate(whole):
        assert torch.equal(torch.cat([share[i] for share in shares]), part)
        assert all(len(share[i]) == 2 for share in shares)


@pytest.mark.slow
def test_bf16_channels_last_and_compile_train_like_the_plain_path(flowers16: Path, tmp_path: Path, tiny_config) -> None:
    plain = train(tiny_config(), flowers16, tmp_path / "plain", CPU, progress=False)
    fast_config = tiny_config(train={"precision": "bf16", "channels_last": True, "compile": True})
    fast = train(fast_config, flowers16, tmp_path / "fast", CPU, progress=False)
    for (step, a), (same_step, b) in zip(plain.losses, fast.losses, strict=True):
        assert step == same_step and b == pytest.approx(a, rel=0.02)  # bf16's 8-bit mantissa
    model, config, _ = load_checkpoint(fast.checkpoint, CPU)  # plain weights, loadable without compile
    assert config.train.compile is True and all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_two_processes_end_with_the_weights_of_one_on_the_same_global_batches(flowers16: Path, tmp_path: Path) -> None:
    # adam_eps well above the gradients' rounding noise: AdamW's 1/(√v + ε) would otherwise magnify
    # the different order in which two processes sum a near-zero gradient, and hide what is tested
    params = {
        "data": {"image_size": 16},
        "model": {"preset": "tiny"},  # no dropout, whose masks depend on how a batch is split
        "diffusion": {"timesteps": 100},
        "train": {"steps": 6, "batch_size": 8, "lr": 1e-3, "warmup_steps": 2, "adam_eps": 1e-3, "log_every": 2,
                  "checkpoint_every": 3},
    }  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    runs = {}
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        command = [DDPM, "train", "--data", str(flowers16), "--out", name, "--device", "cpu", *extra]
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = torch.load(tmp_path / name / "model.pt", weights_only=True)
        assert done.stdout.count("trained 6 steps") == 1  # rank 0 alone reports
    for kind in ("model", "ema"):
        for key, value in runs["one"][kind].items():
            torch.testing.assert_close(runs["two"][kind][key], value, rtol=1e-5, atol=1e-6, msg=f"{kind} {key}")
    assert (tmp_path / "one" / "losses.csv").read_text() == (tmp_path / "two" / "losses.csv").read_text()


@pytest.mark.slow
def test_compiled_bf16_sampling_draws_the_plain_paths_images(flowers16: Path, tmp_path: Path, tiny_config) -> None:
    from ddpm.checkpoint import build_diffusion
    from ddpm.sample import generate

    checkpoint = train(tiny_config(), flowers16, tmp_path, CPU, progress=False).checkpoint
    model, config, _ = load_checkpoint(checkpoint, CPU)
    diffusion = build_diffusion(config)
    images = {}
    for name, settings in {"plain": {"precision": "fp32", "compile": False},
                           "fast": {"precision": "bf16", "compile": True}}.items():  # fmt: skip
        cfg = tiny_config(sample={"sampler": "ddim", "ddim_steps": 5, **settings}).sample
        images[name] = generate(model, diffusion, cfg, 16, CPU, progress=False)[0].int()
    assert (images["fast"] - images["plain"]).abs().float().mean() < 2  # bf16 rounding, on a 0-255 scale
