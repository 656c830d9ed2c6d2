"""Published weights in: a diffusers model folder (UNet2DModel, e.g. google/ddpm-cifar10-32) as a
ddpm checkpoint that `ddpm sample` and `ddpm evaluate` use as they use a trained one.

The UNet is Ho et al.'s in both projects, laid out one to one, so the weights are mapped tensor by
tensor; only self-attention differs in form (diffusers: three Linear layers q, k, v; here one 1×1
convolution of the three stacked). A config this UNet cannot compute is refused, naming the key,
and so is a schedule other than those in ddpm.schedules, a value of the wrong type or beyond the
caps below, and weights that are not finite floating-point numbers. Every size the config implies
is checked against the weights' own shapes (a safetensors header, read without loading a tensor)
on a UNet built without memory, before anything is allocated. Weights are read from safetensors,
or from a .bin file with torch.load(weights_only=True): loading never runs code from the folder.
"""

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from ddpm.checkpoint import ModelCheckpoint, save_checkpoint
from ddpm.convert_scheduler import count_in, diffusion_process, finite, read_json, shown
from ddpm.errors import UserError
from ddpm.files import sha256_hex
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
    "in_channels": 3, "center_input_sample": False, "time_embedding_type": "positional",
    "freq_shift": 1, "flip_sin_to_cos": False, "mid_block_type": "UNetMidBlock2D", "mid_block_scale_factor": 1,
    "downsample_padding": 0, "downsample_type": "conv", "upsample_type": "conv", "act_fn": "silu",
    "attention_head_dim": None, "norm_num_groups": GROUPS, "norm_eps": NORM_EPS, "resnet_time_scale_shift": "default",
    "add_attention": True, "class_embed_type": None, "num_class_embeds": None,
}  # fmt: skip

# Caps on what the weights cannot bound: ddpm sample holds whole images of sample_size² pixels, a
# UNet of layers_per_block × levels blocks is built to check the shapes, and T sets the schedule's length.
MAX_IMAGE_SIZE, MAX_LAYERS = 1024, 16
MAX_WIDTH = 8192  # block_out_channels: Ho et al.'s widest is 512
FLOATS = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


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
    arch = unet_architecture(read_json(config_path), config_path)
    diffusion, scheduler_path = diffusion_process(folder)
    _check_output_channels(arch, diffusion, config_path, scheduler_path)
    weights_path = weights_file(folder)
    unet_state_dict(weight_shapes(weights_path), arch, weights_path)  # every size, before allocating one
    state = unet_state_dict(read_weights(weights_path), arch, weights_path)
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


def _check_output_channels(arch: dict[str, Any], diffusion: dict[str, Any], unet: Path, scheduler: Path) -> None:
    """A model that learned its variance has twice the images' channels out (the variance's v after the
    target): out_channels 6 goes with variance_type learned_range, 3 with a fixed one."""
    learned = diffusion["variance"] == "learned_range"
    if arch.get("learned_variance", False) != learned:
        out = 6 if arch.get("learned_variance") else 3
        raise UserError(f"{unet}: out_channels = {out}, but {scheduler}: variance_type = "
                        f"{'learned_range' if learned else 'a fixed one'}; expected out_channels "
                        f"{3 + 3 * learned} with it (6: the target and learned_range's v)")  # fmt: skip


