"""Ho et al.'s UNet, exactly: diffusers' UNet2DModel with random weights, saved as diffusers saves
it, imported with `ddpm import diffusers`, computes the same function; and every folder that cannot
be imported is one clear error with nothing written."""

import json
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CPU, invoke

from ddpm.checkpoint import load_trained, read_checkpoint
from ddpm.convert import import_diffusers
from ddpm.errors import UserError
from ddpm.unet import preset_architecture

diffusers = pytest.importorskip("diffusers")
rescale_zero_terminal_snr = pytest.importorskip("diffusers.schedulers.scheduling_ddpm").rescale_zero_terminal_snr

# google/ddpm-cifar10-32's config.json (Ho et al.'s CIFAR-10 model)
HO_CIFAR10 = {
    "sample_size": 32, "block_out_channels": [128, 256, 256, 256], "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": None, "norm_eps": 1e-6, "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
    "dropout": 0.1,
}  # fmt: skip
# A small one: other widths, attention at two levels and full resolution, a block where channels change
SMALL = {
    "sample_size": 16, "block_out_channels": [32, 64, 64], "layers_per_block": 1,
    "down_block_types": ["AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"],
    "attention_head_dim": None, "norm_eps": 1e-6, "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
}  # fmt: skip


def diffusers_folder(folder: Path, config: dict, safetensors: bool = True, **scheduler: object) -> torch.nn.Module:
    """A UNet2DModel with random weights, saved with its scheduler config as diffusers saves them: diffusers'
    own random initialisation, with the GroupNorm gains and every bias drawn too (they start at 1 and 0,
    where a mix-up of two of them would go unseen)."""
    torch.manual_seed(1)
    model = diffusers.UNet2DModel(**config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(name.endswith("weight") + 0.1 * torch.randn(p.shape))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape))
    model.save_pretrained(folder, safe_serialization=safetensors)
    diffusers.DDPMScheduler(**scheduler).save_pretrained(folder)
    return model.eval()


def max_difference(ours: torch.nn.Module, theirs: torch.nn.Module, size: int, dtype: torch.dtype) -> float:
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, size, size, generator=generator, dtype=dtype)
    t = torch.randint(0, 1000, (4,), generator=generator)
    with torch.no_grad():
        return float((ours.to(dtype)(x, t) - theirs.to(dtype)(x, t).sample).abs().max())


@pytest.mark.parametrize(("config", "safetensors"), [(HO_CIFAR10, True), (SMALL, False)], ids=["ho-cifar10", "small"])
def test_imported_weights_compute_diffusers_function(tmp_path: Path, config: dict, safetensors: bool) -> None:
    theirs = diffusers_folder(tmp_path / "unet", config, safetensors)
    made = import_diffusers(tmp_path / "unet", tmp_path / "model.pt")
    trained = load_trained(tmp_path / "model.pt", CPU)
    assert sum(p.numel() for p in trained.model.parameters()) == sum(p.numel() for p in theirs.parameters())
    assert max_difference(trained.model, theirs, config["sample_size"], torch.float32) <= 1e-5
    assert made["diffusion"] == {"schedule": "linear", "timesteps": 1000, "prediction": "eps",
                                 "zero_terminal_snr": False, "input_scale": 1.0, "variance": "fixed"}  # fmt: skip
    assert made["imported"]["weights"].endswith(".safetensors" if safetensors else ".bin")
    if config is HO_CIFAR10:  # the preset is that model: the paper's 35,746,307 parameters, the same arguments
        assert sum(p.numel() for p in theirs.parameters()) == 35_746_307
        preset = {k: list(v) if isinstance(v, tuple) else v for k, v in preset_architecture("ddpm-cifar10", 32).items()}
        assert made["arch"] == {"image_size": 32, **preset}


def test_a_learned_range_model_imports_with_its_variance_channels(tmp_path: Path) -> None:
    """out_channels 6 and variance_type learned_range (Nichol & Dhariwal 2021): the same function, all six
    channels, and a checkpoint that samples with the learned variance."""
    theirs = diffusers_folder(tmp_path / "unet", {**SMALL, "out_channels": 6}, variance_type="learned_range")
    made = import_diffusers(tmp_path / "unet", tmp_path / "model.pt")
    assert made["arch"]["learned_variance"] is True and made["diffusion"]["variance"] == "learned_range"
    trained = load_trained(tmp_path / "model.pt", CPU)
    assert trained.diffusion.variance == "learned_range"
    assert max_difference(trained.model, theirs, 16, torch.float32) <= 1e-5


