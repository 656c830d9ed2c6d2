"""How the UNet runs on a device: bf16 autocast, channels_last memory and torch.compile.

One rule for training and sampling: a param set to "auto" means on for a GPU and off for the CPU,
where bf16 and NHWC do not pay and compiling costs more than it saves on short runs.
"""

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn


class FastPathParams(Protocol):
    """The three params of `train` and of `sample` that choose the path."""

    precision: Literal["auto", "fp32", "bf16"]
    channels_last: Literal["auto"] | bool
    compile: Literal["auto"] | bool


@dataclass(frozen=True)
class FastPath:
    bf16: bool  # autocast the UNet to bfloat16; x_t, the loss and the weights stay float32
    channels_last: bool  # NHWC memory format, what cuDNN's fastest convolutions want
    compile: bool  # torch.compile the UNet (and its backward when training)

    @classmethod
    def resolve(cls, params: FastPathParams, device: torch.device) -> "FastPath":
        gpu = device.type == "cuda"

        def on(value: str | bool) -> bool:
            return gpu if value == "auto" else bool(value)

        bf16 = params.precision == "bf16" or (params.precision == "auto" and gpu)
        return cls(bf16, on(params.channels_last), on(params.compile))

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def memory_format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def place(self, model: nn.Module) -> nn.Module:
        """`model` in the chosen memory format (in place)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def compiled(self, module: nn.Module, cuda_graphs: bool = False) -> nn.Module:
        """`module` compiled when the path says so. `cuda_graphs` (mode "reduce-overhead") pays where
        one shape is called many times, as in a sampling chain on a GPU."""
        if not self.compile:
            return module
        return torch.compile(module, mode="reduce-overhead" if cuda_graphs else None)