def unet_architecture(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """The ddpm UNet's keyword arguments for a diffusers UNet2DModel config; a UserError naming every
    key whose value sets another function than this UNet's, or else the first value it cannot represent."""
    c = _unet_config(config, path)

    def refuse(key: str, expected: str) -> UserError:
        return UserError(f"{path}: {key} = {shown(c[key])}; the ddpm UNet computes {expected} only")

    size = c["sample_size"]
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not count_in(1, MAX_IMAGE_SIZE)(size):
        raise refuse("sample_size", f"square images (a positive integer of at most {MAX_IMAGE_SIZE})")
    widths = c["block_out_channels"]
    if not (isinstance(widths, list) and widths and all(count_in(1, MAX_WIDTH)(w) for w in widths)) or any(
        w % widths[0] for w in widths
    ):
        raise refuse("block_out_channels", f"positive multiples of the first width, each at most {MAX_WIDTH},")
    channels = widths[0]
    if c["time_embedding_dim"] not in (None, 4 * channels):
        raise refuse("time_embedding_dim", f"4 × block_out_channels[0] = {4 * channels}")
    if c["attn_norm_num_groups"] not in (None, GROUPS):
        raise refuse("attn_norm_num_groups", f"{GROUPS}")
    down, up = c["down_block_types"], c["up_block_types"]
    kinds = ("DownBlock2D", "AttnDownBlock2D")
    if not isinstance(down, list) or len(down) != len(widths) or any(kind not in kinds for kind in down):
        raise refuse("down_block_types", "DownBlock2D or AttnDownBlock2D, one per block_out_channels entry")
    mirror = [kind.replace("Down", "Up") for kind in reversed(down)]
    if up != mirror:
        raise refuse("up_block_types", f"the mirror of down_block_types, {json.dumps(mirror)},")
    if not count_in(1, MAX_LAYERS)(c["layers_per_block"]):
        raise refuse("layers_per_block", f"a positive integer of at most {MAX_LAYERS}")
    if not (finite(c["dropout"]) and 0 <= c["dropout"] < 1):
        raise UserError(f"{path}: dropout = {shown(c['dropout'])}; expected a number from 0 to below 1")
    arch = {
        "image_size": size,
        "channels": channels,
        "channel_mult": [w // channels for w in widths],
        "num_res_blocks": c["layers_per_block"],
        "attention_resolutions": [size // 2**level for level, kind in enumerate(down) if kind == "AttnDownBlock2D"],
        "dropout": float(c["dropout"]),
    }
    if c["out_channels"] not in (3, 6):
        raise refuse("out_channels", "3 (the target) or 6 (the target and learned_range's v)")
    if c["out_channels"] == 6:
        arch["learned_variance"] = True
    try:
        check_architecture(size, channels, arch["channel_mult"], arch["attention_resolutions"])
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    return arch


def _unet_config(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """`config` over diffusers' defaults, once its class, its keys and the function it computes are
    those of the ddpm UNet."""
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise UserError(f"{path}: _class_name = {shown(config['_class_name'])}; ddpm imports UNet2DModel only")
    unknown = sorted(k for k in config if k not in UNET_DEFAULTS and not k.startswith("_"))
    if unknown:
        raise UserError(f"{path}: unknown UNet2DModel key {unknown[0]!r}; this ddpm cannot tell what it changes")
    c = {**UNET_DEFAULTS, **config}
    wrong = [f"{key} = {shown(c[key])} (ddpm: {json.dumps(value)})" for key, value in UNET_REQUIRED.items()
             if c[key] != value]  # fmt: skip
    if wrong:  # every one at once; editing the file would not help, the weights compute that function
        raise UserError(f"{path}: this model computes another function than the ddpm UNet (Ho et al.'s) and "
                        f"cannot be imported: {'; '.join(wrong)}")  # fmt: skip
    return c


def weights_file(folder: Path) -> Path:
    """The folder's safetensors file, else its .bin file."""
    path = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if path is None:
        raise UserError(f"{folder}: no weights file; expected {' or '.join(WEIGHT_FILES)}")
    return path


def weight_shapes(path: Path) -> dict[str, torch.Tensor]:
    """The weights at `path` as tensors without memory (the meta device): their names, shapes and
    types, from a safetensors header without loading a tensor (a .bin file is loaded, as large as it is)."""
    if path.suffix != ".safetensors":
        return {name: tensor.to("meta") for name, tensor in read_weights(path).items()}
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            header = {name: (f.get_slice(name).get_shape(), f.get_slice(name).get_dtype()) for name in f.keys()}
    except Exception as e:  # safetensors raises its own kinds; the message says which
        raise _unreadable(path, e) from None
    for name, (_, kind) in header.items():
        if kind not in FLOATS:
            raise UserError(f"{path}: tensor {name!r} holds {kind} values; expected floating-point weights")
    return {name: torch.empty(shape, dtype=FLOATS[kind], device="meta") for name, (shape, kind) in header.items()}


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The UNet's tensors from a safetensors file, or a .bin file (weights_only): floating-point and finite."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(path)
        else:
            with warnings.catch_warnings():  # torch's notes on pickle protocols: not the user's business
                warnings.simplefilter("ignore")
                tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch's unpickler raise many kinds; the message says which
        raise _unreadable(path, e) from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise UserError(f"{path}: expected a mapping of tensor names to tensors")
    for name, tensor in tensors.items():
        if tensor.dtype not in FLOATS.values():
            kind = str(tensor.dtype).removeprefix("torch.")
            raise UserError(f"{path}: tensor {name!r} holds {kind} values; expected floating-point weights")
        if not torch.isfinite(tensor).all():
            raise UserError(f"{path}: tensor {name!r} holds NaN or infinite values; expected finite weights")
    return tensors


UNSAFE_ADVICE = ("weights_only", "weights only", "unsupported global", "trust")  # words of torch's advice to unpickle


def _unreadable(path: Path, error: Exception) -> UserError:
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    # torch's refusals advise loading the file anyway "if you trust" it: never relay that
    if isinstance(error, pickle.UnpicklingError) or any(word in detail.lower() for word in UNSAFE_ADVICE):
        detail = "it holds objects other than tensors; refused without running them"
    return UserError(f"{path}: not a readable weights file ({detail[:200]})")


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
    missing, left over or of the wrong shape. With tensors on the meta device (`weight_shapes`), this
    checks every shape and allocates nothing: the UNet is only a plan of names and shapes, on meta too."""
    with torch.device("meta"):
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