def test_the_unet_runs_in_float64_and_agrees_to_rounding(tmp_path: Path) -> None:
    theirs = diffusers_folder(tmp_path / "unet", SMALL)
    import_diffusers(tmp_path / "unet", tmp_path / "model.pt")
    ours = load_trained(tmp_path / "model.pt", CPU).model
    assert max_difference(ours, theirs, 16, torch.float64) <= 1e-12


def test_a_pipeline_folder_gives_its_scheduler_and_schedules_map_to_the_same_betas(tmp_path: Path) -> None:
    diffusers_folder(tmp_path / "pipe" / "unet", SMALL)
    (tmp_path / "pipe" / "unet" / "scheduler_config.json").unlink()  # the pipeline keeps it in ../scheduler/
    cases = (("squaredcos_cap_v2", "cosine", False), ("linear", "linear", False), ("scaled_linear", "quadratic", False),
             ("linear", "linear", True))  # fmt: skip
    for name, ours, zero_terminal_snr in cases:
        scheduler = diffusers.DDPMScheduler(beta_schedule=name, num_train_timesteps=500, beta_start=2e-4,
                                            beta_end=0.04, prediction_type="v_prediction",
                                            rescale_betas_zero_snr=zero_terminal_snr)  # fmt: skip
        scheduler.save_pretrained(tmp_path / "pipe" / "scheduler")
        out = tmp_path / f"{name}{zero_terminal_snr}.pt"
        assert import_diffusers(tmp_path / "pipe" / "unet", out)["diffusion"] == {
            "schedule": ours, "timesteps": 500, "prediction": "v", "zero_terminal_snr": zero_terminal_snr,
            "input_scale": 1.0, "variance": "fixed"}  # fmt: skip
        betas = load_trained(out, CPU).diffusion.betas
        # diffusers rescales its float32 betas, which the rescale's 1/(√alphā_1 − √alphā_T) amplifies: the
        # reference is its rescale of the plain schedule's betas in float64
        plain = diffusers.DDPMScheduler(beta_schedule=name, num_train_timesteps=500, beta_start=2e-4, beta_end=0.04)
        expected = rescale_zero_terminal_snr(plain.betas.double()) if zero_terminal_snr else scheduler.betas.double()
        torch.testing.assert_close(betas, expected, rtol=1e-6, atol=0)
    # zero terminal SNR with epsilon: refused, as the config refuses it
    edit_json(tmp_path / "pipe" / "scheduler" / "scheduler_config.json", prediction_type="epsilon")
    with pytest.raises(UserError, match=r'scheduler_config.json: rescale_betas_zero_snr = true with prediction_type = '
                                        r'"epsilon": at t = T x_T holds no signal'):  # fmt: skip
        import_diffusers(tmp_path / "pipe" / "unet", tmp_path / "eps.pt")


def test_the_cli_imports_once_and_sample_uses_the_checkpoint(tmp_path: Path) -> None:
    diffusers_folder(tmp_path / "unet", SMALL)
    done = invoke("import", "diffusers", "unet", "--out", "runs/small/model.pt", cwd=tmp_path)
    assert done.exit_code == 0, done.stderr
    assert "linear schedule, T = 1000" in done.stdout
    again = invoke("import", "diffusers", "unet", "--out", "runs/small/model.pt", cwd=tmp_path)
    assert again.exit_code == 2 and again.stderr.startswith("ddpm: error: --out: runs/small/model.pt exists")
    drawn = invoke("sample", "--checkpoint", "runs/small/model.pt", "--num-samples", "2", "--sampler", "ddim",
                   "--steps", "2", "--set", "tracking.enabled=false", cwd=tmp_path)  # fmt: skip
    assert drawn.exit_code == 0, drawn.stderr
    origin = json.loads((tmp_path / "runs/small/samples/samples.json").read_text())
    assert (origin["schedule"], origin["timesteps"], origin["image_size"]) == ("linear", 1000, 16)


