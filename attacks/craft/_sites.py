"""The layers a crafter writes, found generically: Linear, Conv2d and BatchNorm layers in the order one traced
forward pass runs them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedguard.attacks.craft._base import Shape
from fedguard.layers import forward_hooks
from fedguard.torch_state import evaluating


@dataclass
class Site:
    """One weight/norm layer as met during a forward pass."""

    name: str
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


_TRACED = (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm)


def trace_sites(model: nn.Module, input_shape: Shape) -> list[Site]:
    """Linear, Conv2d and BatchNorm layers in the order a forward pass runs them (first call only)."""
    sites: list[Site] = []
    seen: set[int] = set()
    names = {id(m): n for n, m in model.named_modules()}

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        if id(module) in seen or not args or not isinstance(args[0], torch.Tensor):
            return
        seen.add(id(module))
        out_shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
        sites.append(Site(names.get(id(module), ""), module, tuple(args[0].shape), out_shape))

    try:
        with forward_hooks(model, _TRACED, hook), evaluating(model), torch.no_grad():
            model(torch.zeros(2, *input_shape))
    except Exception:
        # Fall back to registration order (no shapes) for models a zero batch cannot run.
        sites = [Site(n, m, (), ()) for n, m in model.named_modules() if isinstance(m, _TRACED)]
    return sites


def linear_sites(sites: list[Site]) -> list[Site]:
    return [s for s in sites if isinstance(s.module, nn.Linear)]


def conv_sites(sites: list[Site]) -> list[Site]:
    return [s for s in sites if isinstance(s.module, nn.Conv2d)]


def need_linear(sites: list[Site], crafter: str) -> list[Site]:
    lins = linear_sites(sites)
    if not lins:
        raise ValueError(f"crafter {crafter!r} needs a model with at least one nn.Linear layer")
    return lins


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the sub-module called ``name`` (dotted path) by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
