"""The noise-prediction UNet of Ho et al. 2020 (appendix B), a PixelCNN++-style UNet.

conv_in → [ResBlock (+ self-attention)] × num_res_blocks per level, downsampling between levels
→ ResBlock, attention, ResBlock → the mirror image with skip connections → GroupNorm, SiLU, conv_out.
Every ResBlock adds a projection of the sinusoidal timestep embedding. As in the paper's code,
the last layer of each residual branch and the output layer start at zero.
"""

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 32  # GroupNorm groups, as in the paper
NORM_EPS = 1e-6  # GroupNorm's epsilon in Ho et al.'s code (tf.contrib.layers.group_norm), as in diffusers
# Checkpoints record this; a change that makes old weights compute another function raises it.
# 2: Ho et al.'s GroupNorm epsilon and right/bottom padding of the downsampling convolution.
ARCH_VERSION = 2

# Named architectures. Attention is given by level (0 = full resolution), so a preset keeps its
# shape at any image size; `UNet.from_preset` turns levels into resolutions.
PRESETS: dict[str, dict[str, Any]] = {
    # Ho et al.'s CIFAR-10 model: 35.7 M parameters, attention at 16×16 for 32×32 images.
    "ddpm-cifar10": dict(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_levels=(1,), dropout=0.1),
    # The flowers model of LearnOpenCV's "Denoising Diffusion Probabilistic Models" article.
    "learnopencv": dict(channels=64, channel_mult=(1, 2, 4, 4), num_res_blocks=2, attention_levels=(1, 2), dropout=0.1),
    # Trains in seconds on a CPU: for tests and the offline preset.
    "tiny": dict(channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), dropout=0.0),
}


def preset_architecture(name: str, image_size: int) -> dict[str, Any]:
    """The UNet keyword arguments of preset `name` for `image_size`, attention levels as resolutions."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of: {', '.join(PRESETS)}")
    arch = dict(PRESETS[name])
    arch["attention_resolutions"] = tuple(image_size // 2**level for level in arch.pop("attention_levels"))
    return arch


def check_architecture(
    image_size: int, channels: int, channel_mult: Sequence[int], attention_resolutions: Sequence[int]
) -> None:
    """Raise ValueError unless the UNet can be built for `image_size` with these settings."""
    resolutions = [image_size // 2**level for level in range(len(channel_mult))]
    if image_size % 2 ** (len(channel_mult) - 1):
        raise ValueError(
            f"image size {image_size} cannot be halved {len(channel_mult) - 1} times "
            f"(one per channel_mult level after the first)"
        )
    if any((channels * m) % GROUPS for m in channel_mult):
        raise ValueError(
            f"channels × channel_mult must be multiples of {GROUPS} (GroupNorm groups), "
            f"got {channels} × {list(channel_mult)}"
        )
    bad = sorted(set(attention_resolutions) - set(resolutions))
    if bad:
        raise ValueError(f"attention resolutions {bad} are not among the UNet's resolutions {resolutions}")


def timestep_embedding(t: torch.Tensor, dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal embedding of timesteps (B,) → (B, dim), as in the Transformer (Vaswani et al. 2017):
    sin, then cos, of t · 10000^(−i/(dim/2 − 1)), computed in float32 and returned as `dtype`."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1).to(dtype)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=NORM_EPS)


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_ch, out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over all positions, with a residual connection."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = group_norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj_out = zero_init(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, 1, c, h * w).transpose(-1, -2)  # (B, 3, 1, HW, C)
        out = F.scaled_dot_product_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2])  # (B, 1, HW, C)
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Step(nn.Module):
    """A ResBlock, followed by self-attention at the resolutions that have it."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float, attention: bool) -> None:
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_ch, dropout)
        self.attn = AttentionBlock(out_ch) if attention else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, emb))


class Downsample(nn.Module):
    """A stride-2 3×3 convolution, padded as TensorFlow's "SAME" pads it for even sizes (Ho et al.'s
    code): one row and column of zeros at the bottom and right only, so the kernels sit on (0, 2, ...)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """eps_theta(x_t, t): maps images (B, C, H, W) and timesteps (B,) to a tensor of the images' shape."""

    def __init__(
        self,
        image_size: int,
        channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        in_channels: int = 3,
        learned_variance: bool = False,
    ) -> None:
        super().__init__()
        check_architecture(image_size, channels, channel_mult, attention_resolutions)
        self.channels = channels
        emb_ch = 4 * channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)

        # Encoder: every block's output is kept for a skip connection.
        self.down = nn.ModuleList()
        skip_chs, ch, res = [channels], channels, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(Step(ch, channels * mult, emb_ch, dropout, res in attention_resolutions))
                ch = channels * mult
                skip_chs.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(Downsample(ch))
                skip_chs.append(ch)
                res //= 2

        self.mid = nn.ModuleList([Step(ch, ch, emb_ch, dropout, True), Step(ch, ch, emb_ch, dropout, False)])

        # Decoder: one more block per level than the encoder, each taking one skip connection.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(
                    Step(ch + skip_chs.pop(), channels * mult, emb_ch, dropout, res in attention_resolutions)
                )
                ch = channels * mult
            if level != 0:
                self.up.append(Upsample(ch))
                res *= 2

        self.norm_out = group_norm(ch)
        # learned_variance: a second set of channels, v of the reverse variance (Nichol & Dhariwal 2021)
        out_channels = 2 * in_channels if learned_variance else in_channels
        self.conv_out = zero_init(nn.Conv2d(ch, out_channels, 3, padding=1))

    @classmethod
    def from_preset(cls, name: str, image_size: int, **overrides: Any) -> "UNet":
        """The preset architecture `name` (see PRESETS) for `image_size`, with any keyword overridden."""
        return cls(image_size, **{**preset_architecture(name, image_size), **overrides})

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.channels, self.conv_in.weight.dtype))
        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1) if isinstance(block, Step) else h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))