def test_a_checkpoint_of_the_earlier_unet_is_refused_in_one_line(tmp_path: Path) -> None:
    diffusers_folder(tmp_path / "unet", SMALL)
    import_diffusers(tmp_path / "unet", tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    torch.save({**state, "arch_version": 1}, tmp_path / "old.pt")
    with pytest.raises(UserError, match=r"old.pt: made by an earlier UNet \(architecture version 1, this ddpm builds"):
        read_checkpoint(tmp_path / "old.pt", CPU)


def edit_json(path: Path, **changes: object) -> None:
    content = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            content.pop(key)
        else:
            content[key] = value
    path.write_text(json.dumps(content))


def config(**changes: object):  # noqa: ANN201
    return lambda folder: edit_json(folder / "config.json", **changes)


def scheduler(**changes: object):  # noqa: ANN201
    return lambda folder: edit_json(folder / "scheduler_config.json", **changes)


class Exploit:
    def __reduce__(self) -> tuple:
        return (exec, ("open('pwned', 'w').write('ran')",))


def tamper(folder: Path, how: str) -> None:
    weights = folder / "diffusion_pytorch_model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[:5000])
    elif how == "code in a .bin":
        weights.unlink()
        (folder / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"conv_in.weight": Exploit()}))
    elif how == "a numpy array in a torch .bin":  # torch.save's zip format: torch's message says to load it "if
        weights.unlink()  # you trust the source", with weights_only=False
        torch.save({"conv_in.weight": np.zeros(3)}, folder / "diffusion_pytorch_model.bin")
    elif how == "extra tensor":
        from safetensors.torch import load_file, save_file

        save_file({**load_file(weights), "extra.weight": torch.zeros(2)}, weights)
    elif how == "missing tensor":
        from safetensors.torch import load_file, save_file

        save_file({k: v for k, v in load_file(weights).items() if k != "conv_out.bias"}, weights)
    elif how == "wrong shape":
        from safetensors.torch import load_file, save_file

        save_file({**load_file(weights), "conv_in.bias": torch.zeros(7)}, weights)
    elif how == "nan weight":
        from safetensors.torch import load_file, save_file

        tensors = load_file(weights)
        tensors["up_blocks.0.resnets.0.conv1.weight"][0, 0, 0, 0] = float("nan")
        save_file(tensors, weights)
    elif how.startswith("integer weight"):
        from safetensors.torch import load_file, save_file

        tensors = {**load_file(weights), "conv_in.bias": torch.zeros(32, dtype=torch.int64)}
        if how.endswith("in a .bin"):
            weights.unlink()
            torch.save(tensors, folder / "diffusion_pytorch_model.bin")
        else:
            save_file(tensors, weights)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "config.json").unlink(), r"unet: no config.json; expected a diffusers model folder"),
        (config(norm_eps=1e-5), r"cannot be imported: norm_eps = 1e-05 \(ddpm: 1e-06\)$"),
        (config(freq_shift=0, norm_eps=1e-5), r": freq_shift = 0 \(ddpm: 1\); norm_eps = 1e-05 \(ddpm: 1e-06\)$"),
        (config(flip_sin_to_cos=...), r"imported: flip_sin_to_cos = true \(ddpm: false\)$"),
        (config(attention_head_dim=8), r"imported: attention_head_dim = 8 \(ddpm: null\)$"),
        (config(up_block_types=["UpBlock2D"] * 3), r"up_block_types = .*the mirror of"),
        (config(cross_attention_dim=64), r"unknown UNet2DModel key 'cross_atte"),
        (config(_class_name="UNet2DConditionModel"), r"imports UNet2DModel only"),
        (scheduler(beta_schedule="sigmoid"), r'"sigmoid"; ddpm imports linear, scaled_linear, squa'),
        (scheduler(trained_betas=[0.1] * 1000), r"trained_betas = \[0.1"),
        (scheduler(beta_end=0.03), r"0.0001, 0.03; ddpm's linear .* from 0.0001 to 0.02"),
        (lambda f: (f / "scheduler_config.json").unlink(), r"unet: no scheduler config \(.* or .*/scheduler/sch"),
        (lambda f: tamper(f, "truncated"), r"diffusion_pytorch_model.safetensors: not a readable weights file"),
        (lambda f: tamper(f, "code in a .bin"), r"model.bin: .* \(it holds objects other than tensors; refused"),
        (lambda f: tamper(f, "a numpy array in a torch .bin"), r"model.bin: not a readable weights file \(it holds "
         r"objects other than tensors; refused without running them\)$"),
        (lambda f: tamper(f, "extra tensor"), r"tensor 'extra.weight' has no place in the UNet"),
        (lambda f: tamper(f, "missing tensor"), r"no tensor 'conv_out.bias', which its config.json implies"),
        (lambda f: tamper(f, "wrong shape"), r"conv_in.bias is \(7,\); its config.json implies \(32,\)"),
        # what the configs cannot express, and sizes the weights do not have
        (scheduler(_class_name="KarrasVeScheduler"), r'_class_name = "KarrasVeScheduler"; expected a scheduler whose '
                                                     r"betas come from beta_schedule \(DDPMScheduler, DDIMScheduler"),
        (config(sample_size=2**20), r"sample_size = 1048576; the ddpm UNet computes square images \(a positive "
                                    r"integer of at most 1024\) only$"),
        (config(block_out_channels=[65536, 131072, 131072]),
         r"block_out_channels = \[65536, 131072, 131072\]; the ddpm UNet computes positive multiples of the first"),
        (config(block_out_channels=[64, 128, 128]), r"time_embedding.linear_1.weight is \(128, 32\); its config.json "
                                                    r"implies \(256, 64\)$"),
        (config(layers_per_block=10**6), r"layers_per_block = 1000000; the ddpm UNet computes a positive integer of "
                                         r"at most 16 only$"),
        (config(dropout="abc"), r'config.json: dropout = "abc"; expected a number from 0 to below 1$'),
        (config(dropout=float("nan")), r"config.json: dropout = NaN; expected a number from 0 to below 1$"),
        (config(down_block_types=[["AttnDownBlock2D"], "DownBlock2D", "AttnDownBlock2D"]),
         r'down_block_types = \[\["AttnDownBlock2D"\], "DownBlock2D", "AttnDownBlock2D"\]; the ddpm UNet computes'),
        (config(up_block_types="UpBlock2D"), r'up_block_types = "UpBlock2D"; the ddpm UNet computes the mirror'),
        (scheduler(beta_schedule=["linear"]), r'beta_schedule = \["linear"\]; ddpm imports linear, scaled_linear, '),
        (scheduler(prediction_type=["epsilon"]), r'prediction_type = \["epsilon"\]; expected one of epsilon, sample, '),
        (scheduler(beta_start="0.0001"), r'scheduler_config.json: beta_start = "0.0001"; expected a finite number$'),
        (scheduler(beta_start=float("nan")), r"scheduler_config.json: beta_start = NaN; expected a finite number$"),
        (scheduler(beta_end=float("inf")), r"scheduler_config.json: beta_end = Infinity; expected a finite number$"),
        (scheduler(num_train_timesteps=10**7), r"num_train_timesteps = 10000000; expected an integer from 2 to "
                                               r"100000$"),
        (lambda f: tamper(f, "nan weight"), r"model.safetensors: tensor 'up_blocks.0.resnets.0.conv1.weight' holds "
                                            r"NaN or infinite values; expected finite weights$"),
        (lambda f: tamper(f, "integer weight"), r"model.safetensors: tensor 'conv_in.bias' holds I64 values; "
                                                r"expected floating-point weights$"),
        (lambda f: tamper(f, "integer weight in a .bin"), r"model.bin: tensor 'conv_in.bias' holds int64 values; "
                                                          r"expected floating-point weights$"),
        (config(out_channels=6), r"config.json: out_channels = 6, but .*scheduler_config.json: variance_type = "
                                 r"a fixed one; expected out_channels 3 with it \(6: the target and learned_range"),
        (scheduler(variance_type="learned_range"), r"config.json: out_channels = 3, but .*: variance_type = "
                                                   r"learned_range; expected out_channels 6 with it"),
        (scheduler(variance_type="learned"), r'variance_type = "learned"; expected one of fixed_small, fixed_small_l'),
        (config(out_channels=4), r"out_channels = 4; the ddpm UNet computes 3 \(the target\) or 6 \(the target"),
    ],
    ids=["no config", "norm_eps", "two keys", "default flip", "heads", "up blocks", "unknown key", "class", "schedule",
         "trained betas", "beta ends", "no scheduler", "truncated", "code in a .bin", "numpy in a .bin", "extra tensor",
         "missing tensor", "wrong shape", "scheduler class", "sample_size 2^20", "64 GB of widths", "widths unlike "
         "the weights", "layers", "dropout abc", "dropout NaN", "a list for a string", "a string for a list",
         "schedule list", "prediction list", "beta_start string", "NaN beta", "infinite beta", "T 10^7", "NaN weight",
         "integer weight", "integer weight in a .bin", "6 channels fixed", "3 channels learned", "learned",
         "4 channels"],
)  # fmt: skip
def test_what_cannot_be_imported_is_one_clear_error_and_nothing_is_written(
    small_folder: Path, tmp_path: Path, damage, message: str, built_on: list[str]
) -> None:
    import shutil

    folder = tmp_path / "unet"
    shutil.copytree(small_folder, folder)
    damage(folder)
    with pytest.raises(UserError, match=message) as error, warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        import_diffusers(folder, tmp_path / "out" / "model.pt")
    assert "\n" not in str(error.value) and [str(w.message) for w in warned] == []  # the one line, and nothing else
    assert not (tmp_path / "out").exists() and not (tmp_path / "pwned").exists()
    assert set(built_on) <= {"meta"}  # the sizes were checked on a UNet without memory, before allocating one


