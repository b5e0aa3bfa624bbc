"""What every crafter shares: the registry, the wrapper for blocks put in front of a model, and the checks and
seeded layers the crafters build with."""

from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from fedguard.errors import InputError
from fedguard.layers import layer_input
from fedguard.registry import Registry
from fedguard.torch_state import evaluating

Shape = tuple[int, int, int]
Crafter = Callable[..., nn.Module]

#: Name -> crafter function. ``CRAFTERS.get(name)`` raises KeyError listing the valid names.
CRAFTERS: Registry[Crafter] = Registry("crafter")


class FrontEndModel(nn.Module):
    """A malicious block in front of an unchanged model.

    ``forward(x)`` runs ``imprint`` on ``x`` (flattened to ``[B, C*H*W]`` unless
    ``image_input``), reshapes the result to ``[B, *input_shape]`` and feeds it
    to ``model``. state_dict layout: ``imprint.<i>.weight/bias`` for the layers
    of the inserted ``nn.Sequential`` (numbered as in the Sequential, so
    activations leave gaps), then the original model's keys under ``model.``.
    """

    def __init__(self, imprint: nn.Sequential, model: nn.Module, input_shape: Sequence[int], image_input: bool = False):
        super().__init__()
        self.imprint = imprint
        self.model = model
        self.input_shape = tuple(int(s) for s in input_shape)
        self.image_input = bool(image_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.imprint(x if self.image_input else x.flatten(1))
        return self.model(z.reshape(x.shape[0], *self.input_shape))


#: Parameters a crafter may add (4 GiB in float32): above it a size option (``num_bins``, ``width``, ...) is refused
#: before anything is allocated, instead of swapping or being killed for memory.
MAX_ADDED_PARAMETERS = 2**30


def check_added(parameters: int, crafter: str, options: str) -> None:
    """ValueError when the layers ``crafter`` is about to add hold more than :data:`MAX_ADDED_PARAMETERS`."""
    if parameters > MAX_ADDED_PARAMETERS:
        raise ValueError(f"{crafter} would add {parameters:,} parameters ({parameters * 4 / 2**30:,.1f} GiB), "
                         f"above the limit of {MAX_ADDED_PARAMETERS:,}; lower {options}")  # fmt: skip


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def seeded_linear(n_in: int, n_out: int, seed: int, bias: bool = True) -> nn.Linear:
    """A ``nn.Linear`` with PyTorch's default initialisation drawn from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return nn.Linear(n_in, n_out, bias=bias)


def front_block(model: nn.Module, input_shape: Shape, units: int, seed: int, crafter: str, option: str) -> FrontEndModel:
    """A copy of ``model`` behind ``Sequential(Linear(C*H*W, units), ReLU, Linear(units, C*H*W))``, the two layers
    drawn with PyTorch's default initialisation from ``seed`` and ``seed + 1`` for the crafter to write
    (``block.imprint[0]``, ``block.imprint[2]``); ValueError naming ``option`` when they would be too large
    (:func:`check_added`)."""
    n = math.prod(input_shape)
    check_added(2 * n * units + units + n, crafter, option)
    first, second = seeded_linear(n, units, seed), seeded_linear(units, n, seed + 1)
    return FrontEndModel(nn.Sequential(first, nn.ReLU(), second), copy.deepcopy(model), input_shape)


def check_data(data: torch.Tensor | np.ndarray | None, input_shape: Shape) -> torch.Tensor | None:
    """``data`` as float32 inputs ``[N, *input_shape]`` (uint8 read as 0-255 pixels), or InputError naming the fix."""
    if data is None:
        return None
    data = torch.as_tensor(data).detach().cpu()  # the crafters work on the CPU
    if data.dtype == torch.uint8:  # 0-255 pixels, read as fedguard.data reads them
        data = data / 255.0
    data = data.to(torch.float32)
    shape = tuple(input_shape)
    if data.dim() == 4 and tuple(data.shape[1:]) == (*shape[1:], shape[0]) != shape:
        raise InputError(f"data of shape {tuple(data.shape)} have their channels last; pass images as N, C, H, W "
                         "(data.permute(0, 3, 1, 2))")
    if data.dim() != 1 + len(shape) or tuple(data.shape[1:]) != shape or len(data) == 0:
        raise InputError(f"data of shape {tuple(data.shape)} are not inputs of input_shape {shape}; pass a tensor "
                         f"[N, {', '.join(map(str, shape))}] with N of at least 1")
    if not torch.isfinite(data).all():
        raise InputError("data holds NaN or infinite values; pass finite inputs")
    return data


def inputs_of(model: nn.Module, layer: nn.Module, data: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The inputs ``layer`` sees when ``model`` runs (eval mode) on ``data``, flattened per example."""
    with evaluating(model), torch.no_grad():
        return torch.cat([layer_input(model, layer, data[i : i + batch]) for i in range(0, len(data), batch)])


def dry_check(model: nn.Module, input_shape: Shape, crafter: str) -> nn.Module:
    try:
        with evaluating(model), torch.no_grad():
            model(torch.zeros(1, *input_shape))
    except Exception as exc:  # pragma: no cover - a crafter bug, not user input
        raise RuntimeError(f"crafter {crafter!r} produced a model that does not run: {exc}") from exc
    return model
