"""Published weights in: a diffusers model folder (UNet2DModel, e.g. google/ddpm-cifar10-32) as a
ddpm checkpoint that `ddpm sample` and `ddpm evaluate` use as they use a trained one.

The UNet is Ho et al.'s in both projects, laid out one to one, so the weights are mapped tensor by
tensor; only self-attention differs in form (diffusers: three Linear layers q, k, v; here one 1×1
convolution of the three stacked). A config this UNet cannot compute is refused, naming the key,
and so is a schedule other than those in ddpm.schedules. Weights are read from safetensors, or
from a .bin file with torch.load(weights_only=True): loading never runs code from the folder.
"""

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from ddpm.checkpoint import ModelCheckpoint, save_checkpoint
from ddpm.errors import UserError
from ddpm.files import sha256_hex
from ddpm.schedules import beta_schedule
from ddpm.unet import ARCH_VERSION, GROUPS, NORM_EPS, Step, UNet, check_architecture

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# diffusers' UNet2DModel defaults, for the keys a config.json leaves out (diffusers 0.30 to 0.42)
UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896], "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu",
    "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None, "num_class_embeds": None,
    "num_train_timesteps": None,
}  # fmt: skip
# What the ddpm UNet computes: Ho et al.'s timestep embedding (sin first, frequencies over dim/2 − 1),
# TF "SAME" downsampling (no extra padding), GroupNorm(32, eps 1e-6), single-head attention, RGB.
UNET_REQUIRED: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "center_input_sample": False, "time_embedding_type": "positional",
    "freq_shift": 1, "flip_sin_to_cos": False, "mid_block_type": "UNetMidBlock2D", "mid_block_scale_factor": 1,
    "downsample_padding": 0, "downsample_type": "conv", "upsample_type": "conv", "act_fn": "silu",
    "attention_head_dim": None, "norm_num_groups": GROUPS, "norm_eps": NORM_EPS, "resnet_time_scale_shift": "default",
    "add_attention": True, "class_embed_type": None, "num_class_embeds": None,
}  # fmt: skip

# diffusers' beta_schedule → ddpm's schedule of the same betas (linear ones checked for their ends)
SCHEDULES = {"linear": "linear", "scaled_linear": "quadratic", "squaredcos_cap_v2": "cosine"}
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def import_diffusers(folder: Path, out: Path) -> dict[str, Any]:
    """Write the ddpm checkpoint of the diffusers UNet2DModel in `folder` to `out`; return what it holds
    besides the weights (arch, diffusion, imported: its description). A file at `out` is never replaced."""
    if out.exists():
        raise UserError(f"--out: {out} exists; remove it or choose another path (a trained model is never replaced)")
    config_path = folder / "config.json"
    if not config_path.is_file():
        hint = f"; pass {folder / 'unet'}, the pipeline's model folder" if (folder / "unet").is_dir() else ""
        raise UserError(f"{folder}: no config.json; expected a diffusers model folder (config.json and "
                        f"{' or '.join(WEIGHT_FILES)}){hint}")  # fmt: skip
    arch = unet_architecture(_read_json(config_path), config_path)
    diffusion, scheduler_path = diffusion_process(folder)
    weights_path, theirs = read_weights(folder)
    state = unet_state_dict(theirs, arch, weights_path)
    imported = {
        "format": "diffusers",
        "folder": str(folder.resolve()),
        "weights": weights_path.name,
        "weights_sha256": sha256_hex(weights_path),
        "scheduler_config": str(scheduler_path.resolve()),
    }
    made = ModelCheckpoint(arch=arch, arch_version=ARCH_VERSION, diffusion=diffusion, model=state, step=0,
                           imported=imported)  # fmt: skip
    save_checkpoint(out, made)
    return made.description()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(content, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(content).__name__}")
    return content