@pytest.fixture
def built_on(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The devices the import builds UNets on. One of over 10 M parameters built on a real device fails
    the test instead of allocating it (a config can ask for 64 GB)."""
    import ddpm.convert

    real, devices = ddpm.convert.UNet, []

    def build(**arch: object) -> torch.nn.Module:
        with torch.device("meta"):
            size = sum(p.numel() for p in real(**arch).parameters())
        devices.append(str(torch.get_default_device()))
        assert devices[-1] == "meta" or size < 10_000_000, f"the import allocates a UNet of {size:,} parameters"
        return real(**arch)

    monkeypatch.setattr(ddpm.convert, "UNet", build)
    return devices


@pytest.mark.slow  # seconds of diffusers importing scipy.stats for its schedulers
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy's, about diffusers' own code
def test_the_schedulers_imported_have_ddpm_schedulers_betas() -> None:
    from ddpm.convert_scheduler import SCHEDULERS

    for name in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        settings = {"beta_schedule": name, "num_train_timesteps": 500, "beta_start": 2e-4, "beta_end": 0.04}
        expected = diffusers.DDPMScheduler(**settings).betas
        for kind in SCHEDULERS:
            assert torch.equal(getattr(diffusers, kind)(**settings).betas, expected), (kind, name)


def test_a_full_disk_while_importing_is_one_line_with_the_checkpoint_size(
    small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    from ddpm.files import _size

    def full(state: object, file: Path, *args: object, **kwargs: object) -> None:
        Path(file).write_bytes(bytes(534))  # the part that fitted
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")  # torch 2.14's

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "out" / "model.pt"
    with pytest.raises(UserError) as error:
        import_diffusers(small_folder, out)
    weights = sum(t.numel() * 4 for t in load_file(small_folder / "diffusion_pytorch_model.safetensors").values())
    assert re.fullmatch(
        rf"{re.escape(str(out))}: cannot write it, the disk is full \([0-9.]+ (bytes|KiB|MiB|GiB) free in "
        rf"{re.escape(str(out.parent))}, about {re.escape(_size(weights))} needed\); free some space and run the same "
        r"command again",
        str(error.value),
    ), error.value
    assert list(out.parent.iterdir()) == []  # nothing half-written


def test_a_checkpoint_path_under_a_regular_file_is_one_line(small_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("in the way\n")
    with pytest.raises(UserError) as error:  # was NotADirectoryError, unhandled
        import_diffusers(small_folder, tmp_path / "afile" / "model.pt")
    assert (
        str(error.value)
        == f"{tmp_path / 'afile'}: cannot create the folder: {tmp_path / 'afile'} is a file, not a folder"
    )


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("small") / "unet"
    diffusers_folder(folder, SMALL)
    return folder