def unet_architecture(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """The ddpm UNet's keyword arguments for a diffusers UNet2DModel config; a UserError naming every
    key whose value sets another function than this UNet's, or else the first value it cannot represent."""
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise UserError(f"{path}: _class_name = {config['_class_name']!r}; ddpm imports UNet2DModel only")
    unknown = sorted(k for k in config if k not in UNET_DEFAULTS and not k.startswith("_"))
    if unknown:
        raise UserError(f"{path}: unknown UNet2DModel key {unknown[0]!r}; this ddpm cannot tell what it changes")
    c = {**UNET_DEFAULTS, **config}

    def refuse(key: str, expected: str) -> UserError:
        return UserError(f"{path}: {key} = {json.dumps(c[key])}; the ddpm UNet computes {expected} only")

    wrong = [f"{key} = {json.dumps(c[key])} (ddpm: {json.dumps(value)})" for key, value in UNET_REQUIRED.items()
             if c[key] != value]  # fmt: skip
    if wrong:  # every one at once; editing the file would not help, the weights compute that function
        raise UserError(f"{path}: this model computes another function than the ddpm UNet (Ho et al.'s) and "
                        f"cannot be imported: {'; '.join(wrong)}")  # fmt: skip
    size = c["sample_size"]
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise refuse("sample_size", "square images (a positive integer)")
    widths = c["block_out_channels"]
    channels = widths[0] if isinstance(widths, list) and widths and isinstance(widths[0], int) else 0
    if channels <= 0 or any(not isinstance(w, int) or w % channels for w in widths):
        raise refuse("block_out_channels", "multiples of the first width")
    if c["time_embedding_dim"] not in (None, 4 * channels):
        raise refuse("time_embedding_dim", f"4 × block_out_channels[0] = {4 * channels}")
    if c["attn_norm_num_groups"] not in (None, GROUPS):
        raise refuse("attn_norm_num_groups", f"{GROUPS}")
    down, up = c["down_block_types"], c["up_block_types"]
    if not isinstance(down, list) or len(down) != len(widths) or set(down) - {"DownBlock2D", "AttnDownBlock2D"}:
        raise refuse("down_block_types", "DownBlock2D or AttnDownBlock2D, one per block_out_channels entry")
    mirror = [kind.replace("Down", "Up") for kind in reversed(down)]
    if up != mirror:
        raise refuse("up_block_types", f"the mirror of down_block_types, {json.dumps(mirror)},")
    layers = c["layers_per_block"]
    if not isinstance(layers, int) or layers <= 0:
        raise refuse("layers_per_block", "a positive integer")
    arch = {
        "image_size": size,
        "channels": channels,
        "channel_mult": [w // channels for w in widths],
        "num_res_blocks": layers,
        "attention_resolutions": [size // 2**level for level, kind in enumerate(down) if kind == "AttnDownBlock2D"],
        "dropout": float(c["dropout"]),
    }
    try:
        check_architecture(size, channels, arch["channel_mult"], arch["attention_resolutions"])
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    return arch


def diffusion_process(folder: Path) -> tuple[dict[str, Any], Path]:
    """The checkpoint's `diffusion` entry from the scheduler config beside `folder` or in ../scheduler/,
    and that file. Only what defines the forward process is read; how to sample is ddpm's sample.*."""
    candidates = [folder / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise UserError(f"{folder}: no scheduler config ({' or '.join(map(str, candidates))}); "
                        "it says which beta schedule the model was trained with")  # fmt: skip
    c = _read_json(path)
    timesteps, name = c.get("num_train_timesteps", 1000), c.get("beta_schedule", "linear")
    for key, bad in (("trained_betas", lambda v: v is not None), ("rescale_betas_zero_snr", bool)):
        if bad(c.get(key)):
            raise UserError(f"{path}: {key} = {json.dumps(c[key])}; ddpm computes its betas from a named schedule")
    if name not in SCHEDULES:
        raise UserError(f"{path}: beta_schedule = {json.dumps(name)}; ddpm imports {', '.join(SCHEDULES)} only")
    if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 2:
        raise UserError(f"{path}: num_train_timesteps = {json.dumps(timesteps)}; expected an integer of at least 2")
    if name != "squaredcos_cap_v2":  # ddpm's linear and quadratic run from 1e-4 to 0.02, scaled by 1000/T
        ends = (c.get("beta_start", 0.0001), c.get("beta_end", 0.02))
        expected = (1e-4 * 1000 / timesteps, 0.02 * 1000 / timesteps)
        if any(abs(a - b) > 1e-9 * b for a, b in zip(ends, expected, strict=True)):
            raise UserError(f"{path}: beta_start, beta_end = {ends[0]}, {ends[1]}; ddpm's {SCHEDULES[name]} schedule "
                            f"at T = {timesteps} runs from {expected[0]:.6g} to {expected[1]:.6g}")  # fmt: skip
    prediction = c.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise UserError(f"{path}: prediction_type = {json.dumps(prediction)}; expected one of {', '.join(PREDICTIONS)}")
    schedule = SCHEDULES[name]
    beta_schedule(schedule, timesteps)  # a schedule that cannot be built at this T raises here, not at sampling
    return {"schedule": schedule, "timesteps": timesteps, "prediction": PREDICTIONS[prediction]}, path


UNSAFE_ADVICE = ("weights_only", "weights only", "unsupported global", "trust")  # words of torch's advice to unpickle


def read_weights(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The UNet's tensors from the folder's safetensors file, else its .bin file (weights_only)."""
    path = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if path is None:
        raise UserError(f"{folder}: no weights file; expected {' or '.join(WEIGHT_FILES)}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(path)
        else:
            with warnings.catch_warnings():  # torch's notes on pickle protocols: not the user's business
                warnings.simplefilter("ignore")
                tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch's unpickler raise many kinds; the message says which
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        # torch's refusals advise loading the file anyway "if you trust" it: never relay that
        if isinstance(e, pickle.UnpicklingError) or any(word in detail.lower() for word in UNSAFE_ADVICE):
            detail = "it holds objects other than tensors; refused without running them"
        raise UserError(f"{path}: not a readable weights file ({detail[:200]})") from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise UserError(f"{path}: expected a mapping of tensor names to tensors")
    return path, tensors


def _resblock(ours: str, theirs: str, has_skip: bool) -> dict[str, str]:
    names = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2"}
    if has_skip:
        names["skip"] = "conv_shortcut"
    return {f"{ours}.{a}": f"{theirs}.{b}" for a, b in names.items()}


def module_map(model: UNet) -> tuple[dict[str, str], dict[str, str]]:
    """Our module names → diffusers' for every plain layer, and for every attention block."""
    plain = {"time_mlp.0": "time_embedding.linear_1", "time_mlp.2": "time_embedding.linear_2",
             "conv_in": "conv_in", "norm_out": "conv_norm_out", "conv_out": "conv_out"}  # fmt: skip
    attention: dict[str, str] = {}

    def step(ours: str, theirs: str, index: int, block: Step) -> None:
        has_skip = not isinstance(block.res.skip, torch.nn.Identity)
        plain.update(_resblock(f"{ours}.res", f"{theirs}.resnets.{index}", has_skip))
        if not isinstance(block.attn, torch.nn.Identity):
            attention[f"{ours}.attn"] = f"{theirs}.attentions.{index}"

    for name, prefix, sampler in (("down", "down_blocks", "downsamplers"), ("up", "up_blocks", "upsamplers")):
        level, index = 0, 0
        for k, block in enumerate(getattr(model, name)):
            if isinstance(block, Step):
                step(f"{name}.{k}", f"{prefix}.{level}", index, block)
                index += 1
            else:  # a Downsample or Upsample ends the level
                plain[f"{name}.{k}.conv"] = f"{prefix}.{level}.{sampler}.0.conv"
                level, index = level + 1, 0
    for index, block in enumerate(model.mid):
        step(f"mid.{index}", "mid_block", index, block)
    return plain, attention


def unet_state_dict(theirs: dict[str, torch.Tensor], arch: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The ddpm UNet's state dict (float32) from diffusers' tensors; a UserError naming the first tensor
    missing, left over or of the wrong shape."""
    model = UNet(**arch)
    expected = model.state_dict()
    plain, attention = module_map(model)
    used: set[str] = set()

    def take(shape: torch.Size, *names: str) -> torch.Tensor:
        """The first of `names` there is (diffusers' current name, then that of models saved before 0.14)."""
        name = next((n for n in names if n in theirs), None)
        if name is None:
            raise UserError(f"{path}: no tensor {names[0]!r}, which its config.json implies; a damaged or other model")
        if theirs[name].shape != shape:
            raise UserError(f"{path}: {name} is {tuple(theirs[name].shape)}; its config.json implies {tuple(shape)}")
        used.add(name)
        return theirs[name].float()

    state: dict[str, torch.Tensor] = {}
    for ours, name in plain.items():
        for p in ("weight", "bias"):
            state[f"{ours}.{p}"] = take(expected[f"{ours}.{p}"].shape, f"{name}.{p}")
    for ours, name in attention.items():
        ch = expected[f"{ours}.norm.weight"].shape[0]
        for p, shape in (("weight", torch.Size([ch, ch])), ("bias", torch.Size([ch]))):
            state[f"{ours}.norm.{p}"] = take(torch.Size([ch]), f"{name}.group_norm.{p}")
            q, k, v = (take(shape, f"{name}.to_{x}.{p}", f"{name}.{old}.{p}") for x, old in LEGACY_QKV)
            out = take(shape, f"{name}.to_out.0.{p}", f"{name}.proj_attn.{p}")
            # diffusers' Linear layers (out, in) as our 1×1 convolutions (out, in, 1, 1), q, k, v stacked
            state[f"{ours}.qkv.{p}"] = _as_conv1x1(torch.cat([q, k, v]))
            state[f"{ours}.proj_out.{p}"] = _as_conv1x1(out)
    left = sorted(set(theirs) - used)
    if left:
        raise UserError(f"{path}: tensor {left[0]!r} has no place in the UNet its config.json describes")
    return state


LEGACY_QKV = (("q", "query"), ("k", "key"), ("v", "value"))


def _as_conv1x1(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[:, :, None, None] if tensor.dim() == 2 else tensor


def summary(made: dict[str, Any], folder: Path, out: Path) -> str:
    """What `ddpm import diffusers` prints of the checkpoint `made` (import_diffusers' description)."""
    arch, diffusion = made["arch"], made["diffusion"]
    return (f"imported {folder} → {out}: UNet {arch['channels']} × {arch['channel_mult']}, {arch['image_size']}×"
            f"{arch['image_size']}, {diffusion['schedule']} schedule, T = {diffusion['timesteps']}, "
            f"predicts {diffusion['prediction']}; sample it with `ddpm sample --checkpoint {out}`")  # fmt: skip
